"""People on a whole real stack (Temporal, PostgreSQL, S3, API, control worker, an agent), as
`boxrun dev` starts it: the bootstrap admin creates an org, an operator and a token; the operator's
job runs and is theirs; a viewer may not submit; another org's user does not see the job; revoking
the operator's token ends their live log stream and every request of theirs is 401."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(tmp_path_factory.mktemp("people") / "dev", boxes=1, capacity=2) as stack:
        yield stack


def client(fs: FaultStack, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fs.endpoints["api_url"], timeout=30, headers={"Authorization": f"Bearer {token}"})


async def new_user(admin: httpx.AsyncClient, name: str, role: str, org: str | None = None) -> tuple[str, str]:
    """(token id, token) of a new user made by the bootstrap admin."""
    resp = await admin.post("/api/users", json={"name": name, "role": role, **({"org": org} if org else {})})
    assert resp.status_code == 201, resp.text
    minted = await admin.post(f"/api/users/{name}/tokens", json={"label": "stack test"})
    assert minted.status_code == 201, minted.text
    return minted.json()["id"], minted.json()["token"]


async def test_people_on_the_whole_stack(fs: FaultStack) -> None:
    async with fs.api() as admin:
        me = (await admin.get("/api/me")).json()
        assert me["platform_admin"] is True and me["org"] == "default"
        assert (await admin.post("/api/orgs", json={"id": "lab", "name": "Other lab"})).status_code == 201
        olga_id, olga_token = await new_user(admin, "olga", "operator")
        _, vic_token = await new_user(admin, "vic", "viewer")
        _, lara_token = await new_user(admin, "lara", "admin", org="lab")

        async with client(fs, olga_token) as olga, client(fs, vic_token) as vic, client(fs, lara_token) as lara:
            # the operator's job runs on the dev box and is theirs
            job = await submit(olga, "print('hello from olga')")
            done = await wait_terminal(olga, job["id"])
            assert (done["state"], done["owner"]) == ("completed", "olga"), done
            # a viewer reads it, but may not submit
            assert (await vic.get(f"/api/jobs/{job['id']}")).status_code == 200
            refused = await vic.post("/api/jobs", json={"box": "local-1", "script": "print(1)"})
            assert refused.status_code == 403, refused.text
            # another org's admin does not see it
            assert (await lara.get(f"/api/jobs/{job['id']}")).status_code == 404

            # a long job of olga's, followed live; revoking her token ends the stream
            long = await submit(olga, "import time\nprint('started', flush=True)\ntime.sleep(120)\n")
            await wait_for(lambda: _state_is(olga, long["id"], "running"), timeout=60, what="olga's long job to run")
            async with olga.stream("GET", f"/api/jobs/{long['id']}/logs/stream") as stream:
                assert stream.status_code == 200
                assert (await admin.delete(f"/api/tokens/{olga_id}")).status_code == 204
                t0 = time.monotonic()
                async with asyncio.timeout(5):
                    text = b"".join([c async for c in stream.aiter_bytes()]).decode()
                took = time.monotonic() - t0
            assert "event: revoked" in text and "token revoked" in text, text[-500:]
            assert took < 5
            assert (await olga.get("/api/me")).status_code == 401
            after = await olga.post("/api/jobs", json={"box": "local-1", "script": "print(1)"})
            assert after.status_code == 401 and "token revoked" in after.json()["detail"], after.text
            assert (await admin.post(f"/api/jobs/{long['id']}/cancel")).status_code == 202
            assert (await wait_terminal(admin, long["id"]))["state"] == "cancelled"


async def _state_is(api: httpx.AsyncClient, job_id: str, state: str) -> bool:
    return bool((await api.get(f"/api/jobs/{job_id}")).json()["state"] == state)
