"""Orgs, users and API tokens in-process on the real parts: every route, the role each needs,
another org's names and ids (404), bad input (422, never 500), the last-admin rule, revocation and
expiry, last_used_at, and the audit rows each change writes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.helpers import assert_error
from tests.conftest import wait_for

MakeUser = Callable[..., Awaitable[httpx.AsyncClient]]
TOKEN_KEYS = {"id", "user", "label", "created_at", "expires_at", "last_used_at", "revoked"}


@pytest.fixture
def make_user(api: httpx.AsyncClient, as_token: Callable[[str], httpx.AsyncClient]) -> MakeUser:
    """Create a user through the API (as the bootstrap platform admin) and a client with a fresh
    token of theirs."""

    async def make(name: str, role: str, org: str | None = None) -> httpx.AsyncClient:
        body = {"name": name, "role": role, **({"org": org} if org else {})}
        resp = await api.post("/api/users", json=body)
        assert resp.status_code == 201, resp.text
        minted = await api.post(f"/api/users/{name}/tokens", json={"label": "test"})
        assert minted.status_code == 201, minted.text
        return as_token(minted.json()["token"])

    return make


async def _org(api: httpx.AsyncClient, org_id: str = "lab") -> None:
    resp = await api.post("/api/orgs", json={"id": org_id, "name": f"The {org_id}"})
    assert resp.status_code == 201, resp.text


async def _audit(db: asyncpg.Connection, action: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT org_id, actor, detail FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [dict(r) for r in rows]


# ---------------------------------------------------------------- me


async def test_me_names_the_bootstrap_platform_admin(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/me")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "name": "admin",
        "org": "default",
        "role": "admin",
        "platform_admin": True,
        "token_id": "tok_bootstrap",
    }


async def test_me_of_a_minted_token(make_user: MakeUser) -> None:
    vic = await make_user("vic", "viewer")
    body = (await vic.get("/api/me")).json()
    assert body["name"] == "vic" and body["org"] == "default" and body["role"] == "viewer"
    assert body["platform_admin"] is False and re.fullmatch(r"tok_[0-9a-f]{12}", body["token_id"])


# ---------------------------------------------------------------- orgs


async def test_a_platform_admin_creates_and_lists_orgs(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    resp = await api.post("/api/orgs", json={"id": "lab-2", "name": "Second lab"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"id", "name", "created_at"} and (body["id"], body["name"]) == ("lab-2", "Second lab")
    listed = (await api.get("/api/orgs")).json()["data"]
    assert [o["id"] for o in listed] == ["default", "lab-2"]
    assert_error(
        await api.post("/api/orgs", json={"id": "lab-2", "name": "again"}), 409, "conflict", detail="already exists"
    )
    assert await _audit(db, "org.create") == [
        {"org_id": "lab-2", "actor": "admin", "detail": {"id": "lab-2", "name": "Second lab"}}
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "Lab", "name": "x"},
        {"id": "1lab", "name": "x"},
        {"id": "lab_2", "name": "x"},
        {"id": "l" * 64, "name": "x"},
        {"id": "la\x00b", "name": "x"},
        {"id": "lab", "name": ""},
        {"id": "lab", "name": "a\x00b"},
        {"id": "lab", "name": "n" * 201},
        {"id": "lab"},
        {"id": 7, "name": "x"},
        {"id": "lab", "name": "x", "extra": 1},
    ],
)
async def test_bad_org_bodies_are_422(api: httpx.AsyncClient, body: dict) -> None:
    assert_error(await api.post("/api/orgs", json=body), 422, "invalid_input")


async def test_only_a_platform_admin_creates_or_lists_orgs(make_user: MakeUser) -> None:
    dana = await make_user("dana", "admin")  # admin of org default, not a platform admin
    assert_error(await dana.post("/api/orgs", json={"id": "x", "name": "x"}), 403, "forbidden", detail="platform")
    assert_error(await dana.get("/api/orgs"), 403, "forbidden", detail="platform")


# ---------------------------------------------------------------- users


async def test_create_list_and_update_users(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    resp = await api.post("/api/users", json={"name": "olga", "role": "operator"})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"name": "olga", "role": "operator", "org": "default"}
    users = (await api.get("/api/users")).json()["data"]
    assert [u["name"] for u in users] == ["admin", "olga"]
    assert set(users[1]) == {"name", "role", "org", "disabled", "created_at"} and users[1]["disabled"] is False

    resp = await api.patch("/api/users/olga", json={"role": "viewer"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["role"] == "viewer" and resp.json()["disabled"] is False
    resp = await api.patch("/api/users/olga", json={"disabled": True})
    assert resp.status_code == 200 and resp.json()["disabled"] is True, resp.text
    same = await api.patch("/api/users/olga", json={"disabled": True})  # nothing changes, nothing audited
    assert same.status_code == 200 and same.json()["disabled"] is True

    assert await _audit(db, "user.create") == [
        {"org_id": "default", "actor": "admin", "detail": {"name": "olga", "role": "operator"}}
    ]
    assert [r["detail"] for r in await _audit(db, "user.update")] == [
        {"name": "olga", "role": {"from": "operator", "to": "viewer"}},
        {"name": "olga", "disabled": {"from": False, "to": True}},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bob", "role": "viewer"},
        {"name": "1bob", "role": "viewer"},
        {"name": "me", "role": "viewer"},
        {"name": "system", "role": "viewer"},
        {"name": "b" * 64, "role": "viewer"},
        {"name": "b\x00b", "role": "viewer"},
        {"name": "", "role": "viewer"},
        {"name": "bob", "role": "god"},
        {"name": "bob", "role": "Admin"},
        {"name": "bob", "role": None},
        {"name": "bob"},
        {"name": "bob", "role": "viewer", "org": "Not An Org"},
        {"name": "bob", "role": "viewer", "org": "de\x00fault"},
        {"name": "bob", "role": "viewer", "platform_admin": True},
    ],
)
async def test_bad_user_bodies_are_422(api: httpx.AsyncClient, body: dict) -> None:
    assert_error(await api.post("/api/users", json=body), 422, "invalid_input")


async def test_user_names_are_unique_across_orgs(api: httpx.AsyncClient) -> None:
    await _org(api)
    assert (await api.post("/api/users", json={"name": "sam", "role": "viewer"})).status_code == 201
    dup = await api.post("/api/users", json={"name": "sam", "role": "admin", "org": "lab"})
    assert_error(dup, 409, "conflict", detail="taken")
    assert_error(await api.post("/api/users", json={"name": "admin", "role": "viewer"}), 409, "conflict")


async def test_users_of_another_org(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    await _org(api)
    lab_admin = await make_user("lara", "admin", org="lab")
    await make_user("olga", "operator")  # org default
    # a platform admin names any org; an unknown one is 404
    assert_error(await api.post("/api/users", json={"name": "x", "role": "viewer", "org": "nope"}), 404, "not_found")
    assert [u["name"] for u in (await api.get("/api/users", params={"org": "lab"})).json()["data"]] == ["lara"]
    assert_error(await api.get("/api/users", params={"org": "nope"}), 404, "not_found")
    assert_error(await api.get("/api/users", params={"org": "NOPE"}), 422, "invalid_input")
    # an org admin sees and manages its org only: another org is 404, like an unknown one
    assert [u["name"] for u in (await lab_admin.get("/api/users")).json()["data"]] == ["lara"]
    assert (await lab_admin.get("/api/users", params={"org": "lab"})).status_code == 200
    assert_error(await lab_admin.get("/api/users", params={"org": "default"}), 404, "not_found", detail="org")
    made = await lab_admin.post("/api/users", json={"name": "x", "role": "viewer", "org": "default"})
    assert_error(made, 404, "not_found", detail="org")
    assert_error(await lab_admin.patch("/api/users/olga", json={"role": "admin"}), 404, "not_found", detail="user")
    assert_error(await lab_admin.patch("/api/users/admin", json={"disabled": True}), 404, "not_found")
    assert_error(await lab_admin.post("/api/users/olga/tokens", json={}), 404, "not_found", detail="user")
    made = await lab_admin.post("/api/users", json={"name": "lee", "role": "operator"})
    assert made.status_code == 201 and made.json()["org"] == "lab", made.text


async def test_viewers_and_operators_cannot_manage_users(make_user: MakeUser) -> None:
    for name, role in (("vic", "viewer"), ("olga", "operator")):
        client = await make_user(name, role)
        assert_error(
            await client.post("/api/users", json={"name": "z", "role": "viewer"}), 403, "forbidden", detail="admin"
        )
        assert_error(await client.patch("/api/users/admin", json={"role": "viewer"}), 403, "forbidden")
        assert (await client.get("/api/users")).status_code == 200  # any role reads its org's users


@pytest.mark.parametrize(
    "body", [{}, {"role": "god"}, {"disabled": "yes"}, {"disabled": 1}, {"role": None, "disabled": None}, {"x": 1}]
)
async def test_bad_user_updates_are_422(api: httpx.AsyncClient, make_user: MakeUser, body: dict) -> None:
    await make_user("olga", "operator")
    assert_error(await api.patch("/api/users/olga", json=body), 422, "invalid_input")


@pytest.mark.parametrize("name", ["nobody", "No%00body", "x" * 300])
async def test_unknown_users_are_404(api: httpx.AsyncClient, name: str) -> None:
    assert_error(await api.patch(f"/api/users/{name}", json={"role": "viewer"}), 404, "not_found")
    assert_error(await api.post(f"/api/users/{name}/tokens", json={}), 404, "not_found")


async def test_the_last_enabled_admin_of_an_org_stays(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    await _org(api)
    lara = await make_user("lara", "admin", org="lab")
    for body in ({"role": "operator"}, {"disabled": True}):
        assert_error(await lara.patch("/api/users/lara", json=body), 409, "conflict", detail="last enabled admin")
        assert_error(await api.patch("/api/users/lara", json=body), 409, "conflict", detail="last enabled admin")
    # a second admin, disabled, does not count
    await make_user("lou", "admin", org="lab")
    assert (await lara.patch("/api/users/lou", json={"disabled": True})).status_code == 200
    assert_error(await lara.patch("/api/users/lara", json={"role": "viewer"}), 409, "conflict")
    assert (await lara.patch("/api/users/lou", json={"disabled": False})).status_code == 200
    resp = await lara.patch("/api/users/lara", json={"role": "viewer"})
    assert resp.status_code == 200 and resp.json()["role"] == "viewer", resp.text


async def test_an_org_admin_cannot_act_on_a_platform_admin(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    dana = await make_user("dana", "admin")  # admin of default, like the bootstrap user
    assert_error(await dana.patch("/api/users/admin", json={"disabled": True}), 403, "forbidden", detail="platform")
    assert_error(await dana.post("/api/users/admin/tokens", json={}), 403, "forbidden", detail="platform")
    assert_error(await dana.delete("/api/tokens/tok_bootstrap"), 403, "forbidden", detail="platform")
    # but may manage the other users of its org
    await make_user("vic", "viewer")
    assert (await dana.patch("/api/users/vic", json={"role": "operator"})).status_code == 200
    assert (await dana.post("/api/users/vic/tokens", json={})).status_code == 201


async def test_a_disabled_user_is_refused_and_can_be_enabled_again(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    olga = await make_user("olga", "operator")
    assert (await olga.get("/api/me")).status_code == 200
    assert (await api.patch("/api/users/olga", json={"disabled": True})).status_code == 200
    assert_error(await olga.get("/api/me"), 401, "unauthorized", detail="user olga is disabled")
    assert_error(await api.post("/api/users/olga/tokens", json={}), 409, "conflict", detail="disabled")
    assert (await api.patch("/api/users/olga", json={"disabled": False})).status_code == 200
    assert (await olga.get("/api/me")).status_code == 200


# ---------------------------------------------------------------- tokens


async def test_mint_use_list_and_revoke_own_tokens(
    make_user: MakeUser, as_token: Callable[[str], httpx.AsyncClient], db: asyncpg.Connection
) -> None:
    vic = await make_user("vic", "viewer")
    resp = await vic.post("/api/users/vic/tokens", json={"label": "laptop", "expires_in_s": 3600})
    assert resp.status_code == 201, resp.text
    minted = resp.json()
    assert set(minted) == {"id", "token", "expires_at"} and minted["token"].startswith("brt_")
    assert re.fullmatch(r"tok_[0-9a-f]{12}", minted["id"]) and minted["expires_at"] is not None
    laptop = as_token(minted["token"])
    assert (await laptop.get("/api/me")).json()["token_id"] == minted["id"]

    tokens = (await vic.get("/api/tokens")).json()["data"]
    assert all(set(t) == TOKEN_KEYS for t in tokens), tokens  # never the secret or its hash
    assert [t["label"] for t in tokens] == ["laptop", "test"]  # newest first
    assert tokens[0]["last_used_at"] is not None and tokens[0]["revoked"] is False
    assert minted["token"] not in str(tokens)

    assert (await vic.delete(f"/api/tokens/{minted['id']}")).status_code == 204
    assert_error(await laptop.get("/api/me"), 401, "unauthorized", detail="token revoked")
    assert (await vic.delete(f"/api/tokens/{minted['id']}")).status_code == 204  # again: still 204
    assert [t["revoked"] for t in (await vic.get("/api/tokens")).json()["data"]] == [True, False]

    created = [r for r in await _audit(db, "token.create") if r["detail"]["label"] == "laptop"]
    assert created == [
        {
            "org_id": "default",
            "actor": "vic",
            "detail": {
                "id": minted["id"],
                "user": "vic",
                "label": "laptop",
                "expires_at": created[0]["detail"]["expires_at"],
            },
        }
    ]
    assert created[0]["detail"]["expires_at"] is not None
    revoked = await _audit(db, "token.revoke")
    assert revoked == [
        {"org_id": "default", "actor": "vic", "detail": {"id": minted["id"], "user": "vic", "label": "laptop"}}
    ]


async def test_last_used_at_is_written_at_most_once_a_minute(make_user: MakeUser, db: asyncpg.Connection) -> None:
    vic = await make_user("vic", "viewer")
    token_id = (await vic.get("/api/me")).json()["token_id"]
    first = await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id)
    assert first is not None
    await vic.get("/api/me")
    assert await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id) == first
    await db.execute("UPDATE api_tokens SET last_used_at = now() - interval '2 minutes' WHERE id = $1", token_id)
    await vic.get("/api/me")
    later = await db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1", token_id)
    assert later > first


async def test_a_token_expires(
    api: httpx.AsyncClient, make_user: MakeUser, as_token: Callable[[str], httpx.AsyncClient]
) -> None:
    await make_user("vic", "viewer")
    resp = await api.post("/api/users/vic/tokens", json={"expires_in_s": 1})
    assert resp.status_code == 201, resp.text
    short = as_token(resp.json()["token"])

    async def expired() -> bool:
        return (await short.get("/api/me")).status_code == 401

    await wait_for(expired, timeout=10, interval=0.2, what="the 1 s token to expire")
    assert_error(await short.get("/api/me"), 401, "unauthorized", detail="token expired")


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in_s": 0},
        {"expires_in_s": -5},
        {"expires_in_s": 10**12},
        {"expires_in_s": 2**70},
        {"expires_in_s": "60"},
        {"expires_in_s": 1.5},
        {"expires_in_s": True},
        {"label": "a\x00b"},
        {"label": "l" * 201},
        {"label": 5},
        {"token": "brt_mine"},
    ],
)
async def test_bad_token_bodies_are_422(api: httpx.AsyncClient, body: dict) -> None:
    assert_error(await api.post("/api/users/admin/tokens", json=body), 422, "invalid_input")


async def test_who_may_mint_and_revoke_whose_tokens(
    api: httpx.AsyncClient, make_user: MakeUser, as_token: Callable[[str], httpx.AsyncClient]
) -> None:
    await _org(api)
    vic = await make_user("vic", "viewer")
    olga = await make_user("olga", "operator")
    dana = await make_user("dana", "admin")
    lara = await make_user("lara", "admin", org="lab")
    olga_token = (await olga.get("/api/me")).json()["token_id"]
    lara_token = (await lara.get("/api/me")).json()["token_id"]

    # minting for someone else: an admin of their org, or a platform admin
    assert_error(await vic.post("/api/users/olga/tokens", json={}), 403, "forbidden", detail="only for yourself")
    assert (await dana.post("/api/users/olga/tokens", json={})).status_code == 201
    assert (await api.post("/api/users/lara/tokens", json={})).status_code == 201  # another org: platform admin
    assert_error(await dana.post("/api/users/lara/tokens", json={}), 404, "not_found")

    # listing: one's own; an admin the org's; another org is 404 but to a platform admin
    assert {t["user"] for t in (await vic.get("/api/tokens")).json()["data"]} == {"vic"}
    assert {t["user"] for t in (await dana.get("/api/tokens")).json()["data"]} == {"admin", "vic", "olga", "dana"}
    assert {t["user"] for t in (await lara.get("/api/tokens")).json()["data"]} == {"lara"}
    assert_error(await dana.get("/api/tokens", params={"org": "lab"}), 404, "not_found")
    assert {t["user"] for t in (await api.get("/api/tokens", params={"org": "lab"})).json()["data"]} == {"lara"}
    assert_error(await api.get("/api/tokens", params={"org": "l\x00b"}), 422, "invalid_input")

    # revoking: one's own; an admin any of its org's; another org's is 404 (but to a platform admin)
    assert_error(await vic.delete(f"/api/tokens/{olga_token}"), 403, "forbidden", detail="your own")
    assert_error(await dana.delete(f"/api/tokens/{lara_token}"), 404, "not_found")
    assert_error(await lara.delete(f"/api/tokens/{olga_token}"), 404, "not_found")
    assert (await dana.delete(f"/api/tokens/{olga_token}")).status_code == 204
    assert_error(await olga.get("/api/me"), 401, "unauthorized", detail="token revoked")
    assert (await api.delete(f"/api/tokens/{lara_token}")).status_code == 204
    assert_error(await lara.get("/api/me"), 401, "unauthorized", detail="token revoked")


@pytest.mark.parametrize("token_id", ["tok_000000000000", "tok_nope%00", "nope", "x" * 500, "tok_" + "a" * 100])
async def test_unknown_token_ids_are_404(api: httpx.AsyncClient, token_id: str) -> None:
    assert_error(await api.delete(f"/api/tokens/{token_id}"), 404, "not_found")
