"""Templates (presets): put a version, list, get, rotate the trigger secret, and run one with params
(docs/templates.md). Reads: every role; put and run: operators and admins (an operator changes only
the templates it created); the trigger secret: org admins."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path, Query, Response, status

from boxrun.api.deps import AdminUser, ConnDep, CurrentUser, Operator, SettingsDep, StorageDep, TemporalDep
from boxrun.api.errors import responses
from boxrun.api.to_public import job_public, pipeline_public
from boxrun.schemas import NAME_PATTERN
from boxrun.schemas.templates import (
    Kind,
    TemplatePublic,
    TemplatePut,
    TemplateRun,
    TemplateRunPublic,
    TemplatesPublic,
    TriggerSecretPublic,
)
from boxrun.services import templates as service
from boxrun.services.identity import User
from boxrun.services.jobs import load_job
from boxrun.services.pipelines import pipeline_view
from boxrun.settings import Settings

router = APIRouter(prefix="/templates", tags=["templates"])

TEMPLATE_404 = "no such template (or version)"
TemplateName = Annotated[str, Path(pattern=NAME_PATTERN, description="the template's name")]


def template_public(row: asyncpg.Record, settings: Settings, user: User) -> TemplatePublic:
    kind = row["kind"]
    return TemplatePublic(
        name=row["name"],
        version=row["version"],
        latest_version=row["latest_version"],
        description=row["description"],
        kind=kind,
        params=service.param_specs(row),
        job=row["body"] if kind == "job" else None,
        pipeline=row["body"] if kind == "pipeline" else None,
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
        version_created_by=row["version_created_by"],
        version_created_at=row["version_created_at"],
        trigger_secret=service.trigger_secret(settings, row) if user.is_admin else None,
    )


async def run_public(
    conn: asyncpg.Connection, settings: Settings, user: User, kind: Kind, run_id: str
) -> TemplateRunPublic:
    """What a run made, as GET /api/jobs/{id} or GET /api/pipelines/{id} shows it."""
    if kind == "job":
        return TemplateRunPublic(kind="job", job=job_public(await load_job(conn, user, run_id), settings))
    return TemplateRunPublic(
        kind="pipeline", pipeline=pipeline_public(*await pipeline_view(conn, user, run_id), settings)
    )


@router.put(
    "/{name}",
    response_model=TemplatePublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "a new version of an existing template", "model": TemplatePublic},
        **responses(
            401,
            403,
            409,
            422,
            e403="viewers; an operator changing a template another person created",
            e409="the org has 1000 templates already, or their latest bodies would pass 64 MiB",
            e422="an unknown param referenced, a bad param declaration, or a body that does not validate "
            "as a job (POST /api/jobs) or pipeline (POST /api/pipelines) with the params' defaults",
        ),
    },
)
async def put_template(
    name: TemplateName, body: TemplatePut, response: Response, conn: ConnDep, settings: SettingsDep, user: Operator
) -> TemplatePublic:
    """Create the template (201, version 1, with a trigger secret) or add a version (200). The
    body is checked as a submission would be, rendered with each param's default (or a value of
    its type)."""
    row, created = await service.put_template(conn, settings, user, name, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return template_public(row, settings, user)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(
        401,
        403,
        404,
        409,
        422,
        e403="viewers; an operator deleting a template another person created",
        e404=TEMPLATE_404,
        e409="a schedule uses the template",
    ),
)
async def delete_template(name: TemplateName, conn: ConnDep, user: Operator) -> Response:
    """Delete the template with every version (its creator or an org admin); runs made from it keep
    their frozen specs."""
    await service.delete_template(conn, user, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model=TemplatesPublic, responses=responses(401))
async def list_templates(conn: ConnDep, settings: SettingsDep, user: CurrentUser) -> TemplatesPublic:
    """Your org's templates at their latest version, by name."""
    return TemplatesPublic(data=[template_public(r, settings, user) for r in await service.list_templates(conn, user)])


@router.get("/{name}", response_model=TemplatePublic, responses=responses(401, 404, 422, e404=TEMPLATE_404))
async def get_template(
    name: TemplateName,
    conn: ConnDep,
    settings: SettingsDep,
    user: CurrentUser,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> TemplatePublic:
    """The template at its latest version (or `?version=N`); org admins also see `trigger_secret`."""
    return template_public(await service.load_template(conn, user, name, version), settings, user)


@router.post(
    "/{name}/trigger-secret",
    response_model=TriggerSecretPublic,
    responses=responses(401, 403, 404, 422, e404=TEMPLATE_404),
)
async def rotate_trigger_secret(
    name: TemplateName, conn: ConnDep, settings: SettingsDep, user: AdminUser
) -> TriggerSecretPublic:
    """A new trigger secret (org admins); the old one is refused from now on."""
    return TriggerSecretPublic(trigger_secret=await service.rotate_trigger_secret(conn, settings, user, name))


@router.post(
    "/{name}/run",
    status_code=status.HTTP_201_CREATED,
    response_model=TemplateRunPublic,
    responses=responses(
        401,
        403,
        404,
        422,
        503,
        e404=TEMPLATE_404,
        e422="a bad param (unknown, missing, wrong type, not a choice, NUL, too long): `errors[0].field` is "
        "body.params.NAME; or the rendered job or pipeline refused as a submission would be",
    ),
)
async def run_template(
    name: TemplateName,
    body: TemplateRun,
    conn: ConnDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: Operator,
) -> TemplateRunPublic:
    """Render the template (its latest version, or `version`) with `params` and submit it as you:
    `kind` says whether a job or a pipeline was made; its spec keeps `template: {name, version}`."""
    kind, run_id = await service.run_template(conn, temporal, settings, storage, user, name, body)
    return await run_public(conn, settings, user, kind, run_id)
