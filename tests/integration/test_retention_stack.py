"""Retention and the storage quota on a whole `boxrun dev` stack (API, control worker, agent,
embedded Temporal, PostgreSQL, S3): the control worker made the `boxrun-retention` Temporal
Schedule; a real job's transcript and artifact, aged in SQL past the org's retention, are deleted
by a run the test triggers through Temporal (not waited for); a real job whose artifact would take
the org past its quota fails "storage quota exceeded" with nothing in storage."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from boxrun.constants import LOG_ARCHIVE_KEY, artifact_key
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.temporal import connect
from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e

ARTIFACT_SCRIPT = """
import os, pathlib
out = pathlib.Path(os.environ["BOXRUN_ARTIFACTS_DIR"])
(out / "result.bin").write_bytes(b"r" * {size})
for i in range(20):
    print("line", i)
"""


def stack_storage(fs: FaultStack) -> Storage:
    """The stack's bucket, as its worker reaches it."""
    env = fs.child("worker").env
    return Storage(
        Settings(
            s3_endpoint_url=env["BOXRUN_S3_ENDPOINT_URL"],
            s3_access_key_id=env["BOXRUN_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=env["BOXRUN_S3_SECRET_ACCESS_KEY"],
        )
    )


async def heads(storage: Storage, keys: list[str]) -> list[int | None]:
    return [await asyncio.to_thread(storage.head, k) for k in keys]


async def gone(api: httpx.AsyncClient, path: str) -> bool:
    return (await api.get(path)).status_code == 410


async def test_the_retention_schedule_deletes_expired_outputs_and_the_quota_refuses_a_job(tmp_path):
    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        storage = stack_storage(fs)
        db = await asyncpg.connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
        temporal = await connect(fs.endpoints["temporal_address"])
        try:
            # -- retention: a real job with a transcript and an artifact
            job = await submit(api, ARTIFACT_SCRIPT.format(size=4096))
            done = await wait_terminal(api, job["id"])
            assert done["state"] == "completed", done
            jid = job["id"]

            async def archived() -> bool:  # the workflow archives the transcript as the job ends
                return (await api.get(f"/api/jobs/{jid}")).json()["log_archive"] is not None

            await wait_for(archived, timeout=30, what="the transcript archive")
            keys = [LOG_ARCHIVE_KEY.format(job_id=jid), artifact_key(jid, "result.bin")]
            assert None not in await heads(storage, keys), "the archive and the artifact are stored"
            assert (await api.get(f"/api/jobs/{jid}/artifacts")).json()["count"] == 1

            schedule = temporal.get_schedule_handle("boxrun-retention")
            described = await schedule.describe()  # the control worker made it at start-up
            assert described.schedule.spec.intervals[0].every.total_seconds() == 3600

            resp = await api.put("/api/org/retention", json={"logs_days": 1, "artifacts_days": 2})
            assert resp.status_code == 200, resp.text
            await db.execute(
                "UPDATE jobs SET finished_at = finished_at - interval '3 days' WHERE id = $1", uuid.UUID(jid)
            )
            await schedule.trigger()

            async def outputs_gone() -> bool:
                return all(
                    [
                        await gone(api, f"/api/jobs/{jid}/logs"),
                        await gone(api, f"/api/jobs/{jid}/artifacts"),
                        await heads(storage, keys) == [None, None],
                    ]
                )

            await wait_for(outputs_gone, timeout=90, interval=0.5, what="the retention run to delete the outputs")
            logs = (await api.get(f"/api/jobs/{jid}/logs.txt")).json()
            assert "expired under the org's retention (logs_days=1)" in logs["detail"], logs
            artifacts = (await api.get(f"/api/jobs/{jid}/artifacts/result.bin")).json()
            assert "expired under the org's retention (artifacts_days=2)" in artifacts["detail"], artifacts
            after = (await api.get(f"/api/jobs/{jid}")).json()
            assert after["state"] == "completed" and after["outputs_deleted_at"] is not None
            audit = (await api.get("/api/audit", params={"action": "retention.apply"})).json()["data"]
            assert audit and audit[0]["actor"] == "system", audit
            assert audit[0]["detail"]["transcripts"] == 1 and audit[0]["detail"]["artifacts"] == 1
            assert audit[0]["detail"]["artifact_bytes"] == 4096
            events = (await api.get(f"/api/jobs/{jid}/events")).json()["data"]
            assert events[-1]["to_state"] == "completed", "the job's events stay"
            runs = [wf async for wf in temporal.list_workflows('WorkflowType = "RetentionWorkflow"')]
            assert runs, "the run is a RetentionWorkflow the Web UI lists"

            # -- the quota: the next artifact does not fit
            usage = (await api.get("/api/org/usage")).json()
            quota = usage["storage_bytes"] + 1000
            assert (await api.put("/api/org/quota", json={"storage_bytes": quota})).status_code == 200
            big = await submit(api, ARTIFACT_SCRIPT.format(size=5000))
            failed = await wait_terminal(api, big["id"])
            assert failed["state"] == "failed", failed
            assert failed["error"].startswith("storage quota exceeded:"), failed
            assert f"the quota is {quota} bytes" in failed["error"]
            assert await heads(storage, [artifact_key(big["id"], "result.bin")]) == [None], "nothing uploaded"
            assert (await api.get(f"/api/jobs/{big['id']}/artifacts")).json()["count"] == 0
            lines = (await api.get(f"/api/jobs/{big['id']}/logs")).json()["data"]
            assert any(line["text"] == "line 19" for line in lines), "the job ran; only its upload was refused"
        finally:
            await db.close()
