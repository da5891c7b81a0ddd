"""Templates (presets): put a version, read them, rotate the trigger secret, and run one with
params through the job and pipeline submission services (docs/templates.md)."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

import asyncpg
from pydantic import ValidationError
from temporalio.client import Client

from boxrun.db import Conn, Q
from boxrun.errors import Conflict, Forbidden, InvalidInput, NotFound
from boxrun.pipelines.definition import parse_definition
from boxrun.pipelines.model import ExpandedPipeline
from boxrun.schemas import JobCreate
from boxrun.schemas.templates import Kind, ParamSpec, TemplatePut, TemplateRun
from boxrun.services.identity import User
from boxrun.services.pipelines import submit_pipeline
from boxrun.services.submission import submit_job
from boxrun.settings import Settings
from boxrun.storage import Storage
from boxrun.templating import as_text, check_references, placeholders, render, resolve

MAX_TEMPLATES_PER_ORG = 1000
# The latest versions of an org's templates together (GET /api/templates answers them all at once:
# 1,000 bodies of 1 MiB would be a gigabyte in one answer).
MAX_TEMPLATE_BYTES_PER_ORG = 64 * 1024 * 1024
# Versions are int4 in Postgres.
MAX_VERSION = 2**31 - 1


def new_trigger_secret() -> str:
    return f"tgsec_{secrets.token_urlsafe(32)}"


def _validation_field(exc: ValidationError, prefix: str) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    return (f"{prefix}.{loc}" if loc else prefix), first["msg"]


def validate_job(body: dict[str, Any], *, field: str) -> JobCreate:
    """The job a (rendered) body defines, as POST /api/jobs validates it; InvalidInput under `field`."""
    try:
        return JobCreate.model_validate(body)
    except ValidationError as exc:
        where, msg = _validation_field(exc, field)
        raise InvalidInput(f"{where}: {msg}", field=where) from None


def validate_pipeline(body: dict[str, Any], *, field: str) -> ExpandedPipeline:
    """The pipeline a (rendered) definition defines, as POST /api/pipelines validates its JSON form."""
    try:
        return parse_definition(json.dumps(body).encode(), "application/json")
    except InvalidInput as exc:
        inner = (exc.field or "").removeprefix("body")
        where = f"{field}.{inner.lstrip('.')}" if inner.strip(".") else field
        raise InvalidInput(str(exc), field=where) from None


def check_body(put: TemplatePut) -> None:
    """A PUT's body as far as it can be checked without params: every reference declared, and the
    body rendered with each param's default (or a value of its type) valid as a submission."""
    field = f"body.{put.kind}"
    check_references(put.body, put.params, field=field)
    rendered = render(put.body, {k: as_text(v) for k, v in placeholders(put.params).items()})
    if put.kind == "job":
        validate_job(rendered, field=field)
    else:
        validate_pipeline(rendered, field=field)


async def put_template(
    conn: asyncpg.Connection, settings: Settings, user: User, name: str, put: TemplatePut
) -> tuple[asyncpg.Record, bool]:
    """A new version of template `name` (created at version 1 with a trigger secret the first
    time); returns it and whether the template was created. Operators may put templates they
    created; admins any. Audited (`template.put`)."""
    # parsing and expanding a pipeline of up to 500 steps is CPU work: off the event loop
    await asyncio.to_thread(check_body, put)
    params = {k: v.model_dump(exclude_none=True, exclude_defaults=False) for k, v in put.params.items()}
    async with conn.transaction():
        # puts of one org in turn: the first PUT of a name races no other
        await conn.execute(Q.lock_org, user.org_id)
        row = await conn.fetchrow(Q.template_for_update, user.org_id, name)
        created = row is None
        if row is None:
            if await conn.fetchval(Q.count_templates, user.org_id) >= MAX_TEMPLATES_PER_ORG:
                raise Conflict(f"the org has {MAX_TEMPLATES_PER_ORG} templates already: delete one first")
            sealed = settings.secret_box().seal(new_trigger_secret())
            row = await conn.fetchrow(Q.insert_template, uuid.uuid4(), user.org_id, name, sealed, user.name)
        else:
            if not user.is_admin and row["created_by"] != user.name:
                raise Forbidden(
                    f"template {name!r} was created by {row['created_by']}: only they or an org admin may change it"
                )
            row = await conn.fetchrow(Q.bump_template, row["id"], user.name)
        assert row is not None  # INSERT/UPDATE ... RETURNING
        size = len(json.dumps(put.body).encode())
        if size + await conn.fetchval(Q.template_bytes, user.org_id, row["id"]) > MAX_TEMPLATE_BYTES_PER_ORG:
            raise Conflict(
                f"the org's templates would come to over {MAX_TEMPLATE_BYTES_PER_ORG // (1024 * 1024)} MiB: "
                "delete some, or make them smaller"
            )
        version = row["latest_version"]
        await conn.execute(
            Q.insert_template_version, row["id"], version, put.description, params, put.kind, put.body, user.name
        )
        await conn.execute(
            Q.audit,
            user.org_id,
            user.name,
            "template.put",
            None,
            None,
            {"name": name, "version": version, "kind": put.kind, "created": created},
        )
    return await load_template(conn, user, name, None), created


async def delete_template(conn: asyncpg.Connection, user: User, name: str) -> None:
    """Delete the template with its versions and trigger deliveries (its creator or an org admin),
    audited. Runs made from it keep their frozen specs. Conflict while a schedule uses it."""
    async with conn.transaction():
        row = await conn.fetchrow(Q.template_for_update, user.org_id, name)
        if row is None:
            raise NotFound(f"template {name[:80]!r} not found")
        if not user.is_admin and row["created_by"] != user.name:
            raise Forbidden(
                f"template {name!r} was created by {row['created_by']}: only they or an org admin may delete it"
            )
        schedules = await conn.fetchval(Q.template_schedule_count, row["id"])
        if schedules:
            raise Conflict(f"template {name!r} has {schedules} schedule(s): delete them first")
        await conn.execute(Q.delete_template, row["id"])
        await conn.execute(Q.audit, user.org_id, user.name, "template.delete", None, None, {"name": name})


async def load_template(conn: Conn, user: User, name: str, version: int | None) -> asyncpg.Record:
    """Template `name` of the caller's org at `version` (None: the latest); NotFound otherwise."""
    if version is not None and not 1 <= version <= MAX_VERSION:  # a version no template has (nor int4 holds)
        if await conn.fetchrow(Q.get_template, user.org_id, name, None) is not None:
            raise NotFound(f"template {name!r} has no version {version}")
        raise NotFound(f"template {name[:80]!r} not found")
    row: asyncpg.Record | None = await conn.fetchrow(Q.get_template, user.org_id, name, version)
    if row is None:
        if version is not None and await conn.fetchrow(Q.get_template, user.org_id, name, None) is not None:
            raise NotFound(f"template {name!r} has no version {version}")
        raise NotFound(f"template {name[:80]!r} not found")
    return row


async def list_templates(conn: Conn, user: User) -> list[asyncpg.Record]:
    return list(await conn.fetch(Q.list_templates, user.org_id))


def trigger_secret(settings: Settings, row: asyncpg.Record) -> str:
    return settings.secret_box().open(row["trigger_secret_sealed"])


async def rotate_trigger_secret(conn: asyncpg.Connection, settings: Settings, user: User, name: str) -> str:
    """A new trigger secret for the template (the old one stops working at once), audited."""
    secret = new_trigger_secret()
    async with conn.transaction():
        if await conn.fetchrow(Q.set_trigger_secret, user.org_id, name, settings.secret_box().seal(secret)) is None:
            raise NotFound(f"template {name[:80]!r} not found")
        await conn.execute(
            Q.audit, user.org_id, user.name, "template.rotate_trigger_secret", None, None, {"name": name}
        )
    return secret


def param_specs(row: asyncpg.Record) -> dict[str, ParamSpec]:
    return {k: ParamSpec.model_validate(v) for k, v in row["params"].items()}


async def run_template(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    storage: Storage,
    user: User,
    name: str,
    run: TemplateRun,
    *,
    via: str = "run",
) -> tuple[Kind, str]:
    """Render the template's version with the params and submit it as `user` (the job or pipeline
    frozen with `template: {name, version}`); returns (kind, job or pipeline id). Audited
    (`template.run`, with `via`: run, trigger or schedule). InvalidInput naming the param
    (`body.params.P`) for bad params; the submission's own errors as they are."""
    row = await load_template(conn, user, name, run.version)
    values = resolve(param_specs(row), run.params)
    rendered = render(row["body"], values)
    mark = {"name": name, "version": row["version"]}
    kind: Kind = row["kind"]
    if kind == "job":
        job = validate_job(rendered, field="body.params")
        run_id, _ = await submit_job(conn, temporal, settings, user, job, storage=storage, template=mark)
    else:
        pipeline = await asyncio.to_thread(validate_pipeline, rendered, field="body.params")
        run_id = await submit_pipeline(conn, temporal, settings, storage, user, pipeline, template=mark)
    detail = {"name": name, "version": row["version"], "kind": kind, "id": run_id, "via": via}
    await conn.execute(Q.audit, user.org_id, user.name, "template.run", None, None, detail)
    return kind, run_id


async def run_template_once(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    storage: Storage,
    actor: User,
    template: asyncpg.Record,
    delivery_id: str,
    run: TemplateRun,
    *,
    via: str,
) -> tuple[Kind, str, bool]:
    """run_template at most once per (template, delivery id): returns (kind, run id, created); a
    delivery id seen before returns its run and makes nothing (created False). The delivery is
    claimed before the run is submitted and freed again if the submission fails, so a failed
    delivery may be sent again; Conflict while the same delivery is being submitted."""
    existing = await conn.fetchrow(Q.get_trigger_delivery, template["id"], delivery_id)
    if existing is not None:
        return replayed(existing, delivery_id)
    if await conn.fetchval(Q.claim_trigger_delivery, template["id"], delivery_id) is None:
        existing = await conn.fetchrow(Q.get_trigger_delivery, template["id"], delivery_id)
        if existing is None:
            raise Conflict(f"delivery {delivery_id!r} is being run: send it again later")
        return replayed(existing, delivery_id)
    try:
        kind, run_id = await run_template(conn, temporal, settings, storage, actor, template["name"], run, via=via)
    except BaseException:
        await conn.execute(Q.drop_trigger_delivery, template["id"], delivery_id)
        raise
    await conn.execute(Q.record_trigger_delivery, template["id"], delivery_id, kind, run_id)
    return kind, run_id, True


def replayed(existing: asyncpg.Record, delivery_id: str) -> tuple[Kind, str, bool]:
    if existing["run_id"] is None:
        raise Conflict(f"delivery {delivery_id!r} is being run: send it again later")
    return existing["kind"], str(existing["run_id"]), False
