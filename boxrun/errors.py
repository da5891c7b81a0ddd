"""The package's root exception and the domain errors raised from it."""


class BoxrunError(Exception):
    """Root of every error boxrun raises on purpose."""


class NotFound(BoxrunError):
    pass


class InvalidTransition(BoxrunError):
    """A guarded transition matched no row: the job is not in a state it may leave that way."""
