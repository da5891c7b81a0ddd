"""The audit trail (org admins): who did what, filtered, newest first, a page at a time."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from boxrun.api.deps import AdminUser, ConnDep
from boxrun.api.errors import responses
from boxrun.schemas import NAME_PATTERN, Timestamp
from boxrun.schemas.audit import (
    ACTION_PATTERN,
    ACTOR_PATTERN,
    CURSOR_PATTERN,
    MAX_AUDIT_LIMIT,
    AuditEntryPublic,
    AuditPublic,
)
from boxrun.services.audit import AuditFilter, audit_page

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditPublic, responses=responses(401, 403, 422, e403="org admins only"))
async def list_audit(
    conn: ConnDep,
    user: AdminUser,
    job_id: Annotated[UUID | None, Query(description="rows naming this job (it may be deleted)")] = None,
    actor: Annotated[
        str | None, Query(pattern=ACTOR_PATTERN, description="a user name, `system` or `box:NAME`")
    ] = None,
    action: Annotated[
        str | None,
        Query(pattern=ACTION_PATTERN, max_length=100, description="exact (`job.cancel`) or a prefix (`job.*`)"),
    ] = None,
    box: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    since: Annotated[
        Timestamp | None, Query(description="rows at or after (RFC 3339 with a timezone); not after `until` (422)")
    ] = None,
    until: Annotated[Timestamp | None, Query(description="rows before (RFC 3339 with a timezone)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the page before")] = None,
) -> AuditPublic:
    """The org's audit rows, newest first; every filter is optional and they combine (AND)."""
    filters = AuditFilter(job_id=job_id, actor=actor, action=action, box=box, since=since, until=until)
    page = await audit_page(conn, user, filters, limit=limit, cursor=cursor)
    return AuditPublic(data=[AuditEntryPublic(**row) for row in page.rows], next_cursor=page.next_cursor)
