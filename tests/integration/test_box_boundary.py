"""Issue 9 on the shared `boxrun dev` stack: boxes are untrusted, agents speak only HTTP.

No secret or script in Temporal history, the workspace removed after every job, 10,000 artifacts,
names the store cannot take, queue_timeout_s, and an agent refused when its token names another
box or another agent with the same token is live. (Protocol refusals one by one are in
tests/api/test_agent.py; API restart and claim deadline in test_box_faults.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from boxrun.temporal import connect
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e


def node_token(endpoints: dict, box: str) -> str:
    secrets = json.loads((Path(endpoints["data_dir"]) / "secrets.json").read_text())
    token: str = secrets["node_tokens"][box]
    return token


def agent(endpoints: dict, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`boxrun agent` as an operator would start it, with only the API address and a token."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BOXRUN_")}
    return subprocess.run(
        [sys.executable, "-m", "boxrun.cli", "agent", *args],
        env={
            **base,
            "BOXRUN_API_URL": endpoints["api_url"],
            "BOXRUN_AGENT_WORKDIR": str(tmp_path / "agent"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_no_secret_or_script_in_temporal_history_and_the_workspace_is_removed(api, endpoints):
    marker = f"secret-{uuid.uuid4().hex}"
    script = f"import os\n# script-{marker}\nprint(len(os.environ['DB_PASSWORD']), open('cfg.txt').read())\n"
    job = await submit(api, script, env={"DB_PASSWORD": marker}, files={"cfg.txt": f"file-{marker}"})
    done = await wait_terminal(api, job["id"])
    assert done["state"] == "completed", done
    client = await connect(endpoints["temporal_address"])
    history = await client.get_workflow_handle(job["id"]).fetch_history()
    # the raw events: payloads are JSON bytes there (to_json_dict would show them base64-encoded,
    # where a leaked value could not be found)
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert job["id"].encode() in raw and b'"job_id"' in raw, "the history is the job's, payloads readable"
    assert marker.encode() not in raw, "the env value, script or a file reached a Temporal payload"
    jobs_dir = Path(endpoints["data_dir"]) / "boxes" / done["box"] / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == [], "the workspace is removed after the job"


async def test_ten_thousand_artifacts_are_uploaded_verified_and_listed(api):
    script = """
import os
out = os.environ["BOXRUN_ARTIFACTS_DIR"]
for d in range(10):
    os.makedirs(os.path.join(out, f"d{d}"))
    for i in range(1000):
        with open(os.path.join(out, f"d{d}", f"f{i:04}.txt"), "w") as fh:
            fh.write(f"{d}-{i}")
"""
    job = await submit(api, script)
    done = await wait_terminal(api, job["id"], timeout=300)
    assert (done["state"], done["error"]) == ("completed", None), done
    body = (await api.get(f"/api/jobs/{job['id']}/artifacts")).json()
    assert body.get("count", len(body["data"])) == 10_000


async def test_names_the_store_cannot_take_fail_the_job_the_rest_is_kept(api):
    script = """
import os
out = os.environ["BOXRUN_ARTIFACTS_DIR"]
open(os.path.join(out, "ok.txt"), "w").write("fine")
open(os.path.join(out, "bad\\r\\nname.txt"), "w").write("crlf")
deep = os.path.join(out, *(["d" * 200] * 6))
os.makedirs(deep)
open(os.path.join(deep, "long.txt"), "w").write("over 1024 bytes")
os.symlink("/etc/passwd", os.path.join(out, "passwd-link"))
open("mine.txt", "w").write("hard")
os.link("mine.txt", os.path.join(out, "hard.txt"))
"""
    job = await submit(api, script)
    done = await wait_terminal(api, job["id"], timeout=60)
    assert (done["state"], done["exit_code"]) == ("failed", 0), done
    assert done["error"].startswith("artifacts refused: ")
    # refused on the box itself (links, hard links, unstorable names), listed readable; the API
    # refuses the same names again should a box send them (tests/api/test_agent.py)
    assert "bad\\r\\nname.txt (control characters in the name)" in done["error"]
    assert "/ (name longer than 1,024 bytes (UTF-8)" in done["error"]
    assert "passwd-link (symbolic link (not followed))" in done["error"]
    assert "hard.txt (hard link (2 names for one file))" in done["error"]
    body = (await api.get(f"/api/jobs/{job['id']}/artifacts")).json()
    assert [a["path"] for a in body["data"]] == ["ok.txt"], "every other artifact is still uploaded and recorded"
    got = await api.get(f"/api/jobs/{job['id']}/artifacts/ok.txt")
    assert got.status_code == 307
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(got.headers["location"])).content == b"fine"


async def test_no_box_within_queue_timeout_ends_unschedulable(api):
    name = f"ghost-{uuid.uuid4().hex[:6]}"
    assert (await api.post("/api/boxes", json={"name": name})).status_code == 201  # no agent ever runs it
    job = await submit(api, "print('never')", box=name, queue_timeout_s=2)
    assert job["queue_timeout_s"] == 2
    done = await wait_terminal(api, job["id"], timeout=30)
    assert (done["state"], done["error"]) == ("unschedulable", "no box within queue_timeout_s (2 s)"), done
    default = await submit(api, "print(1)")
    assert default["queue_timeout_s"] == 86400


def test_an_agent_whose_token_names_another_box_is_refused(endpoints, tmp_path):
    done = agent(endpoints, tmp_path, "--box", "local-2", BOXRUN_NODE_TOKEN=node_token(endpoints, "local-1"))
    assert done.returncode == 2, done.stderr
    assert "this node token belongs to box local-1, not local-2" in done.stderr


def test_a_second_agent_with_a_live_boxs_token_is_refused(endpoints, tmp_path):
    done = agent(endpoints, tmp_path, BOXRUN_NODE_TOKEN=node_token(endpoints, "local-1"))
    assert done.returncode == 3, done.stderr
    assert "box local-1 already has a live agent" in done.stderr


def test_a_token_file_others_may_read_is_refused(endpoints, tmp_path):
    path = tmp_path / "token"
    path.write_text(node_token(endpoints, "local-1"))
    path.chmod(0o644)
    done = agent(endpoints, tmp_path, BOXRUN_NODE_TOKEN_FILE=str(path))
    assert done.returncode == 2, done.stderr
    assert "is open to group or others (mode 0644): chmod 600 it" in done.stderr


def test_the_agent_imports_no_server_dependency():
    probe = (
        "import sys, boxrun.agent.main; "
        "print(sorted(m for m in ('temporalio', 'asyncpg', 'boto3', 'botocore', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
