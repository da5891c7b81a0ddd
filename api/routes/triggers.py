"""CI triggers: a GitHub or GitLab webhook runs a template (docs/templates.md, "Triggers"). No
bearer token: the request is authenticated by the template's trigger secret. A trigger has no token
to name its org: /api/templates/{name}/trigger finds it by the secret that signed the request,
/api/orgs/{org}/templates/{name}/trigger names it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from boxrun.api.deps import ConnDep, SettingsDep, StorageDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.routes.templates import run_public
from boxrun.schemas.templates import TemplateRunPublic, TriggerPing
from boxrun.services import triggers as service
from boxrun.services.identity import Role, User

router = APIRouter(tags=["templates"])

Hdr = Annotated[str | None, Header()]


async def trigger_headers(
    x_hub_signature_256: Hdr = None,
    x_github_delivery: Hdr = None,
    x_github_event: Hdr = None,
    x_gitlab_token: Hdr = None,
    x_gitlab_event_uuid: Hdr = None,
    x_gitlab_event: Hdr = None,
    idempotency_key: Hdr = None,
) -> service.Headers:
    """The CI headers a trigger reads (absent ones None)."""
    return service.Headers(
        hub_signature=x_hub_signature_256,
        github_delivery=x_github_delivery,
        github_event=x_github_event,
        gitlab_token=x_gitlab_token,
        gitlab_event_uuid=x_gitlab_event_uuid,
        gitlab_event=x_gitlab_event,
        idempotency_key=idempotency_key,
    )


TriggerHeaders = Annotated[service.Headers, Depends(trigger_headers)]


TRIGGER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the CI system's webhook payload (GitHub or GitLab), as JSON",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
TRIGGER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a delivery id seen before: the run it made, nothing new; or GitHub's `ping` event: "
        '`{"ping": true}`, nothing run',
        "model": TemplateRunPublic | TriggerPing,
    },
    **responses(
        401,
        409,
        413,
        422,
        503,
        e401="a bad or missing signature or token, or no such org or template (one answer for all)",
        e409="the same delivery is being run right now",
        e422="no delivery id, a payload of no known shape, or params the template refuses",
    ),
}


@router.post(
    "/templates/{name}/trigger",
    status_code=status.HTTP_201_CREATED,
    response_model=TemplateRunPublic | TriggerPing,
    openapi_extra=TRIGGER_BODY,
    responses=TRIGGER_RESPONSES,
)
async def trigger_template(
    name: str,
    request: Request,
    response: Response,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    headers: TriggerHeaders,
    org: Annotated[str | None, Query(max_length=200)] = None,
) -> TemplateRunPublic | TriggerPing:
    """Run the template for a CI webhook: GitHub's form (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256
    of the body with the trigger secret>`, delivery id `X-GitHub-Delivery`) or GitLab's
    (`X-Gitlab-Token: <trigger secret>`, delivery id `X-Gitlab-Event-UUID` or `Idempotency-Key`).
    The params the template declares among ref, sha, repo, actor and event are taken from the
    payload; the run is owned by `trigger:<name>`. The org is the one whose template of this name
    the signature is good for (`?org=` narrows it to one org)."""
    raw = await request.body()
    made = await service.trigger(conn, temporal, settings, storage, org=org, name=name, raw=raw, headers=headers)
    if made is None:
        response.status_code = status.HTTP_200_OK
        return TriggerPing()
    kind, run_id, created, org_id = made
    if not created:
        response.status_code = status.HTTP_200_OK
    viewer = User(name=service.TRIGGER_OWNER.format(name=name), org_id=org_id, role=Role.OPERATOR)
    return await run_public(conn, settings, viewer, kind, run_id)


@router.post(
    "/orgs/{org}/templates/{name}/trigger",
    status_code=status.HTTP_201_CREATED,
    response_model=TemplateRunPublic | TriggerPing,
    openapi_extra=TRIGGER_BODY,
    responses=TRIGGER_RESPONSES,
)
async def trigger_org_template(
    org: str,
    name: str,
    request: Request,
    response: Response,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    headers: TriggerHeaders,
) -> TemplateRunPublic | TriggerPing:
    """The same trigger with the org in the path (the form to use when several orgs share a template
    name and one wants to be explicit)."""
    return await trigger_template(name, request, response, conn, temporal, settings, storage, headers, org)
