"""What the API tests share: a registered box with its agent client, and the error body check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Box:
    name: str
    token: str
    agent: httpx.AsyncClient  # authenticated with the box's node token


def assert_error(
    resp: httpx.Response, status: int, code: str, *, detail: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """The status, and a body that is exactly the ErrorBody schema with this code; `detail` must
    appear in its sentence, `field` among the fields of `errors`. Returns the body."""
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"detail", "code", "errors"}, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["errors"], list), body
    if detail is not None:
        assert detail in body["detail"], body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert all(set(e) == {"field", "message"} for e in body["errors"]), body
    return body
