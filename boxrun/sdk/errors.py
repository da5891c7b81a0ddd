"""The errors the SDK raises: boxrun's one hierarchy (boxrun.errors), each carrying the API's
reason (`reason`; for Gone: who or what deleted it, and when); InvalidInput (alias
ValidationError) names the culprit in `field`."""

from boxrun.errors import (
    BoxrunError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from boxrun.sdk.aio import IntegrityError

__all__ = [
    "BoxrunError",
    "Conflict",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
]
