"""Who is calling: a user (API token) or a box agent (node token), and how node tokens are made."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    org_id: str
    role: str  # viewer | operator | admin (only admin exists until API tokens arrive)


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
