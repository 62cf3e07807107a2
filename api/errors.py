"""Stripe-style error bodies for every failure, Flask's own 404/405/413 included.

The one place where the domain's refusals (`kernel.errors`) become HTTP statuses:
NotFound 404, Conflict 409, Invalid 422 (`from_domain`).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from api.schemas.base import ErrorBody
from kernel.errors import Conflict, DomainError, Invalid, NotFound

log = logging.getLogger("voucher.errors")

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "idempotency_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "api_error",
}
STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "resource_missing",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        *,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        **extra,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type or STATUS_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        return ErrorBody.dump(self.type, self.code, self.message, self.param, **self.extra)


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, "resource_missing", f"No such {what}: {ident!r}", param)


def invalid(param: str, message: str, code: str = "invalid_field", status: int = 422) -> ApiError:
    return ApiError(status, code, message, param)


DOMAIN_STATUSES: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, Invalid: 422}


def from_domain(exc: DomainError) -> ApiError:
    """The HTTP error for a domain refusal: its status by kind, the same code, message, param."""
    status = next((s for kind, s in DOMAIN_STATUSES.items() if isinstance(exc, kind)), 422)
    return ApiError(status, exc.code, exc.message, exc.param)


def refusal(exc: ApiError | DomainError) -> ApiError:
    """The ApiError a handler of either refusal answers with (the console's pages too)."""
    return from_domain(exc) if isinstance(exc, DomainError) else exc


def _respond(err: ApiError):
    resp = jsonify(err.body())
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    @app.errorhandler(DomainError)
    def _refused(exc: ApiError | DomainError):
        return _respond(refusal(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "Request body too large"
        err = ApiError(status, STATUS_CODES.get(status, "http_error"), message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            err.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return _respond(err)

    @app.errorhandler(OperationalError)
    def _db_down(exc: OperationalError):
        log.error("database unavailable: %s", exc.orig)
        return _respond(
            ApiError(503, "database_unavailable", "The database is unavailable; retry shortly.",
                     headers={"Retry-After": "5"})
        )

    @app.errorhandler(DataError)
    def _unstorable(exc: DataError):
        # A value PostgreSQL cannot hold (a NUL character, a number out of range) that no
        # validator caught: the request is at fault, and its transaction stored nothing.
        log.warning("database refused a value: %s", str(exc.orig).splitlines()[0])
        return _respond(ApiError(400, "unstorable_value",
                                 "The request holds a value the database cannot store (such as a "
                                 "NUL character or an out-of-range number); nothing was stored."))

    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError):
        if exc.connection_invalidated:
            return _db_down(exc)  # type: ignore[arg-type]
        log.exception("database error")
        return _respond(ApiError(500, "database_error", "The database refused the write; nothing was stored.", type="api_error"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _respond(ApiError(500, "internal_error", "Internal error", type="api_error"))
