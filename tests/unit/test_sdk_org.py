"""client.org and Job.delete_outputs against a mock of the API (httpx.MockTransport): the paths,
methods and bodies sent, the answers as models, a 410 as Gone with the API's reason, and bad
values refused before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from boxrun.errors import Gone, InvalidInput
from boxrun.sdk import Client
from boxrun.sdk.models import OrgQuotaPublic, OrgRetentionPublic, OrgUsage
from tests.unit.fakes import job_json

URL = "http://boxrun.test"
JOB = "6f1c1d2e-0000-4000-8000-000000000001"
GONE = f"the outputs of job {JOB} were deleted by alice at 2026-12-02T09:00:00Z"


class OrgApi:
    """The org routes and a job's outputs, in memory; every request kept."""

    def __init__(self) -> None:
        self.retention: dict[str, Any] = {"logs_days": None, "artifacts_days": None, "jobs_days": None}
        self.quota: dict[str, Any] = {"storage_bytes": None, "transcript_cap_bytes": None}
        self.deleted = False
        self.seen: list[tuple[str, str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.seen.append((request.method, request.url.path, body))
        path, method = request.url.path, request.method
        if path == "/api/org/retention":
            if method == "PUT":
                self.retention = body
            extra = {"updated_at": "2026-12-02T09:00:00Z", "updated_by": "admin", "schedule_id": "boxrun-retention"}
            return httpx.Response(200, json={**self.retention, **extra})
        if path == "/api/org/quota":
            if method == "PUT":
                self.quota = body
            return httpx.Response(200, json={**self.quota, "default_transcript_cap_bytes": 1 << 30})
        if path == "/api/org/usage":
            return httpx.Response(
                200,
                json={
                    "storage_bytes": 300,
                    "artifact_bytes": 200,
                    "log_archive_bytes": 100,
                    "transcript_bytes": 50,
                    "artifacts": 2,
                    "jobs": 3,
                    "quota_bytes": self.quota["storage_bytes"],
                },
            )
        if path == f"/api/jobs/{JOB}/outputs" and method == "DELETE":
            self.deleted = True
            return httpx.Response(204)
        if path == f"/api/jobs/{JOB}":
            at = "2026-12-02T09:00:00Z" if self.deleted else None
            return httpx.Response(
                200,
                json=job_json(JOB, "completed", logs_deleted_at=at, artifacts_deleted_at=at, outputs_deleted_at=at),
            )
        if path.startswith(f"/api/jobs/{JOB}/") and self.deleted:
            return httpx.Response(410, json={"detail": GONE, "code": "gone", "errors": []})
        return httpx.Response(404, json={"detail": "no such route in the mock"})


@pytest.fixture
def mock_api() -> OrgApi:
    return OrgApi()


@pytest.fixture
def client(mock_api: OrgApi):
    with Client(URL, "tok", transport=httpx.MockTransport(mock_api.handle)) as c:
        yield c


def test_retention_is_read_and_replaced(client: Client, mock_api: OrgApi) -> None:
    got = client.org.retention()
    assert isinstance(got, OrgRetentionPublic) and got.logs_days is None and got.schedule_id == "boxrun-retention"
    set_ = client.org.set_retention(logs_days=30, jobs_days=365)
    assert (set_.logs_days, set_.artifacts_days, set_.jobs_days) == (30, None, 365)
    # the whole policy is sent: a day count left out keeps forever
    assert mock_api.seen[-1] == (
        "PUT",
        "/api/org/retention",
        {"logs_days": 30, "artifacts_days": None, "jobs_days": 365},
    )


def test_quota_and_usage(client: Client, mock_api: OrgApi) -> None:
    q = client.org.set_quota(storage_bytes=10 << 30)
    assert isinstance(q, OrgQuotaPublic) and q.storage_bytes == 10 << 30 and q.transcript_cap_bytes is None
    assert mock_api.seen[-1][2] == {"storage_bytes": 10 << 30, "transcript_cap_bytes": None}
    assert client.org.quota().default_transcript_cap_bytes == 1 << 30
    u = client.org.usage()
    assert isinstance(u, OrgUsage) and (u.storage_bytes, u.quota_bytes) == (300, 10 << 30)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.org.set_retention(logs_days=0), "logs_days"),
        (lambda c: c.org.set_retention(artifacts_days=-1), "artifacts_days"),
        (lambda c: c.org.set_retention(jobs_days=36501), "jobs_days"),
        (lambda c: c.org.set_retention(logs_days="30"), "logs_days"),  # strict: the API refuses "30" too
        (lambda c: c.org.set_quota(storage_bytes=-1), "storage_bytes"),
        (lambda c: c.org.set_quota(storage_bytes=1 << 63), "storage_bytes"),
        (lambda c: c.org.set_quota(transcript_cap_bytes=1024), "transcript_cap_bytes"),
    ],
)
def test_bad_values_are_refused_before_sending(client: Client, mock_api: OrgApi, call: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        call(client)
    assert bad.value.field == field
    assert mock_api.seen == []


def test_delete_outputs_then_reads_are_gone_with_the_reason(client: Client, mock_api: OrgApi) -> None:
    job = client.jobs.get(JOB)
    assert job.outputs_deleted_at is None
    assert job.delete_outputs().aio is job.aio  # the same handle, read again
    assert job.outputs_deleted_at is not None
    assert ("DELETE", f"/api/jobs/{JOB}/outputs", None) in mock_api.seen
    with pytest.raises(Gone) as gone:
        job.logs()
    assert gone.value.reason == GONE
    with pytest.raises(Gone, match="deleted by alice"):
        job.artifacts()
    client.jobs.delete_outputs(JOB)  # again: harmless
    assert [s for s in mock_api.seen if s[0] == "DELETE"] == [("DELETE", f"/api/jobs/{JOB}/outputs", None)] * 2
