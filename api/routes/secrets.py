"""Organisation secrets (docs/secrets.md): names and times out, values in only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from boxrun.api.deps import AdminUser, ConnDep, Operator, SettingsDep
from boxrun.api.errors import responses
from boxrun.schemas.secrets import SECRET_NAME_PATTERN, SecretPublic, SecretPut, SecretsPublic
from boxrun.services import secrets

router = APIRouter(prefix="/secrets", tags=["secrets"])

SecretName = Annotated[str, Path(pattern=SECRET_NAME_PATTERN, description="upper case, digits and _, 1..128")]


@router.get("", response_model=SecretsPublic, responses=responses(401, 403, e403="operators and admins only"))
async def list_secrets(conn: ConnDep, user: Operator) -> SecretsPublic:
    """Your org's secrets by name, with when and by whom each was last put: never a value."""
    rows = await secrets.list_secrets(conn, user)
    return SecretsPublic(
        data=[
            SecretPublic(
                name=r["name"], created_at=r["created_at"], updated_at=r["updated_at"], updated_by=r["updated_by"]
            )
            for r in rows
        ]
    )


@router.put(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 413, 422, e403="org admins only"),
)
async def put_secret(
    name: SecretName, body: SecretPut, conn: ConnDep, settings: SettingsDep, user: AdminUser
) -> Response:
    """Create or replace a secret of your org. The value is encrypted at rest and never shown
    again; a job's env uses it as `${{ secrets.NAME }}`. Audited as `secret.put` (the name only)."""
    await secrets.put_secret(conn, settings.secret_box(), user, name, body.value)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422, e403="org admins only", e404="no such secret in your org"),
)
async def delete_secret(name: SecretName, conn: ConnDep, user: AdminUser) -> Response:
    """Delete a secret of your org. A job that refers to it and has not started yet fails at its
    claim ("secret NAME no longer exists"). Audited as `secret.delete`."""
    await secrets.delete_secret(conn, user, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
