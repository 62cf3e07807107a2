"""Domain errors: what a service raises when it refuses an operation, free of HTTP.

Each carries a machine `code` (stable, e.g. "claim_decided"), an English `message` and the
`param` at fault (a field path such as "items[1].invoice_no", or None). The HTTP edge maps
them to Stripe-style error bodies in one place (`api.errors`: NotFound 404, Conflict 409,
Invalid 422); the console shows them in the reader's language by `code`; the CLI prints the
message.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal by the domain: code, message and the parameter at fault."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class NotFound(DomainError):
    """The object named does not exist (or is not the caller's to see)."""


class Conflict(DomainError):
    """The operation contradicts the object's state or what was stored before."""


class Invalid(DomainError):
    """The input is well-formed but not acceptable (a rule of the domain refuses it)."""
