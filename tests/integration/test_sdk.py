"""boxrun.sdk against a whole stack (Temporal dev server, PostgreSQL, S3 store, API, control worker,
one agent running real processes): the sync Client found through BOXRUN_URL/BOXRUN_TOKEN and the
saved profile, jobs with text, bytes and Path files, live logs, SHA-256-checked downloads, rerun,
cancel, the lazy list, pipelines from YAML, boxes, users and tokens with typed errors, and the
AsyncClient on the same code. One stack for the module: one box of capacity 2."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from boxrun.constants import JobState, PipelineState
from boxrun.sdk import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    save_profile,
)
from tests.integration.faultstack import FaultStack, fault_stack

pytestmark = pytest.mark.e2e

BOX = "local-1"

# Echoes its files' SHA-256, writes to both streams, leaves two artifacts (one binary, 2 MB).
WORK = """
import hashlib, os, pathlib, sys
for name in ("notes.txt", "blob.bin", "big.bin"):
    data = pathlib.Path(name).read_bytes()
    print("sha256", name, hashlib.sha256(data).hexdigest(), flush=True)
print("to stderr", file=sys.stderr, flush=True)
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "report.txt").write_text("all good\\n")
(out / "data").mkdir()
(out / "data" / "dump.bin").write_bytes(bytes(range(256)) * 8192)
for i in range(3):
    print("line", i, flush=True)
"""

# Runs until cancelled, saying so first.
LONG = """
import time
print("started", flush=True)
time.sleep(600)
"""

PIPELINE = f"""
name: sdk-demo
steps:
  build:
    box: {BOX}
    script: |
      import os, pathlib
      pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"], "fw.bin").write_bytes(b"firmware")
      print("built", flush=True)
  test:
    needs: [build]
    box: {BOX}
    inputs: [{{from: build, path: fw.bin}}]
    script: |
      print("tested", flush=True)
"""


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("sdkstack") / "dev", boxes=1, capacity=2) as stack:
        yield stack


@pytest.fixture
def client(fs: FaultStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Client]:
    """A Client given no argument: BOXRUN_URL/BOXRUN_TOKEN name the stack."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no profile of the machine
    monkeypatch.delenv("BOXRUN_API_URL", raising=False)
    monkeypatch.delenv("BOXRUN_API_TOKEN", raising=False)
    monkeypatch.setenv("BOXRUN_URL", fs.endpoints["api_url"])
    monkeypatch.setenv("BOXRUN_TOKEN", fs.endpoints["token"])
    with Client() as c:
        yield c


def test_a_job_from_submit_to_download(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # streamed in chunks through POST /api/files
    blob = b"\x00\xff binary \x01"
    job = client.jobs.submit(
        WORK,
        box=BOX,
        files={"notes.txt": "hello\n", "blob.bin": blob, "big.bin": big},
        env={"GREETING": "hi"},
        timeout_s=120,
    )
    lines = list(job.follow())
    assert job.state is JobState.COMPLETED and job.exit_code == 0 and job.ok
    texts = [ln.text for ln in lines]
    notes = hashlib.sha256(b"hello\n").hexdigest()
    assert f"sha256 notes.txt {notes}" in texts
    assert f"sha256 blob.bin {hashlib.sha256(blob).hexdigest()}" in texts
    assert f"sha256 big.bin {hashlib.sha256(big.read_bytes()).hexdigest()}" in texts
    assert [ln.seq for ln in lines] == sorted({ln.seq for ln in lines})  # each line once, in order

    assert [ln.text for ln in job.logs(stream="stderr")] == ["to stderr"]
    assert [ln.text for ln in job.logs(stream="stdout", tail=2)] == ["line 1", "line 2"]
    assert [ln.seq for ln in job.logs()] == [ln.seq for ln in lines]

    arts = {a.path: a for a in job.artifacts()}
    assert set(arts) == {"report.txt", "data/dump.bin"}
    seen: list[int] = []
    got = job.download("data/dump.bin", to=f"{tmp_path}/out/", progress=lambda done, total: seen.append(done))
    assert got == tmp_path / "out" / "dump.bin"
    assert got.read_bytes() == bytes(range(256)) * 8192
    assert hashlib.sha256(got.read_bytes()).hexdigest() == arts["data/dump.bin"].sha256
    assert seen[-1] == arts["data/dump.bin"].size
    with pytest.raises(NotFound):
        job.download("no/such.txt", to=tmp_path)

    again = job.rerun()
    assert again.id != job.id and again.rerun_of == job.id
    assert again.wait(timeout=120).ok
    assert job.spec().script == WORK

    listed = client.jobs.list(box=BOX, state="completed", page_size=1)  # one job a page, lazily
    ids = [next(listed).id, next(listed).id]
    assert ids == [again.id, job.id]  # newest first
    assert client.jobs.get(job.id).id == job.id
    events = [e.to_state for e in job.events()]
    assert events[-1] is JobState.COMPLETED


def test_cancel_a_running_job(client: Client) -> None:
    job = client.jobs.submit(LONG, box=BOX, cancel_grace_s=1)
    lines = job.follow(stream="stdout")
    assert next(lines).text == "started"
    job.cancel()
    lines.close()
    assert job.wait(timeout=60).state is JobState.CANCELLED
    with pytest.raises(Conflict):
        job.cancel()


def test_wait_with_a_timeout_leaves_the_job_running(client: Client) -> None:
    job = client.jobs.submit(LONG, box=BOX, cancel_grace_s=1)
    with pytest.raises(TimeoutError):
        job.wait(timeout=1)
    assert not job.done
    job.cancel().wait(timeout=60)


def test_errors_carry_the_apis_reason_and_field(client: Client) -> None:
    with pytest.raises(NotFound):
        client.jobs.get(str(uuid.uuid4()))
    with pytest.raises(InvalidInput) as no_box:
        client.jobs.submit("print(1)", box="no-such-box")
    assert no_box.value.field in ("box", "body.box") and "does not exist" in no_box.value.reason
    with pytest.raises(InvalidInput) as bad_env:
        client.jobs.submit("print(1)", box=BOX, env={"BOXRUN_X": "1"})
    assert "reserved" in bad_env.value.reason


def test_labels(client: Client) -> None:
    job = client.jobs.submit("print(1)", box=BOX, labels={"team": "hw"})
    assert job.labels == {"team": "hw"}
    assert [j.id for j in client.jobs.list(labels={"team": "hw"})] == [job.id]


def test_a_pipeline_from_yaml(client: Client, tmp_path: Path) -> None:
    definition = tmp_path / "pipe.yaml"
    definition.write_text(PIPELINE)
    pipe = client.pipelines.submit(definition)
    events = [(e.step, e.state) for e in pipe.follow()]
    assert pipe.state is PipelineState.COMPLETED and pipe.ok
    assert ("build", "completed") in events and ("test", "completed") in events
    assert events.index(("build", "completed")) < events.index(("test", "completed"))
    assert events[-1] == (None, "completed")
    assert [ln.text for ln in pipe.job("test").logs(stream="stdout")] == ["tested"]
    assert {j.step for j in pipe.jobs()} == {"build", "test"}
    assert pipe.id in [p.id for p in client.pipelines.list(limit=10)]
    again = pipe.rerun()
    assert again.wait(timeout=120).ok and again.rerun_of == pipe.id
    with pytest.raises(InvalidInput) as cycle:
        client.pipelines.submit({"steps": {"a": {"box": BOX, "script": "1", "needs": ["a"]}}})
    assert cycle.value.field is not None and cycle.value.field.startswith("body")


def test_boxes_users_and_tokens(client: Client, fs: FaultStack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert BOX in [b.name for b in client.boxes.list()]
    assert client.boxes.get(BOX).status == "online"
    me = client.users.me()
    assert me.role == "admin"

    name = f"viewer{uuid.uuid4().hex[:8]}"
    client.users.create(name, "viewer")
    assert name in [u.name for u in client.users.list()]
    token = client.tokens.create(name, label="sdk test")
    # the new user through the saved profile (no argument, no environment)
    monkeypatch.delenv("BOXRUN_URL")
    monkeypatch.delenv("BOXRUN_TOKEN")
    save_profile(fs.endpoints["api_url"], token.token)
    with Client() as viewer:
        assert viewer.users.me().name == name
        job = client.jobs.submit(LONG, box=BOX, cancel_grace_s=1)
        with pytest.raises(Forbidden, match="operator"):
            viewer.jobs.get(job.id).cancel()
        client.tokens.revoke(token.id)
        with pytest.raises(Unauthorized):
            viewer.users.me()
        job.cancel().wait(timeout=60)
    assert any(t.id == token.id and t.revoked for t in client.tokens.list())
    client.users.disable(name)
    assert next(u for u in client.users.list() if u.name == name).disabled


async def test_the_async_client(fs: FaultStack) -> None:
    async with AsyncClient(fs.endpoints["api_url"], fs.endpoints["token"]) as c:
        job = await c.jobs.submit("print('async hi')", box=BOX)
        assert [ln.text async for ln in job.follow(stream="stdout")] == ["async hi"]
        assert job.ok
        assert (await c.boxes.get(BOX)).name == BOX
        assert [j.id async for j in c.jobs.list(limit=1)] == [job.id]


def doc_blocks() -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "sdk.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_example_of_docs_sdk_md_runs(client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's `python` blocks, in order, in one namespace, in an empty folder: as a reader
    pasting them against `boxrun dev` would (its box is `local-1` too)."""
    blocks = doc_blocks()
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "sdk_doc"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/sdk.md block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"docs/sdk.md block {number} failed: {exc!r}\n{block}") from exc
    assert (tmp_path / "out" / "report.txt").read_text() == "ok\n"
