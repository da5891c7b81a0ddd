"""Bearer-token authentication: user tokens for the API, node tokens for box agents."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from boxrun.constants import DEFAULT_ORG


@dataclass(frozen=True)
class User:
    name: str
    org_id: str
    role: str  # viewer | operator | admin (only admin exists until API tokens arrive)


@dataclass(frozen=True)
class NodeBox:
    id: int
    name: str
    org_id: str


def mint_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_for_token(token: str, *, admin_token: str, admin_name: str) -> User | None:
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return User(name=admin_name, org_id=DEFAULT_ORG, role="admin")
    return None
