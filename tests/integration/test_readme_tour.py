"""The README's tour, word for word: its shell blocks run with bash against a whole `boxrun dev`
stack whose data dir is where the tour looks for it (~/.local/share/boxrun/dev, HOME set to a
fresh directory)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.faultstack import fault_stack
from tests.integration.jobs import wait_terminal

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_blocks() -> list[str]:
    """The bash blocks of the README section 'Submitting your own job'."""
    text = README.read_text()
    section = text.split("## Submitting your own job", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL)


def test_the_tour_has_its_blocks():
    blocks = tour_blocks()
    assert len(blocks) == 3 and blocks[0].startswith("EP=~/.local/share/boxrun/dev/endpoints.json\n")


async def test_the_readme_tour_runs_word_for_word(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="boxrun-tour-"))
    try:
        await _tour(tmp_path, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _tour(tmp_path: Path, home: Path) -> None:
    async with fault_stack(tmp_path, boxes=2, data_dir=home / ".local/share/boxrun/dev") as fs:
        script = "set -euo pipefail\n" + "".join(tour_blocks())
        # the tour calls .venv/bin/boxrun from the repository root: give it this interpreter's
        work = tmp_path / "tour"
        (work / ".venv").mkdir(parents=True)
        (work / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            cwd=work,
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
        assert "gain=3" in out, "the job printed its file (the replay and the live stream show it)"
        assert '"name":"olga"' in out.replace(" ", "") and '"role":"operator"' in out.replace(" ", "")
        assert "token revoked" in out, "the call with the revoked token is refused"
        assert "event: done" in out and '"state":"completed"' in out.replace(" ", "")
        async with fs.api() as api:
            jobs = (await api.get("/api/jobs", params={"owner": "olga"})).json()["data"]
            assert [j["owner"] for j in jobs] == ["olga"]
            assert (await wait_terminal(api, jobs[0]["id"], timeout=60))["state"] == "completed"
            assert (await api.get("/api/boxes/local-2")).json()["allowed_users"] == ["olga"]
            pipelines = (await api.get("/api/pipelines")).json()["data"]
            assert [(p["name"], p["state"]) for p in pipelines] == [("build-and-test", "completed")]
            test_job = (await api.get("/api/jobs", params={"pipeline_id": pipelines[0]["id"]})).json()["data"][0]
            lines = (await api.get(f"/api/jobs/{test_job['id']}/logs")).json()["data"]
            assert [line["text"] for line in lines] == ["8 bytes of firmware"]
            audit = (await api.get("/api/audit", params={"action": "artifact.download"})).json()["data"]
            assert [a["detail"]["path"] for a in audit] == ["out.txt"]
