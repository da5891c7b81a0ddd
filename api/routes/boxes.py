"""Boxes: list, inspect, register (admin; mints the node token) and rotate tokens."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from boxrun.api.auth import hash_token, mint_token
from boxrun.api.deps import AdminUser, ConnDep, CurrentUser, SettingsDep
from boxrun.api.views import box_public
from boxrun.db import Q
from boxrun.schemas import BoxCreate, BoxCreated, BoxesPublic, BoxPublic

router = APIRouter(prefix="/boxes", tags=["boxes"])


@router.get("", response_model=BoxesPublic)
async def list_boxes(conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxesPublic:
    rows = await conn.fetch(Q.list_boxes, user.org_id)
    return BoxesPublic(data=[box_public(r, settings) for r in rows], count=len(rows))


@router.get("/{name}", response_model=BoxPublic, responses={404: {"description": "no such box"}})
async def get_box(name: str, conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> BoxPublic:
    row = await conn.fetchrow(Q.get_box, user.org_id, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"box {name} not found")
    return box_public(row, settings)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BoxCreated,
             responses={409: {"description": "a box with that name exists"}})
async def register_box(body: BoxCreate, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    token = mint_token("bxn")
    row = await conn.fetchrow(Q.insert_box, user.org_id, body.name, body.groups, body.capabilities, body.capacity,
                              hash_token(token))
    if row is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"box {body.name} already exists; rotate its token instead")
    return BoxCreated(box=box_public(row, settings), node_token=token)


@router.post("/{name}/token", response_model=BoxCreated, responses={404: {"description": "no such box"}})
async def rotate_token(name: str, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> BoxCreated:
    """Mint a new node token for the box; the old one stops working at once."""
    token = mint_token("bxn")
    row = await conn.fetchrow(Q.rotate_box_token, user.org_id, name, hash_token(token))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"box {name} not found")
    return BoxCreated(box=box_public(row, settings), node_token=token)
