"""Bearer-key authentication and role checks for the HTTP API (SPEC §4)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import current_app, g, request

from voucher.errors import ApiError
from voucher.keys import Principal, authenticate
from voucher.ratelimit import limiter_of


def db_session():
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["voucher.db"].session()
    return g.db_session


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "Missing bearer API key",
                           headers={"WWW-Authenticate": "Bearer"})
        limiter = limiter_of(current_app)
        address = request.remote_addr or "-"
        wait = limiter.retry_after(address)
        if wait is not None:
            raise ApiError(429, "too_many_failed_authentications",
                           f"Too many failed authentications from this address; retry in {wait} s",
                           headers={"Retry-After": str(wait)})
        session = db_session()
        principal = authenticate(session, token.strip())
        session.rollback()  # end the read transaction before the handler's own unit of work
        if principal is None:
            limiter.failed(address)
            raise ApiError(401, "unauthenticated", "Invalid or revoked API key",
                           headers={"WWW-Authenticate": "Bearer"})
        g.principal = principal
    return principal


def requires(*roles: str) -> Callable:
    """Admit only these roles; everyone else with a valid key gets 403."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            principal = current_principal()
            if principal.role not in roles:
                raise ApiError(403, "forbidden",
                               f"A {principal.role} key cannot do this")
            return view(*args, **kwargs)

        wrapper.roles = roles  # type: ignore[attr-defined]  # read by the authorisation matrix
        return wrapper

    return decorator


def ensure_subject(principal: Principal, role: str, subject: str, what: str) -> None:
    """Another subject's resource answers 404, never 403, so ids cannot be enumerated."""
    if principal.role == role and principal.subject != subject:
        raise ApiError(404, "resource_missing", f"No such {what}: {subject!r}")
