"""The README's tour, word for word: its bash blocks, and its python blocks fed to the venv's
python, run in order in one bash script against a whole `boxrun dev` stack whose data dir is where
the CLI and the SDK look for it (~/.local/share/boxrun/dev, HOME set to a fresh directory, no
BOXRUN_* variables)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.integration.faultstack import fault_stack
from tests.integration.jobs import wait_terminal

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_blocks() -> list[tuple[str, str]]:
    """The (language, code) blocks of the README section 'A tour', in order."""
    text = README.read_text()
    section = text.split("\n## A tour\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.DOTALL)


def tour_script() -> str:
    """One bash script: bash blocks as written, each python block as a here-document."""
    parts = ["set -euo pipefail\n"]
    for language, code in tour_blocks():
        parts.append(code if language == "bash" else f"python - <<'TOUR_PYTHON'\n{code}TOUR_PYTHON\n")
    return "".join(parts)


def test_the_tour_has_its_blocks():
    blocks = tour_blocks()
    assert [language for language, _ in blocks] == ["bash", "python", "bash", "bash", "bash", "bash", "bash"]
    assert blocks[0][1].startswith("source .venv/bin/activate\n")  # the first example is the CLI


async def test_the_readme_tour_runs_word_for_word(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="boxrun-tour-"))
    try:
        await _tour(tmp_path, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _tour(tmp_path: Path, home: Path) -> None:
    async with fault_stack(tmp_path, boxes=2, data_dir=home / ".local/share/boxrun/dev") as fs:
        script = tour_script()
        # the tour calls .venv/bin/boxrun from the repository root: give it this interpreter's
        work = tmp_path / "tour"
        (work / ".venv").mkdir(parents=True)
        (work / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            cwd=work,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("BOXRUN_")}, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out, err = done.stdout, done.stderr
        assert "gain=3" in out and "mode: fast" in out, "boxrun run followed the job's output"
        assert "mode: slow" in out, "boxrun logs --follow printed the detached job's output"
        assert "stdout gain=5" in out and "stderr to stderr" in out, "the SDK followed its job"
        assert "exit code 130" in out, "the cancelled job's follow exits 130"
        assert "hello from olga" in out
        assert "token revoked" in err and "exit code 125" in out, "the revoked token is refused in one line"
        assert "the password is ***" in out and "hunter2" not in out + err, "the secret was masked"
        assert "were deleted by admin" in err, "the deleted transcript answers with who deleted it"
        assert "Traceback" not in err
        assert "bench-rev-a" in out, "the signed CI push made the bench pipeline (ref from the payload)"
        async with fs.api() as api:
            jobs = (await api.get("/api/jobs", params={"owner": "olga"})).json()["data"]
            assert [(j["owner"], j["state"]) for j in jobs] == [("olga", "completed")]
            cli_jobs = (await api.get("/api/jobs", params={"label": "tour:cli"})).json()["data"]
            assert [j["state"] for j in cli_jobs] == ["completed"] * 3  # run, run --detach, rerun
            cancelled = (await api.get("/api/jobs", params={"state": "cancelled"})).json()["data"]
            assert len(cancelled) == 1 and cancelled[0]["box"] == "local-2"
            (secret_job,) = (await api.get("/api/jobs", params={"label": "tour:secrets"})).json()["data"]
            assert secret_job["state"] == "completed" and secret_job["outputs_deleted_at"], secret_job
            assert (await api.get(f"/api/jobs/{secret_job['id']}/logs")).status_code == 410
            policy = (await api.get("/api/org/retention")).json()
            assert (policy["logs_days"], policy["artifacts_days"], policy["jobs_days"]) == (30, 90, None)
            assert (await api.get("/api/org/quota")).json()["storage_bytes"] == 10 << 30
            rest = (await api.get("/api/jobs", params={"label": "tour:rest"})).json()["data"]
            assert (await wait_terminal(api, rest[0]["id"], timeout=60))["state"] == "completed"
            pipelines = [p for p in (await api.get("/api/pipelines")).json()["data"] if p["name"] == "build-and-test"]
            assert [p["state"] for p in pipelines] == ["completed"]
            steps = (await api.get("/api/jobs", params={"label": "tour:pipeline"})).json()["data"]
            assert sorted(j["step"] for j in steps) == ["build", "test"]
            test_job = (await api.get("/api/jobs", params={"pipeline_id": pipelines[0]["id"]})).json()["data"][0]
            lines = (await api.get(f"/api/jobs/{test_job['id']}/logs")).json()["data"]
            assert [line["text"] for line in lines] == ["8 bytes of firmware"]
            await _bench_tour_held(api)
            audit = (await api.get("/api/audit", params={"action": "artifact.download"})).json()["data"]
            assert [a["detail"]["path"] for a in audit] == ["out.txt"]


async def _bench_tour_held(api: httpx.AsyncClient) -> None:
    """The tour's bench part: the template run's pipeline completed with its three steps on one
    box, the signed push made a pipeline owned by the trigger, the nightly schedule exists."""
    by_name = {p["name"]: p for p in (await api.get("/api/pipelines")).json()["data"]}
    run, pushed = by_name["bench-rev-b"], by_name["bench-rev-a"]
    assert run["state"] == "completed" and run["template"] == {"name": "bench", "version": 1}
    assert pushed["owner"] == "trigger:bench" and pushed["template"] == {"name": "bench", "version": 1}
    steps = (await api.get("/api/jobs", params={"pipeline_id": run["id"]})).json()["data"]
    assert sorted(j["step"] for j in steps) == ["flash", "poweroff", "test"]
    assert len({j["box"] for j in steps}) == 1, steps
    flash_job = next(j for j in steps if j["step"] == "flash")
    lines = (await api.get(f"/api/jobs/{flash_job['id']}/logs")).json()["data"]
    assert [line["text"] for line in lines] == ["flashing rev-b with main"]
    (schedule,) = (await api.get("/api/schedules")).json()["data"]
    assert (schedule["template"], schedule["cron"], schedule["params"]) == ("bench", "0 3 * * *", {"board": "rev-a"})
