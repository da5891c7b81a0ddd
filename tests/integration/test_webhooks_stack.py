"""Webhooks on a whole `boxrun dev` stack (API, control worker, agent, embedded parts): a job that
fails on the box and a box that goes offline and comes back reach a real receiver on loopback
(which the dev stack allows), signed, retried after a 500, every attempt listed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from boxrun.webhook_target import verify
from tests.api.test_webhooks import Receiver, receiver
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e

AGENT = "agent-local-1"


async def _arrived(rec: Receiver, event: str) -> bool:
    return any(r.headers["x-boxrun-event"] == event for r in rec.got)


async def test_job_and_box_events_reach_a_receiver(tmp_path):
    async with receiver([500]) as rec, fault_stack(tmp_path, boxes=1) as fs, fs.api() as api:
        # the first sweeps (every 3 s) record the new box online before the webhook exists, so the
        # first thing the receiver gets is the job's delivery
        await asyncio.sleep(4)
        resp = await api.post(
            "/api/webhooks", json={"url": rec.url, "events": ["job.failed", "box.offline", "box.online"]}
        )
        assert resp.status_code == 201, resp.text
        hook = resp.json()
        job = await submit(api, "import sys; print('bye'); sys.exit(3)")
        done = await wait_terminal(api, job["id"])
        assert done["state"] == "failed"
        # the first attempt answered 500, the retry (5 s later) 200: one delivery, two attempts
        await wait_for(lambda: _arrived_n(rec, 2), timeout=60, what="the job.failed delivery, retried")
        first, second = rec.got[:2]
        assert first.body == second.body and first.headers["x-boxrun-delivery"] == second.headers["x-boxrun-delivery"]
        assert all(verify(hook["secret"], r.headers["x-boxrun-signature"], r.body, now=time.time()) for r in rec.got)
        body = json.loads(first.body)
        assert body["event"] == "job.failed" and body["data"]["id"] == job["id"]
        assert body["data"]["state"] == "failed" and body["data"]["exit_code"] == 3

        # the agent goes away: the liveness sweep announces box.offline, then box.online once back
        fs.stop(AGENT)
        await wait_for(lambda: _arrived(rec, "box.offline"), timeout=60, what="box.offline")
        fs.start(AGENT)
        await wait_for(lambda: _arrived(rec, "box.online"), timeout=60, what="box.online")
        offline = next(json.loads(r.body) for r in rec.got if r.headers["x-boxrun-event"] == "box.offline")
        assert offline["data"]["name"] == "local-1" and offline["data"]["status"] == "offline"

        async def all_delivered() -> bool:
            got = (await api.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["data"]
            return len(got) >= 3 and all(d["state"] == "delivered" for d in got)

        await wait_for(all_delivered, timeout=30, what="every delivery delivered")
        got = (await api.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["data"]
        failed = next(d for d in got if d["event"] == "job.failed")
        assert [a["status_code"] for a in failed["attempts"]] == [500, 200]


async def _arrived_n(rec: Receiver, n: int) -> bool:
    return len(rec.got) >= n
