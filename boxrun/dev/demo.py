"""The demo job `boxrun dev --demo` submits: live output on both streams and one artifact."""

from __future__ import annotations

import sys

from boxrun.client import BoxrunClient, DoneEvent, LogEvent, StateEvent

DEMO_SCRIPT = """\
import json, os, platform, sys, time

print(f"hello from {platform.node()} (python {platform.python_version()})")
for step in range(1, 6):
    print(f"step {step}/5: measuring...")
    time.sleep(0.3)
print("warning: this is stderr", file=sys.stderr)
result = {"job": os.environ["BOXRUN_JOB_ID"], "greeting": os.environ.get("GREETING")}
with open(os.path.join(os.environ["BOXRUN_ARTIFACTS_DIR"], "result.json"), "w") as fh:
    json.dump(result, fh, indent=2)
print("wrote result.json; done")
"""


async def run_demo(api_url: str, token: str, box: str) -> str:
    """Submit the demo job, print its live output, return its final state."""
    async with BoxrunClient(api_url, token) as client:
        job = await client.submit(box=box, script=DEMO_SCRIPT, env={"GREETING": "hi"}, timeout_s=120)
        print(f"\ndemo job {job.id} on {box}; Temporal UI: {job.temporal_ui_url}\n", flush=True)
        state = "unknown"
        async for ev in client.follow(job.id):
            if isinstance(ev, LogEvent):
                line = ev.line
                out = sys.stderr if line.stream == "stderr" else sys.stdout
                print(f"  [{line.seq:>3} {line.stream}] {line.text}", file=out, flush=True)
            elif isinstance(ev, StateEvent):
                print(f"  -- {ev.state}", flush=True)
            elif isinstance(ev, DoneEvent):
                state = str(ev.state)
        for art in (await client.artifacts(job.id)).data:
            print(
                f"  artifact {art.path} ({art.size} bytes, sha256 {art.sha256[:12]}...): "
                f"{client.artifact_url(job.id, art.path)}"
            )
        print(f"demo job finished: {state}\n", flush=True)
        return state
