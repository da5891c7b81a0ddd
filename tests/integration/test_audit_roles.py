"""The audit trail on a whole `boxrun dev` stack: the API and the worker connect as the runtime
role, which cannot UPDATE, DELETE or TRUNCATE audit rows (nor drop the trigger that refuses them
to everyone); a job run end to end leaves every transition and its lease in the log, and its
rows outlive the job once the owner deletes it."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from boxrun.dev.services import PG_APP_ROLE, PG_RUNTIME_ROLE, pg_url
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import submit, wait_terminal


async def test_the_runtime_role_cannot_rewrite_the_audit_log_and_rows_outlive_their_job(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        job = await submit(api, "print('audited')", box="local-1")
        done = await wait_terminal(api, job["id"])
        assert done["state"] == "completed", (done["error"], done["exit_code"])

        runtime_url = fs.child("api").env["BOXRUN_DATABASE_URL"]
        assert fs.child("worker").env["BOXRUN_DATABASE_URL"] == runtime_url
        assert "BOXRUN_DATABASE_OWNER_URL" not in fs.child("api").env  # the API never holds the owner's password
        runtime = await asyncpg.connect(runtime_url)
        try:
            assert await runtime.fetchval("SELECT current_user") == PG_RUNTIME_ROLE
            for sql in (
                "UPDATE audit_log SET actor = 'someone else'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                    await runtime.execute(sql)
            for sql in (
                "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
                "DROP TRIGGER audit_log_append_only ON audit_log",
                "DROP TABLE audit_log",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
                    await runtime.execute(sql)
            # it still writes what the product writes (the job above ran on it) and may add rows
            await runtime.execute(
                "INSERT INTO audit_log (org_id, actor, action) VALUES ('default', 'system', 'test.insert')"
            )
        finally:
            await runtime.close()

        rows = (await api.get("/api/audit", params={"job_id": job["id"], "limit": 1000})).json()["data"]
        actions = [r["action"] for r in reversed(rows)]
        transitions = [a for a in actions if a.startswith("job.")]
        assert transitions == ["job.queued", "job.dispatching", "job.running", "job.completed"]  # nothing to upload
        assert actions.count("lease.granted") == 1 and actions.count("lease.released") == 1
        assert {r["box"] for r in rows} == {"local-1"}
        assert {r["actor"] for r in rows} == {"admin", "system"}

        # the owner deletes the job (and, by cascade, its events, lease and logs): its audit stays
        secrets = json.loads((fs.stack.dir / "secrets.json").read_text())
        owner_url = pg_url(fs.stack.ports["postgres"], PG_APP_ROLE, secrets["postgres"]["app_password"], "boxrun")
        owner = await asyncpg.connect(owner_url)
        try:
            assert await owner.execute("DELETE FROM jobs WHERE id = $1", job["id"]) == "DELETE 1"
            assert await owner.fetchval("SELECT count(*) FROM job_events WHERE job_id = $1", job["id"]) == 0
        finally:
            await owner.close()
        assert (await api.get(f"/api/jobs/{job['id']}")).status_code == 404
        after = (await api.get("/api/audit", params={"job_id": job["id"], "limit": 1000})).json()["data"]
        assert after == rows
