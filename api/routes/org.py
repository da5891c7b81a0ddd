"""The caller's organisation: what it keeps (retention, quota) and what it keeps now (usage)."""

from __future__ import annotations

from fastapi import APIRouter

from boxrun.api.deps import AdminUser, ConnDep, CurrentUser, SettingsDep
from boxrun.api.errors import responses
from boxrun.schemas.org import OrgQuota, OrgQuotaPublic, OrgRetention, OrgRetentionPublic, OrgUsage
from boxrun.services import org_policy

router = APIRouter(prefix="/org", tags=["org"])


@router.get("/retention", response_model=OrgRetentionPublic, responses=responses(401))
async def get_retention(conn: ConnDep, user: CurrentUser) -> OrgRetentionPublic:
    """How many days after a job ended its transcript, its artifacts and the job itself are kept
    (null: forever), enforced by the Temporal Schedule `schedule_id` (docs/retention.md)."""
    return await org_policy.get_retention(conn, user)


@router.put("/retention", response_model=OrgRetentionPublic, responses=responses(401, 403, 422, e403="org admins only"))
async def put_retention(body: OrgRetention, conn: ConnDep, user: AdminUser) -> OrgRetentionPublic:
    """Replace the org's retention (org admins; a field left out or null keeps forever). The next
    run of the retention schedule deletes what is past it. Audited as `org.retention`."""
    return await org_policy.put_retention(conn, user, body)


@router.get("/quota", response_model=OrgQuotaPublic, responses=responses(401))
async def get_quota(conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> OrgQuotaPublic:
    """The org's storage quota and per-job transcript cap."""
    return await org_policy.get_quota(conn, user, settings.transcript_cap_bytes)


@router.put("/quota", response_model=OrgQuotaPublic, responses=responses(401, 403, 422, e403="org admins only"))
async def put_quota(body: OrgQuota, conn: ConnDep, settings: SettingsDep, user: AdminUser) -> OrgQuotaPublic:
    """Replace the org's storage quota and transcript cap (org admins; null: no quota / the
    deployment's default cap). A job whose artifacts would take the org past `storage_bytes`
    fails "storage quota exceeded" and uploads nothing. Audited as `org.quota`."""
    return await org_policy.put_quota(conn, user, body, settings.transcript_cap_bytes)


@router.get("/usage", response_model=OrgUsage, responses=responses(401))
async def get_usage(conn: ConnDep, user: CurrentUser) -> OrgUsage:
    """What the org keeps now: object storage (what the quota counts) and transcripts in Postgres."""
    return await org_policy.usage(conn, user)
