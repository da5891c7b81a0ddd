"""Deleting a box on a whole real stack (Temporal, PostgreSQL, S3, API, control worker, an agent):
the jobs waiting for it are woken by the delete and end `unschedulable` naming the deleted box,
well before the reaper's waiter sweep (every POLL_S in this stack) could have noticed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import wait_for
from tests.integration.faultstack import FaultStack, fault_stack
from tests.integration.jobs import submit, wait_terminal

pytestmark = pytest.mark.e2e

POLL_S = 120  # this stack's waiter sweep: far, so only the delete's wake-up can end the jobs in time
WOKEN_S = 30.0  # well under POLL_S, with room for a loaded machine


@pytest.fixture(scope="module")
async def fs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(
        tmp_path_factory.mktemp("box-delete") / "dev",
        boxes=1,
        capacity=1,
        env={"BOXRUN_WAITER_SWEEP_INTERVAL_S": str(POLL_S)},
    ) as stack:
        yield stack


@pytest.fixture
async def api(fs: FaultStack) -> AsyncIterator[httpx.AsyncClient]:
    async with fs.api() as client:
        yield client


async def test_deleting_a_box_ends_its_waiting_jobs_unschedulable(api: httpx.AsyncClient) -> None:
    # a box with no agent: jobs for it wait ("offline")
    assert (await api.post("/api/boxes", json={"name": "ghost", "groups": ["spectral"]})).status_code == 201
    named = await submit(api, "print(1)", box="ghost")
    grouped = await submit(api, "print(1)", box=None, box_group="spectral")

    async def waiting() -> bool:
        states = [(await api.get(f"/api/jobs/{j['id']}")).json()["state"] for j in (named, grouped)]
        return states == ["waiting_for_box", "waiting_for_box"]

    await wait_for(waiting, timeout=30, what="both jobs to wait for the ghost box")
    t0 = time.monotonic()
    resp = await api.delete("/api/boxes/ghost")
    assert resp.status_code == 204, resp.text
    n = await wait_terminal(api, named["id"], timeout=15)
    g = await wait_terminal(api, grouped["id"], timeout=15)
    took = time.monotonic() - t0
    assert (n["state"], n["error"]) == ("unschedulable", "box ghost was deleted"), n
    assert (g["state"], g["error"]) == ("unschedulable", "group spectral has no boxes (box ghost was deleted)"), g
    assert took < WOKEN_S, f"the waiting jobs ended {took:.2f}s after the delete"
    assert n["box"] == "ghost"
