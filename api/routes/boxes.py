"""Boxes: list, inspect, register (admin; mints the node token), tokens, maintenance, queue."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from fastapi import APIRouter, HTTPException, Response, status

from boxrun.api.auth import User, hash_token, mint_token
from boxrun.api.deps import AdminUser, ConnDep, CurrentUser, SettingsDep, TemporalDep
from boxrun.api.to_public import box_public
from boxrun.db import Q
from boxrun.schemas import (
    BigId,
    BoxCreate,
    BoxCreated,
    BoxesPublic,
    BoxPublic,
    BoxQueuePublic,
    MaintenancePublic,
    MaintenanceSet,
    Name,
    WindowCreate,
    WindowPublic,
)
from boxrun.services.wakeups import wake_waiters

router = APIRouter(prefix="/boxes", tags=["boxes"])

NOT_FOUND = {404: {"description": "no such box"}}
REJECTIONS_SHOWN = 50


async def load_box(conn: asyncpg.Connection, user: User, name: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q.get_box, user.org_id, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"box {name} not found")
    return row


@router.get("", response_model=BoxesPublic)
async def list_boxes(conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxesPublic:
    rows = await conn.fetch(Q.list_boxes, user.org_id)
    return BoxesPublic(data=[box_public(r, settings) for r in rows], count=len(rows))


@router.get("/{name}", response_model=BoxPublic, responses=NOT_FOUND)
async def get_box(name: Name, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxPublic:
    return box_public(await load_box(conn, user, name), settings)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BoxCreated,
    responses={409: {"description": "a box with that name exists"}},
)
async def register_box(body: BoxCreate, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    token = mint_token("bxn")
    row = await conn.fetchrow(
        Q.insert_box, user.org_id, body.name, body.groups, body.capabilities, body.capacity, hash_token(token)
    )
    if row is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"box {body.name} already exists; rotate its token instead")
    return BoxCreated(box=box_public(row, settings), node_token=token)


@router.post("/{name}/token", response_model=BoxCreated, responses=NOT_FOUND)
async def rotate_token(name: Name, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    """Mint a new node token for the box; the old one stops working at once."""
    token = mint_token("bxn")
    if await conn.fetchrow(Q.rotate_box_token, user.org_id, name, hash_token(token)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"box {name} not found")
    return BoxCreated(box=box_public(await load_box(conn, user, name), settings), node_token=token)


@router.get("/{name}/queue", response_model=BoxQueuePublic, responses=NOT_FOUND)
async def box_queue(name: Name, conn: ConnDep, user: CurrentUser) -> BoxQueuePublic:
    """The box's current leases and the jobs waiting that it could take, in grant order."""
    box = await load_box(conn, user, name)
    leases = await conn.fetch(Q.box_leases, box["id"])
    waiting = await conn.fetch(Q.box_waiters, box["id"])
    return BoxQueuePublic(
        leases=[{**dict(r), "job_id": str(r["job_id"])} for r in leases],
        waiting=[
            {"job_id": str(r["id"]), **{k: r[k] for k in ("priority", "created_at", "waiting_reason")}} for r in waiting
        ],
    )


@router.get("/{name}/maintenance", response_model=MaintenancePublic, responses=NOT_FOUND)
async def get_maintenance(name: Name, conn: ConnDep, user: CurrentUser) -> MaintenancePublic:
    box = await load_box(conn, user, name)
    windows = await conn.fetch(Q.box_windows, box["id"])
    rejections = await conn.fetch(Q.box_rejections, box["id"], REJECTIONS_SHOWN)
    return MaintenancePublic(
        maintenance=box["in_maintenance"],
        windows=[WindowPublic(**dict(w)) for w in windows],
        rejections=[{**dict(r), "job_id": str(r["job_id"])} for r in rejections],
    )


@router.put("/{name}/maintenance", response_model=MaintenancePublic, responses=NOT_FOUND)
async def set_maintenance(
    name: Name, body: MaintenanceSet, conn: ConnDep, temporal: TemporalDep, user: AdminUser
) -> MaintenancePublic:
    """Manual maintenance. Running jobs are not stopped; only new dispatches are held back."""
    box = await load_box(conn, user, name)
    async with conn.transaction():
        if body.on:
            if not box["in_maintenance"]:
                await conn.fetchrow(
                    Q.insert_window, user.org_id, box["id"], datetime.now(UTC), None, body.reason, user.name
                )
        else:
            await conn.fetch(Q.end_open_windows, box["id"])
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            f"maintenance.{'on' if body.on else 'off'}",
            f"box:{name}",
            {"reason": body.reason},
        )
    if not body.on:
        await wake_waiters(conn, temporal, box["id"], box["capacity"])
    return await get_maintenance(name, conn, user)


@router.post(
    "/{name}/maintenance/windows", status_code=status.HTTP_201_CREATED, response_model=WindowPublic, responses=NOT_FOUND
)
async def add_window(name: Name, body: WindowCreate, conn: ConnDep, user: AdminUser) -> WindowPublic:
    if body.ends_at <= datetime.now(UTC):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "ends_at is in the past")
    box = await load_box(conn, user, name)
    async with conn.transaction():
        row = await conn.fetchrow(
            Q.insert_window, user.org_id, box["id"], body.starts_at, body.ends_at, body.reason, user.name
        )
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "maintenance.window",
            f"box:{name}",
            {"window_id": row["id"], "reason": body.reason},
        )
    return WindowPublic(**dict(row))


@router.delete(
    "/{name}/maintenance/windows/{window_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no such box or window"}},
)
async def delete_window(
    name: Name, window_id: BigId, conn: ConnDep, temporal: TemporalDep, user: AdminUser
) -> Response:
    box = await load_box(conn, user, name)
    if await conn.fetchval(Q.delete_window, box["id"], window_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"box {name} has no window {window_id}")
    await conn.execute(
        Q.audit, user.org_id, user.name, "maintenance.window_deleted", f"box:{name}", {"window_id": window_id}
    )
    await wake_waiters(conn, temporal, box["id"], box["capacity"])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
