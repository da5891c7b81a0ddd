"""The demo job `boxrun dev --demo` submits: live output on both streams and one artifact."""

from __future__ import annotations

import sys

import httpx

from boxrun.sse import follow

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
    async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        resp = await http.post(
            "/api/jobs", json={"box": box, "script": DEMO_SCRIPT, "env": {"GREETING": "hi"}, "timeout_s": 120}
        )
        resp.raise_for_status()
        job = resp.json()
        print(f"\ndemo job {job['id']} on {box}; Temporal UI: {job['temporal_ui_url']}\n", flush=True)
        state = "unknown"
        async for ev in follow(http, job["id"]):
            if ev.event == "log":
                out = sys.stderr if ev.data["stream"] == "stderr" else sys.stdout
                print(f"  [{ev.data['seq']:>3} {ev.data['stream']}] {ev.data['text']}", file=out, flush=True)
            elif ev.event == "state":
                print(f"  -- {ev.data['state']}", flush=True)
            elif ev.event == "done":
                state = ev.data["state"]
        arts = (await http.get(f"/api/jobs/{job['id']}/artifacts")).json()["data"]
        for art in arts:
            print(
                f"  artifact {art['path']} ({art['size']} bytes, sha256 {art['sha256'][:12]}...): "
                f"{api_url}/api/jobs/{job['id']}/artifacts/{art['path']}"
            )
        print(f"demo job finished: {state}\n", flush=True)
        return state
