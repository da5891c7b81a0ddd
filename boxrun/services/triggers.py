"""CI triggers of templates: a GitHub or GitLab webhook, authenticated by the template's trigger
secret, runs the template with params taken from the payload, once per delivery id
(docs/templates.md, "Triggers")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from temporalio.client import Client

from boxrun.db import Q
from boxrun.errors import InvalidInput, Unauthorized
from boxrun.schemas import NAME_PATTERN
from boxrun.schemas.templates import Kind, TemplateRun
from boxrun.services.identity import Role, User
from boxrun.services.templates import param_specs, replayed, run_template_once, trigger_secret
from boxrun.settings import Settings
from boxrun.storage import Storage

# One answer for every refusal of the caller's credentials: an unknown org or template, a missing
# or wrong signature or token. Nothing tells a caller which names exist.
REFUSED = "bad or missing trigger signature (X-Hub-Signature-256 or X-Gitlab-Token)"
# A secret the refusal of an unknown template is computed against (the same work as a known one).
_DUMMY_SECRET = "tgsec_" + "0" * 43
MAX_DELIVERY_ID = 200
# What a trigger's run is owned by (no person): `trigger:<template>`.
TRIGGER_OWNER = "trigger:{name}"


@dataclass(frozen=True)
class Headers:
    hub_signature: str | None  # X-Hub-Signature-256
    github_delivery: str | None  # X-GitHub-Delivery
    github_event: str | None  # X-GitHub-Event
    gitlab_token: str | None  # X-Gitlab-Token
    gitlab_event_uuid: str | None  # X-Gitlab-Event-UUID
    gitlab_event: str | None  # X-Gitlab-Event
    idempotency_key: str | None  # Idempotency-Key


def authenticate(secret: str, raw: bytes, h: Headers) -> str:
    """'github' or 'gitlab' for a request signed (or carrying the token) with `secret`;
    Unauthorized otherwise. Constant-time comparisons."""
    if h.hub_signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), h.hub_signature.strip().encode()):
            return "github"
    elif h.gitlab_token is not None and hmac.compare_digest(secret.encode(), h.gitlab_token.strip().encode()):
        return "gitlab"
    raise Unauthorized(REFUSED)


def delivery_id(form: str, h: Headers) -> str:
    value = h.github_delivery if form == "github" else (h.gitlab_event_uuid or h.idempotency_key)
    if value is None or not value.strip():
        header = "X-GitHub-Delivery" if form == "github" else "X-Gitlab-Event-UUID (or Idempotency-Key)"
        raise InvalidInput(f"a trigger needs a delivery id: send {header}", field="header.delivery")
    value = value.strip()
    if len(value) > MAX_DELIVERY_ID:
        raise InvalidInput(f"a delivery id is at most {MAX_DELIVERY_ID} characters", field="header.delivery")
    # it lands in the audit log (`via`) and in answers: no NUL, no terminal escapes or other controls
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInput("a delivery id holds no control characters", field="header.delivery")
    return value


def _get(payload: Mapping[str, Any], *path: str) -> str | None:
    node: Any = payload
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, str) and node else None


def payload_params(form: str, event: str | None, payload: Any) -> dict[str, str]:
    """The params a payload gives (docs/templates.md has the table): ref, sha, repo, actor, event.
    A payload of no known shape (a push, a tag push, a pull or merge request) is InvalidInput."""
    if not isinstance(payload, Mapping):
        raise InvalidInput("the payload is not a JSON object", field="body")
    out: dict[str, str | None]
    if form == "github":
        pr = payload.get("pull_request")
        if isinstance(pr, Mapping):
            out = {
                "ref": _get(pr, "head", "ref"),
                "sha": _get(pr, "head", "sha"),
                "repo": _get(payload, "repository", "full_name"),
                "actor": _get(payload, "sender", "login"),
            }
        else:
            out = {
                "ref": _get(payload, "ref"),
                "sha": _get(payload, "after"),
                "repo": _get(payload, "repository", "full_name"),
                "actor": _get(payload, "pusher", "name") or _get(payload, "sender", "login"),
            }
    else:
        mr = payload.get("object_attributes")
        if payload.get("object_kind") == "merge_request" and isinstance(mr, Mapping):
            out = {
                "ref": _get(mr, "source_branch"),
                "sha": _get(mr, "last_commit", "id"),
                "repo": _get(payload, "project", "path_with_namespace"),
                "actor": _get(payload, "user", "username"),
            }
        else:
            out = {
                "ref": _get(payload, "ref"),
                "sha": _get(payload, "checkout_sha") or _get(payload, "after"),
                "repo": _get(payload, "project", "path_with_namespace"),
                "actor": _get(payload, "user_username"),
            }
    if out["ref"] is None or out["repo"] is None:
        raise InvalidInput(
            f"a {form} payload of no known shape (a push, tag push, pull or merge request with a ref and a repository)",
            field="body",
        )
    if event:
        out["event"] = event
    return {k: v for k, v in out.items() if v is not None}


# GitHub's first delivery to a new hook, and its "Redeliver"/"Ping" button: authenticated, runs nothing.
PING_EVENT = "ping"
# How many orgs' templates of one name a trigger without an org in its path is checked against
# (each costs an HMAC over the body, for a request anyone may send); past them, name the org.
MAX_CANDIDATES = 50


async def find_template(
    conn: asyncpg.Connection, settings: Settings, org: str | None, name: str, raw: bytes, headers: Headers
) -> tuple[asyncpg.Record, str]:
    """The template the request is signed for, and the form ('github' or 'gitlab'). `org` None:
    every org's template of that name is tried (each secret is random, so at most one matches).
    Unauthorized, with one answer, for an unknown org or template or a bad signature; the same
    work is done for an unknown name as for a known one."""
    # the candidates' secrets only: their bodies (up to 1 MiB each) are read for the one that matched
    rows: list[asyncpg.Record] = []
    if _plausible(org, name):
        rows = list(await conn.fetch(Q.trigger_candidates, name, org, MAX_CANDIDATES))

    def match() -> tuple[asyncpg.Record, str] | None:
        for row in rows:
            try:
                return row, authenticate(trigger_secret(settings, row), raw, headers)
            except Unauthorized:
                continue
        if not rows:
            try:  # the dummy secret matches nothing anyone holds
                authenticate(_DUMMY_SECRET, raw, headers)
            except Unauthorized:
                pass
        return None

    # Up to MAX_CANDIDATES secrets opened and HMACs over a body of up to max_body_bytes, for a
    # request anyone may send: about a millisecond each for a 1 MiB body. Off the event loop, so
    # the other requests of this process go on meanwhile (hashlib lets go of the GIL).
    found = await asyncio.to_thread(match)
    if found is None:
        raise Unauthorized(REFUSED)
    template = await conn.fetchrow(Q.get_template, found[0]["org_id"], name, None)
    if template is None or template["id"] != found[0]["id"]:  # deleted (or made again) meanwhile
        raise Unauthorized(REFUSED)
    return template, found[1]


async def trigger(
    conn: asyncpg.Connection,
    temporal: Client,
    settings: Settings,
    storage: Storage,
    *,
    org: str | None,
    name: str,
    raw: bytes,
    headers: Headers,
) -> tuple[Kind, str, bool, str] | None:
    """Run template `name` (of org `org`, or of the org whose template's secret signed the request)
    for a CI delivery; returns (kind, run id, created, org), or None for GitHub's `ping` (nothing run).
    A delivery id seen before returns its run (created False) and makes nothing. Unauthorized (one
    answer) for an unknown org or template or a bad signature; InvalidInput for a payload of no
    known shape or params the template refuses; Conflict while the same delivery is being run."""
    row, form = await find_template(conn, settings, org, name, raw, headers)
    if form == "github" and (headers.github_event or "").strip() == PING_EVENT:
        return None
    did = delivery_id(form, headers)
    seen = await conn.fetchrow(Q.get_trigger_delivery, row["id"], did)
    if seen is not None:  # a redelivery: its run, whatever the body now holds (it is not read)
        kind, run_id, _ = replayed(seen, did)
        return kind, run_id, False, row["org_id"]
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise InvalidInput("the payload is not JSON (or is nested too deep)", field="body") from None
    event = headers.github_event if form == "github" else headers.gitlab_event
    given = payload_params(form, event, payload)
    declared = param_specs(row)
    params = {k: v for k, v in given.items() if k in declared}
    actor = User(name=TRIGGER_OWNER.format(name=name), org_id=row["org_id"], role=Role.OPERATOR)
    # GitHub signs the body, not X-GitHub-Delivery: a captured request sent again under a fresh
    # delivery id is the same signed body. So the body's hash is the key the run is claimed
    # under, and the delivery id is recorded beside it (the same run for either).
    key = did if form == "gitlab" else "sha256:" + hashlib.sha256(raw).hexdigest()
    kind, run_id, created = await run_template_once(
        conn, temporal, settings, storage, actor, row, key, TemplateRun(params=params), via=f"trigger:{form}:{did}"
    )
    if key != did:
        await conn.execute(Q.alias_trigger_delivery, row["id"], did, kind, uuid.UUID(run_id))
    return kind, run_id, created, row["org_id"]


def _plausible(org: str | None, name: str) -> bool:
    org_ok = org is None or (len(org) <= 200 and "\x00" not in org)
    return org_ok and re.fullmatch(NAME_PATTERN, name) is not None
