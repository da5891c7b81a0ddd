"""Who is calling: a user (API token) or a box agent (node token), and how tokens are made."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """A user's role in their org; each includes the rights of the ones before it."""

    VIEWER = "viewer"  # reads the org's jobs, logs, artifacts, boxes, pipelines
    OPERATOR = "operator"  # also submits, and cancels/reruns its own jobs
    ADMIN = "admin"  # everything in its org

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class User:
    """The caller of an API request, as its token names it."""

    name: str
    org_id: str
    role: Role
    # Creates orgs and manages users and tokens of every org; for all else an admin of its org.
    platform_admin: bool = False
    # The API token the request came with (None for callers built in tests or by the system).
    token_id: str | None = None
    # The dashboard session a cookie request came with (the hash of its secret), else None.
    session_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class NodeBox:
    """A box agent, as its node token names it."""

    id: int
    name: str
    org_id: str


def mint_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    """Only this hash is stored; a token is shown once, when it is minted."""
    return hashlib.sha256(token.encode()).hexdigest()
