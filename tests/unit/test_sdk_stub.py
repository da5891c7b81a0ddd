"""boxrun/sdk/sync.pyi, the typed face of the sync Client: in step with its generator, every member
it declares there at run time, and useful to mypy (typed answers pass, wrong ones fail)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from boxrun.sdk import Client, aio, stubgen, sync
from boxrun.sdk.models import JobPublic, PipelinePublic
from tests.unit.fakes import job_json as fake_job_json

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "boxrun" / "sdk" / "sync.pyi"


def test_the_stub_is_in_step_with_the_async_implementation() -> None:
    assert STUB.read_text() == stubgen.generate(), (
        "boxrun/sdk/sync.pyi is stale: run `python -m boxrun.sdk.stubgen > boxrun/sdk/sync.pyi`"
    )


def stub_classes() -> dict[str, tuple[list[str], list[str]]]:
    """Each class of the stub: (its decorators, the members it declares)."""
    found = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            members = [
                n.name if isinstance(n, ast.FunctionDef) else n.target.id  # type: ignore[attr-defined]
                for n in node.body
                if isinstance(n, ast.FunctionDef | ast.AnnAssign)
            ]
            found[node.name] = ([ast.unparse(d) for d in node.decorator_list], members)
    return found


def test_the_stub_declares_what_sync_exports_and_only_type_names_besides() -> None:
    classes = stub_classes()
    for name in ("Runner", "Sync", "Client"):  # what other modules and tests import from sync
        assert name in classes and "type_check_only" not in classes[name][0]
        assert isinstance(getattr(sync, name), type)
    assert "def wrap(" in STUB.read_text()
    for name, (decorators, _) in classes.items():
        if not hasattr(sync, name):  # Job, Jobs, ...: names for type checkers only
            assert decorators == ["type_check_only"], name


def job_json(job_id: str = "job-1") -> dict[str, Any]:
    return JobPublic.model_validate(fake_job_json(job_id)).model_dump(mode="json")


@pytest.fixture
def client() -> Any:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "no API here"})

    with Client("http://boxrun.test", "brk_test", transport=httpx.MockTransport(refuse)) as c:
        yield c


def test_every_member_the_stub_declares_exists_at_run_time(client: Any) -> None:
    """No member is made up: each is there on the sync object it types (no request is made)."""
    pipeline = PipelinePublic.model_validate(
        {**{k: v for k, v in job_json().items() if k in PipelinePublic.model_fields}, "name": None, "steps": []}
    )
    objects = {
        "Client": client,
        "Job": sync.wrap(aio.Job(client.aio, JobPublic.model_validate(job_json())), client._runner),
        "Pipeline": sync.wrap(aio.Pipeline(client.aio, pipeline), client._runner),
        **{
            name: getattr(client, name.lower())
            for name in ("Jobs", "Pipelines", "Boxes", "Users", "Tokens", "Audit", "Secrets")
        },
    }
    classes = stub_classes()
    assert set(objects) <= set(classes)
    for name, obj in objects.items():
        for member in classes[name][1]:
            assert hasattr(obj, member), f"the stub's {name}.{member} is not there at run time"


# What mypy must accept (typed, no Any on the way) and what it must refuse: each line that ends in
# `# E: code` must give exactly that error, and no other line any.
SNIPPET = """\
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from boxrun.sdk import Client
from boxrun.sdk.models import BoxPublic, JobPublic, JobState, LogLinePublic, PipelineSummary, StepPublic

if TYPE_CHECKING:
    from boxrun.sdk.sync import Job


def describe(job: Job) -> str:
    return f"{job.id} {job.state.value} {job.ok}"


def typed(client: Client) -> None:
    job = client.jobs.submit("echo hi", box="local-1", files={"fw.bin": Path("fw.bin")}, labels={"a": "b"})
    model: JobPublic = client.jobs.get("x").model
    state: JobState = job.wait(timeout=5).state
    code: int | None = job.exit_code
    when: datetime = job.created_at
    lines: list[LogLinePublic] = job.logs(stream="stdout", tail=10)
    texts: list[str] = [line.text for line in job.follow()]
    ids: list[str] = [j.id for j in client.jobs.list(mine=True, limit=5)]
    summaries: list[PipelineSummary] = list(client.pipelines.list())
    boxes: list[BoxPublic] = client.boxes.list()
    pipeline = client.pipelines.get("p")
    step: StepPublic = pipeline.step("build")
    first: str = describe(pipeline.jobs()[0])
    saved: Path = pipeline.job("build").download("out.bin", progress=lambda done, total: None)
    with Client("http://x", "t") as other:
        other.close()


def wrong(client: Client) -> None:
    a: str = client.jobs.get("x").exit_code  # E: assignment
    b: JobPublic = client.jobs.get("x")  # E: assignment
    client.jobs.sbumit("echo hi")  # E: attr-defined
    client.jobs.submit("echo hi", bxo="local-1")  # E: call-arg
    c: int = client.pipelines.get("p").state  # E: assignment
    client.jobs.get("x").model = client.jobs.get("y").model  # E: misc
    for job in client.jobs.list():
        job.model.nope  # E: attr-defined
"""


def test_mypy_types_the_sync_client_and_refuses_wrong_uses(tmp_path: Path) -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed (the test extra)")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    # sync.py itself, which the stub hides from `make gates`' mypy, checked as a module of its own
    impl = tmp_path / "sync_impl.py"
    impl.write_text((ROOT / "boxrun" / "sdk" / "sync.py").read_text())
    run = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(snippet), str(impl)]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = re.findall(r"^(.+?):(\d+): error: .*\[([a-z-]+)\]$", done.stdout, re.M)
    got = {(Path(f).name, int(line), code) for f, line, code in errors}
    expected = {
        ("snippet.py", n, m.group(1))
        for n, text in enumerate(SNIPPET.splitlines(), 1)
        if (m := re.search(r"# E: ([a-z-]+)$", text))
    }
    assert got == expected, done.stdout + done.stderr
