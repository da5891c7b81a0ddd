"""The package's root exception and the domain errors raised from it.

Services, placement and the state machine raise these; `boxrun.api.errors` maps each class to one
HTTP status and the documented error body, and the client (`boxrun.client`) raises the same
classes from an API answer, so a caller sees one hierarchy on both sides of the wire.
"""

from __future__ import annotations


class BoxrunError(Exception):
    """Root of every error boxrun raises on purpose. `reason` is the human sentence."""

    code = "error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(BoxrunError):
    """No such resource, or one the caller may not know exists (another org's is 'not found' too)."""

    code = "not_found"


class Conflict(BoxrunError):
    """The request clashes with the resource's current state (already ended, name taken, ...)."""

    code = "conflict"


class InvalidTransition(Conflict):
    """A guarded transition matched no row: the job is not in a state it may leave that way."""

    code = "invalid_transition"


class Gone(BoxrunError):
    """The resource existed and was deleted on purpose (a job's outputs, by a person or by the
    org's retention); `reason` says who or what deleted it and when."""

    code = "gone"


class Unauthorized(BoxrunError):
    """No credentials, or credentials that name nobody (unknown, revoked, expired)."""

    code = "unauthorized"


class Forbidden(BoxrunError):
    """Known caller, action not allowed to it."""

    code = "forbidden"


class InvalidInput(BoxrunError):
    """Input the domain refuses (beyond what the schema states); `field` names the culprit."""

    code = "invalid_input"

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field


class TooLarge(BoxrunError):
    """A body or a collection over a configured bound."""

    code = "too_large"


class Unavailable(BoxrunError):
    """A dependency (Postgres, Temporal, object storage) cannot answer now; nothing was written."""

    code = "unavailable"

    def __init__(self, reason: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


# The name SDK users expect for a 422 (issue: typed errors NotFound, Forbidden, ... ValidationError).
ValidationError = InvalidInput
