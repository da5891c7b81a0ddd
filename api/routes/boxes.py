"""Boxes: list, inspect, register (admin; mints the node token), tokens, maintenance, queue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from boxrun.api.deps import AdminUser, ConnDep, CurrentUser, SettingsDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.to_public import box_public
from boxrun.db import Q
from boxrun.schemas import (
    MAX_SEQ,
    BoxCreate,
    BoxCreated,
    BoxesPublic,
    BoxPublic,
    BoxQueuePublic,
    BoxUpdate,
    MaintenancePublic,
    MaintenanceSet,
    WindowCreate,
    WindowPublic,
)
from boxrun.services import boxes

router = APIRouter(prefix="/boxes", tags=["boxes"])

BOX_404 = "no such box"
WindowId = Annotated[int, Path(ge=1, le=MAX_SEQ)]


@router.get("", response_model=BoxesPublic, responses=responses(401))
async def list_boxes(conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxesPublic:
    """The org's boxes the caller may see: all of them for an org admin; for a viewer or an
    operator, those whose allowed_users is null or names them."""
    rows = await conn.fetch(Q.list_boxes, user.org_id, boxes.box_viewer(user))
    return BoxesPublic(data=[box_public(r, settings) for r in rows], count=len(rows))


@router.get("/{name}", response_model=BoxPublic, responses=responses(401, 404, 422, e404=BOX_404))
async def get_box(name: str, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxPublic:
    return box_public(await boxes.load_box(conn, user, name), settings)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BoxCreated,
    responses=responses(401, 403, 409, 422, e409="a box with that name exists"),
)
async def register_box(body: BoxCreate, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    row, token = await boxes.register_box(conn, user, body)
    return BoxCreated(box=box_public(row, settings), node_token=token)


@router.patch(
    "/{name}",
    response_model=BoxPublic,
    responses=responses(
        401, 403, 404, 422, e404=BOX_404, e422="invalid body, or allowed_users names someone not a user of the org"
    ),
)
async def update_box(
    name: str, body: BoxUpdate, conn: ConnDep, temporal: TemporalDep, settings: SettingsDep, user: AdminUser
) -> BoxPublic:
    """Replace the box's groups, capabilities or capacity (a field absent or null keeps its value),
    or who may use it: `allowed_users` (a list of users of the org; null opens it to the whole
    org again). To a viewer or operator left out, the box does not exist (not listed, 404, a
    submission naming it is refused as for an unknown box) and group placement passes it over
    for their jobs; org admins always see and use it. Running jobs are not stopped; waiting jobs
    are woken to try the box again."""
    return box_public(await boxes.update_box(conn, temporal, user, name, body), settings)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(
        401, 403, 404, 409, 422, e404=BOX_404, e409="a job holds a lease on the box, or a pipeline holds it (keep_box)"
    ),
)
async def delete_box(name: str, conn: ConnDep, temporal: TemporalDep, user: AdminUser) -> Response:
    """Delete the box and its node token. Refused while a job holds a lease on it or a pipeline
    holds it between steps (keep_box). Jobs that ran
    on it keep showing its name; jobs waiting for it end `unschedulable` ("box NAME was deleted")
    unless their group has another box for them."""
    await boxes.delete_box(conn, temporal, user, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/token", response_model=BoxCreated, responses=responses(401, 403, 404, 422, e404=BOX_404))
async def rotate_token(name: str, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    """Mint a new node token for the box; the old one stops working at once."""
    row, token = await boxes.rotate_token(conn, user, name)
    return BoxCreated(box=box_public(row, settings), node_token=token)


@router.get("/{name}/queue", response_model=BoxQueuePublic, responses=responses(401, 404, 422, e404=BOX_404))
async def box_queue(name: str, conn: ConnDep, user: CurrentUser) -> BoxQueuePublic:
    """The box's current leases, the pipelines holding it between steps (keep_box: pipeline, step,
    since), and the jobs waiting that it could take, in grant order."""
    return await boxes.queue_of(conn, user, name)


@router.get("/{name}/maintenance", response_model=MaintenancePublic, responses=responses(401, 404, 422, e404=BOX_404))
async def get_maintenance(name: str, conn: ConnDep, user: CurrentUser) -> MaintenancePublic:
    return await boxes.maintenance_of(conn, user, name)


@router.put(
    "/{name}/maintenance",
    response_model=MaintenancePublic,
    responses=responses(401, 403, 404, 422, e404=BOX_404),
)
async def set_maintenance(
    name: str, body: MaintenanceSet, conn: ConnDep, temporal: TemporalDep, user: AdminUser
) -> MaintenancePublic:
    """Manual maintenance. Running jobs are not stopped; only new dispatches are held back."""
    return await boxes.set_maintenance(conn, temporal, user, name, on=body.on, reason=body.reason)


@router.post(
    "/{name}/maintenance/windows",
    status_code=status.HTTP_201_CREATED,
    response_model=WindowPublic,
    responses=responses(
        401, 403, 404, 422, e404=BOX_404, e422="invalid window: `ends_at` not after `starts_at`, or past"
    ),
)
async def add_window(name: str, body: WindowCreate, conn: ConnDep, user: AdminUser) -> WindowPublic:
    return await boxes.add_window(conn, user, name, starts_at=body.starts_at, ends_at=body.ends_at, reason=body.reason)


@router.delete(
    "/{name}/maintenance/windows/{window_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422, e404="no such box or window"),
)
async def delete_window(
    name: str, window_id: WindowId, conn: ConnDep, temporal: TemporalDep, user: AdminUser
) -> Response:
    await boxes.delete_window(conn, temporal, user, name, window_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
