"""Bearer-token authentication: user tokens for the API, node tokens for box agents."""

from __future__ import annotations

import hmac

from boxrun.constants import DEFAULT_ORG
from boxrun.services.identity import NodeBox, User, hash_token, mint_token

__all__ = ["NodeBox", "User", "hash_token", "mint_token", "user_for_token"]


def user_for_token(token: str, *, admin_token: str, admin_name: str) -> User | None:
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return User(name=admin_name, org_id=DEFAULT_ORG, role="admin")
    return None
