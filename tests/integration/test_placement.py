"""Leases, waiting and the state machine on a real PostgreSQL."""

import asyncio
from datetime import UTC, datetime

import pytest

from boxrun.constants import DEFAULT_ORG, JobState
from boxrun.db import Q, connect
from boxrun.errors import Conflict, InvalidTransition
from boxrun.placement import acquire, finish, release
from boxrun.services import boxes
from boxrun.services.identity import Role, User
from boxrun.transitions import transition
from tests.conftest import wait_for
from tests.integration.helpers import add_box, add_job, state_of


async def test_grant_wait_and_wake_in_fifo_order(conn):
    await add_box(conn, "b1")
    first = await add_job(conn, box="b1")
    second = await add_job(conn, box="b1")
    third = await add_job(conn, box="b1")
    assert (await acquire(conn, first)).box == "b1"
    assert await state_of(conn, first) == "dispatching"
    assert (await acquire(conn, second)).wait_reason == "busy"
    assert (await acquire(conn, third)).wait_reason == "busy"
    assert await state_of(conn, second) == "waiting_for_box"
    # idempotent: a retried grant returns the lease it already holds
    assert (await acquire(conn, first)).box == "b1"

    freed = await release(conn, first)
    assert freed.released and freed.wake_job_ids == [second]
    assert (await acquire(conn, third)).wait_reason == "busy", "a later job must not jump the queue"
    assert (await acquire(conn, second)).box == "b1"
    assert (await release(conn, first)).released is False, "release is idempotent"


async def test_priority_goes_first_within_waiters(conn):
    await add_box(conn, "b1")
    holder = await add_job(conn, box="b1")
    await acquire(conn, holder)
    low = await add_job(conn, box="b1")
    high = await add_job(conn, box="b1", priority=5)
    await acquire(conn, low)
    await acquire(conn, high)
    assert (await release(conn, holder)).wake_job_ids == [high]


async def test_capacity_and_exclusive_locks(conn):
    await add_box(conn, "big", capacity=2)
    a, b, c = [await add_job(conn, box="big") for _ in range(3)]
    assert (await acquire(conn, a)).box == "big"
    assert (await acquire(conn, b)).box == "big"
    assert (await acquire(conn, c)).wait_reason == "busy"
    await release(conn, a)
    await release(conn, b)
    assert (await acquire(conn, c)).box == "big"
    locker = await add_job(conn, box="big", lock=True)
    assert (await acquire(conn, locker)).wait_reason == "busy", "a lock needs the box empty"
    await release(conn, c)
    assert (await acquire(conn, locker)).box == "big"
    other = await add_job(conn, box="big")
    assert (await acquire(conn, other)).wait_reason == "busy", "nothing joins an exclusive lease"


async def test_groups_place_by_capabilities(conn):
    await add_box(conn, "plain", groups=["lab"], capabilities=["python3"])
    await add_box(conn, "scope", groups=["lab"], capabilities=["python3", "oscilloscope"])
    job = await add_job(conn, group="lab", requires=["oscilloscope"])
    assert (await acquire(conn, job)).box == "scope"
    never = await add_job(conn, group="lab", requires=["fpga"])
    got = await acquire(conn, never)
    assert got.box is None and "fpga" in got.unschedulable_reason
    named = await add_job(conn, box="plain", requires=["oscilloscope"])
    assert "lacks capabilities ['oscilloscope']" in (await acquire(conn, named)).unschedulable_reason


async def acquire_all_at_once(db_url: str, jobs: list[str]) -> list:
    """Every job's placement at the same time, each on its own connection."""
    conns = [await connect(db_url) for _ in jobs]
    try:
        return await asyncio.gather(*(acquire(c, j) for c, j in zip(conns, jobs)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def waits_on_a_lock(conn, pid: int) -> bool:
    """The backend `pid` is blocked on a lock (a row, a transaction, an advisory lock)."""
    row = await conn.fetchrow("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
    return row is not None and row["wait_event_type"] == "Lock"


async def test_concurrent_grants_never_overbook(db_url, conn):
    await add_box(conn, "one")
    jobs = [await add_job(conn, box="one") for _ in range(20)]
    results = await acquire_all_at_once(db_url, jobs)
    assert sum(r.box is not None for r in results) == 1
    assert await conn.fetchval("SELECT count(*) FROM leases WHERE released_at IS NULL") == 1


async def test_transitions_are_guarded_one_way_and_recorded(conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    await acquire(conn, job)
    async with conn.transaction():
        assert await transition(conn, job, JobState.RUNNING) == (JobState.RUNNING, True)
    async with conn.transaction():
        assert await transition(conn, job, JobState.RUNNING) == (JobState.RUNNING, False)
    async with conn.transaction():
        await transition(conn, job, JobState.COMPLETED, exit_code=0)
    for target in (JobState.RUNNING, JobState.FAILED, JobState.CANCELLED):
        with pytest.raises(InvalidTransition):
            async with conn.transaction():
                await transition(conn, job, target)
    events = await conn.fetch(Q.job_events, job)
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        (None, "queued"),
        ("queued", "dispatching"),
        ("dispatching", "running"),
        ("running", "completed"),
    ]
    row = await conn.fetchrow("SELECT started_at, finished_at, exit_code FROM jobs WHERE id = $1", job)
    assert row["started_at"] <= row["finished_at"] and row["exit_code"] == 0


async def test_a_waiting_lock_job_is_not_starved_by_a_stream_of_small_jobs(conn):
    await add_box(conn, "shared", capacity=2)
    running = await add_job(conn, box="shared")
    assert (await acquire(conn, running)).box == "shared"
    locker = await add_job(conn, box="shared", lock=True)
    assert (await acquire(conn, locker)).wait_reason == "busy"
    small = [await add_job(conn, box="shared") for _ in range(3)]
    for job in small:  # a slot is free, but the lock job waits longer: nobody jumps it
        assert (await acquire(conn, job)).wait_reason == "busy"
    freed = await release(conn, running)
    assert freed.wake_job_ids[0] == locker
    assert (await acquire(conn, locker)).box == "shared"
    assert (await acquire(conn, small[0])).wait_reason == "busy"


async def test_maintenance_offline_and_draining_boxes_get_no_jobs(conn):
    maint = await add_box(conn, "maint")
    await add_box(conn, "silent", live=False)
    drain = await add_box(conn, "drain")
    await conn.fetchrow(Q.box_report, drain, "test", 15.0, True, None)  # the agent says it is draining
    window = await conn.fetchrow(Q.insert_window, "default", maint, datetime.now(UTC), None, "calibration", "tester")
    job = await add_job(conn, box="maint")
    got = await acquire(conn, job)
    assert got.wait_reason == "maintenance"
    rejections = await conn.fetch("SELECT job_id, box_id, window_id FROM placement_rejections")
    assert [(str(r["job_id"]), r["box_id"], r["window_id"]) for r in rejections] == [(job, maint, window["id"])]
    await acquire(conn, job)  # asked again: still one rejection per job and window
    assert await conn.fetchval("SELECT count(*) FROM placement_rejections") == 1
    assert (await acquire(conn, await add_job(conn, box="silent"))).wait_reason == "offline"
    assert (await acquire(conn, await add_job(conn, box="drain"))).wait_reason == "offline"


async def test_fifo_counts_jobs_not_yet_placed(conn):
    """B, submitted after A for the same box, must not take it just because its workflow asked
    first while A was still `queued`."""
    await add_box(conn, "b1")
    a = await add_job(conn, box="b1")
    b = await add_job(conn, box="b1")
    assert (await acquire(conn, b)).wait_reason == "busy"
    assert (await acquire(conn, a)).box == "b1"


async def test_a_grant_hands_the_wake_up_on_while_boxes_are_free(conn):
    """Several boxes of a group free up at once; each release names the same head waiter. The
    head's grant names the next waiter, so every free box gets a job without polling."""
    for i in range(3):
        await add_box(conn, f"g{i}", groups=["grp"])
    holders = [await add_job(conn, group="grp") for _ in range(3)]
    for h in holders:
        assert (await acquire(conn, h)).box is not None
    waiters = [await add_job(conn, group="grp") for _ in range(3)]
    for w in waiters:
        assert (await acquire(conn, w)).wait_reason == "busy"
    woken = [(await release(conn, h)).wake_job_ids for h in holders]
    assert woken == [[waiters[0]], [waiters[0]], [waiters[0]]], "every release names the head"
    first = await acquire(conn, waiters[0])
    assert first.box is not None and first.wake_job_ids == [waiters[1]]
    second = await acquire(conn, waiters[1])
    assert second.box is not None and second.wake_job_ids == [waiters[2]]
    third = await acquire(conn, waiters[2])
    assert third.box is not None and third.wake_job_ids == []


async def active_leases(conn) -> int:
    return await conn.fetchval("SELECT count(*) FROM leases WHERE released_at IS NULL")


async def test_finish_refuses_an_invalid_move_and_keeps_the_lease(conn):
    """dispatching -> completed is not a move the state machine allows: the job is still live, so
    finish() raises and its box stays leased (it used to count as "already terminal" and free it)."""
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    await acquire(conn, job)
    with pytest.raises(InvalidTransition):
        await finish(conn, job, JobState.COMPLETED, exit_code=0)
    assert await state_of(conn, job) == "dispatching"
    assert await active_leases(conn) == 1


async def test_finish_refuses_a_non_terminal_target(conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    await acquire(conn, job)
    with pytest.raises(ValueError, match="terminal"):
        await finish(conn, job, JobState.RUNNING)
    assert await state_of(conn, job) == "dispatching"
    assert await active_leases(conn) == 1


async def test_finish_ends_a_live_job_and_frees_its_box(conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    waiter = await add_job(conn, box="b1")
    await acquire(conn, job)
    await acquire(conn, waiter)
    done = await finish(conn, job, JobState.FAILED, error="boom")
    assert (done.state, done.released, done.wake_job_ids) == (JobState.FAILED, True, [waiter])
    assert await state_of(conn, job) == "failed"
    assert await active_leases(conn) == 0


async def test_finish_on_an_ended_job_keeps_its_state_and_frees_a_leftover_lease(conn):
    """Terminal states absorb: a second finish (a retry, or the reaper) changes nothing but the lease."""
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    await acquire(conn, job)
    async with conn.transaction():
        await transition(conn, job, JobState.CANCELLED)  # ended without its lease being freed
    assert await active_leases(conn) == 1
    done = await finish(conn, job, JobState.FAILED, error="reaped")
    assert (done.state, done.released) == (JobState.CANCELLED, True)
    assert await state_of(conn, job) == "cancelled"
    assert await active_leases(conn) == 0
    again = await finish(conn, job, JobState.FAILED)
    assert (again.state, again.released) == (JobState.CANCELLED, False)


ADMIN = User(name="admin", org_id=DEFAULT_ORG, role=Role.ADMIN, platform_admin=True)


async def test_a_job_whose_named_box_was_deleted_ends_unschedulable_saying_so(conn, temporal_client):
    await add_box(conn, "b1")
    ran = await add_job(conn, box="b1")
    assert (await acquire(conn, ran)).box == "b1"
    waiting = await add_job(conn, box="b1")
    assert (await acquire(conn, waiting)).wait_reason == "busy"
    with pytest.raises(Conflict, match=f"box b1 is in use: 1 job\\(s\\) hold a lease on it \\({ran}\\)"):
        await boxes.delete_box(conn, temporal_client, ADMIN, "b1")
    await finish(conn, ran, JobState.FAILED, error="x")

    await boxes.delete_box(conn, temporal_client, ADMIN, "b1")  # the waiter has no workflow: logged
    assert await conn.fetchval("SELECT count(*) FROM boxes") == 0
    got = await acquire(conn, waiting)
    assert got.unschedulable_reason == "box b1 was deleted"
    # the job that ran there keeps showing the box's name
    assert (await conn.fetchrow(Q.get_job, DEFAULT_ORG, ran))["box"] == "b1"
    # a box that never existed is still told apart (a row written past the API's own check)
    stray = await add_job(conn, box="never")
    assert (await acquire(conn, stray)).unschedulable_reason == "box never does not exist"


async def test_a_group_whose_boxes_were_deleted_says_which_and_others_keep_waiting(conn, temporal_client):
    await add_box(conn, "a1", groups=["g"])
    await add_box(conn, "a2", groups=["g", "h"])
    holder = await add_job(conn, group="h")
    assert (await acquire(conn, holder)).box == "a2"
    h_waiter = await add_job(conn, group="h")
    assert (await acquire(conn, h_waiter)).wait_reason == "busy"
    g_job = await add_job(conn, group="g")
    assert (await acquire(conn, g_job)).box == "a1"
    await finish(conn, g_job, JobState.FAILED, error="x")

    await boxes.delete_box(conn, temporal_client, ADMIN, "a1")
    # group g still has a2 (busy): its jobs keep waiting
    later_g = await add_job(conn, group="g")
    assert (await acquire(conn, later_g)).wait_reason == "busy"
    await finish(conn, holder, JobState.FAILED, error="x")
    await boxes.delete_box(conn, temporal_client, ADMIN, "a2")
    assert (await acquire(conn, h_waiter)).unschedulable_reason == "group h has no boxes (box a2 was deleted)"
    assert (await acquire(conn, later_g)).unschedulable_reason == "group g has no boxes (box a2 was deleted)"
    for job in (h_waiter, later_g):  # what their workflows do with that answer
        await finish(conn, job, JobState.UNSCHEDULABLE, error="gone")
    # history keeps each box's name; a new box may take a deleted one's name
    assert (await conn.fetchrow(Q.get_job, DEFAULT_ORG, g_job))["box"] == "a1"
    await add_box(conn, "a1", groups=["g"])
    assert (await conn.fetchrow(Q.get_job, DEFAULT_ORG, g_job))["box"] == "a1"
    fresh = await add_job(conn, group="g")
    assert (await acquire(conn, fresh)).box == "a1"


async def test_a_placement_in_progress_locks_only_the_box_it_chose(db_url, conn):
    """Group placement holds its target's lock and the one box it chose: the other boxes of the
    group take their agents' heartbeats meanwhile (before issue 15 every box of the group was
    locked FOR UPDATE, so at 1,000 boxes heartbeats and placements queued behind one another)."""
    ids = [await add_box(conn, f"g{i}", groups=["big"]) for i in range(20)]
    job = await add_job(conn, group="big")
    placing, beating = await connect(db_url), await connect(db_url)
    try:
        await beating.execute("SET lock_timeout = '2s'")
        async with placing.transaction():
            got = await acquire(placing, job)
            chosen = await conn.fetchval("SELECT id FROM boxes WHERE name = $1", got.box)
            for box_id in ids:
                if box_id != chosen:  # raises LockNotAvailableError if the placement had it locked
                    assert await beating.fetchrow(Q.box_report, box_id, "test", 15.0, False, None) is not None
    finally:
        await placing.close()
        await beating.close()
    assert await conn.fetchval("SELECT count(*) FROM leases WHERE released_at IS NULL") == 1


async def test_grants_through_a_name_and_a_group_sharing_a_box_never_overbook(db_url, conn):
    """Two targets (the box by name, and a group it is in) have different placement locks: the
    box chosen is locked and checked again, so its one slot goes to one job."""
    await add_box(conn, "shared", groups=["pool"])
    jobs = [await add_job(conn, box="shared") if i % 2 else await add_job(conn, group="pool") for i in range(20)]
    results = await acquire_all_at_once(db_url, jobs)
    assert sum(r.box is not None for r in results) == 1
    assert await conn.fetchval("SELECT count(*) FROM leases WHERE released_at IS NULL") == 1
    assert {r.wait_reason for r in results if r.box is None} == {"busy"}


async def test_a_release_racing_a_placement_that_decides_to_wait_wakes_it(db_url, conn):
    """The placement decides "wait" and has not committed when the box is released: the release
    takes the box's placement locks first, so it waits for that decision and names the job."""
    await add_box(conn, "solo", groups=["g"])
    holder = await add_job(conn, box="solo")
    assert (await acquire(conn, holder)).box == "solo"
    await transition(conn, holder, JobState.RUNNING)
    waiter = await add_job(conn, group="g")
    placing, releasing = await connect(db_url), await connect(db_url)
    try:
        tx = placing.transaction()
        await tx.start()
        assert (await acquire(placing, waiter)).wait_reason == "busy"
        pid = await releasing.fetchval("SELECT pg_backend_pid()")
        freeing = asyncio.create_task(finish(releasing, holder, JobState.COMPLETED))

        await wait_for(lambda: waits_on_a_lock(conn, pid), what="the release waiting for the placement's decision")
        await tx.commit()
        freed = await asyncio.wait_for(freeing, 10)
    finally:
        await placing.close()
        await releasing.close()
    assert freed.released and freed.wake_job_ids == [waiter]


async def test_deleting_a_box_while_a_placement_decides_wakes_the_job_it_made_wait(db_url, conn, temporal_client):
    """The box is deleted while a placement of its group has decided "wait" but not committed:
    the deletion takes the group's placement lock first, so it waits for that decision and finds
    the job among the waiters it wakes (the job then ends unschedulable, instead of waiting for
    a box that no longer exists until its queue deadline)."""
    await add_box(conn, "only", groups=["solo"])
    job = await add_job(conn, group="solo")
    await conn.execute("UPDATE boxes SET last_seen_at = NULL WHERE name = 'only'")  # offline: the job waits
    placing, deleting = await connect(db_url), await connect(db_url)
    try:
        tx = placing.transaction()
        await tx.start()
        assert (await acquire(placing, job)).wait_reason == "offline"
        pid = await deleting.fetchval("SELECT pg_backend_pid()")
        gone = asyncio.create_task(boxes.delete_box(deleting, temporal_client, ADMIN, "only"))

        await wait_for(lambda: waits_on_a_lock(conn, pid), what="the deletion waiting for the placement's decision")
        await tx.commit()
        await asyncio.wait_for(gone, 10)
    finally:
        await placing.close()
        await deleting.close()
    assert (await acquire(conn, job)).unschedulable_reason == "group solo has no boxes (box only was deleted)"


async def test_a_grant_that_leaves_a_slot_on_its_own_box_hands_the_wake_up_on(conn):
    """A box of capacity 2 frees up and only the head waiter was woken: its grant leaves the
    second slot free and names the next waiter, so both slots fill at once."""
    await add_box(conn, "duo", capacity=2)
    holder = await add_job(conn, box="duo", lock=True)
    assert (await acquire(conn, holder)).box == "duo"
    first, second = await add_job(conn, box="duo"), await add_job(conn, box="duo")
    for w in (first, second):
        assert (await acquire(conn, w)).wait_reason == "busy"
    await transition(conn, holder, JobState.RUNNING)
    await finish(conn, holder, JobState.COMPLETED)
    got = await acquire(conn, first)
    assert got.box == "duo" and got.wake_job_ids == [second]
