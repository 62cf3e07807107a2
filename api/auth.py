"""Bearer-key authentication and role checks for the HTTP API (docs/API.md#auth)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from flask import current_app, g, has_request_context, request
from sqlalchemy import Select, select
from sqlalchemy.engine import Row

from api.errors import ApiError, not_found
from api.hotread import hot_reads
from api.http import json_body, query_arg
from api.ratelimit import limiter_of
from kernel.audit import Actor, new_request_id
from kernel.db import where_given
from kernel.keys import Principal, check_key, key_select, parse_key
from kernel.uscc import canonical_uscc


def db_session():
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["voucher.db"].session()
    return g.db_session


@contextmanager
def transaction() -> Iterator[Any]:
    """The request's session inside one transaction: committed at the end, rolled back on error."""
    session = db_session()
    with session.begin():
        yield session


def _bearer_token() -> str:
    """The request's key, once the failure limit admits its address (401 / 429 otherwise)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "Missing bearer API key",
                       headers={"WWW-Authenticate": "Bearer"})
    _too_many_failures(limiter_of(current_app).retry_after(request.remote_addr or "-"))
    return token.strip()


def _too_many_failures(wait: int | None) -> None:
    if wait is not None:
        raise ApiError(429, "rate_limited",
                       f"Too many failed authentications from this address; retry in {wait} s",
                       headers={"Retry-After": str(wait)})


def _admit(principal: Principal | None) -> Principal:
    if principal is None:
        _too_many_failures(limiter_of(current_app).failed(request.remote_addr or "-"))
        raise ApiError(401, "unauthenticated", "Invalid or revoked API key",
                       headers={"WWW-Authenticate": "Bearer"})
    g.principal = principal
    return principal


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is None:
        # One round trip on the hot-read connection (api/hotread.py), outside the request's
        # session: no BEGIN and ROLLBACK around the look-up before the view's own work.
        principal, _row = _authenticate(_bearer_token(), _KEY_SELECT, {})
    return principal


_KEY_SELECT = key_select()


def _check_role(principal: Principal, roles: tuple[str, ...]) -> None:
    if principal.role not in roles:
        raise ApiError(403, "forbidden", f"A {principal.role} key cannot do this")


def _view_roles() -> tuple[str, ...]:
    view = current_app.view_functions.get(request.endpoint or "")
    roles = getattr(view, "roles", None)
    if roles is None:
        raise RuntimeError(f"{request.endpoint} is not a @requires(...) view")
    return roles


def authorised_principal() -> Principal:
    """current_principal() with the view's role check: what @requires does before a view."""
    principal = current_principal()
    _check_role(principal, _view_roles())
    return principal


def authenticate_and_read(statement: Select, **params: Any) -> tuple[Principal, Row]:
    """Authenticate the request's key and run the view's own read in the same statement.

    For hot read paths (a view under `@requires(..., deferred=True)`): `statement` is
    kernel.keys.key_select() with the view's columns and outer joins added, so the key and
    the data arrive in one round trip (api.hotread: no pool pre-ping, no BEGIN, no
    ROLLBACK on PostgreSQL). The key is judged exactly as
    current_principal() judges it (same hash, same constant-time comparison, same failure
    limit and answers), then the view's roles are checked. Returns the principal and the
    row, whose first columns are the key's.
    """
    token = _bearer_token()
    roles = _view_roles()
    principal, row = _authenticate(token, statement, params)
    _check_role(principal, roles)
    return principal, row  # type: ignore[return-value]  # a valid key always has its row


def _authenticate(token: str, statement: Select, params: dict[str, Any]) -> tuple[Principal, Any]:
    """The key judged as kernel.keys.authenticate judges it (same hash, same constant-time
    comparison), read by `statement` (key_select() or a view's extension of it) in one round
    trip; 401 (or 429 past the failure limit) when it is not a valid key."""
    parsed = parse_key(token)
    row = None
    if parsed is not None:
        row = hot_reads(current_app.extensions["voucher.db"]).first(
            statement, {"key_id": parsed[0], **params})
    return _admit(check_key(parsed[0], parsed[1], row) if parsed else None), row


_WITH_BODY = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def requires(*roles: str, deferred: bool = False) -> Callable:
    """Admit only these roles; everyone else with a valid key gets 403.

    deferred=True: the view authenticates itself with authenticate_and_read() (which checks
    these same roles), so the key look-up can share its statement with the view's read.
    """

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not deferred:
                principal = current_principal()
                _check_role(principal, roles)
            if request.method in _WITH_BODY:
                json_body(required=False)  # any body sent is JSON within the limits, read or not
            return view(*args, **kwargs)

        wrapper.roles = roles  # type: ignore[attr-defined]  # read by the authorisation matrix
        wrapper.deferred = deferred  # type: ignore[attr-defined]
        return wrapper

    return decorator


def ensure_subject(principal: Principal, role: str, subject: str, what: str) -> None:
    """Another subject's resource answers 404, never 403, so ids cannot be enumerated."""
    if principal.role == role and principal.subject != subject:
        raise ApiError(404, "resource_missing", f"No such {what}: {subject!r}")


def scoped_filter(principal: Principal, role: str, named: str | None) -> str | None:
    """A list's `role` filter (provider, enterprise): a principal of that role sees its own
    (naming another answers 404, param `role`); the others filter by what they named."""
    if principal.role != role:
        return named
    if named and named != principal.subject:
        raise not_found(role, named, role)
    return principal.subject


# A list's party filters: the query parameter (a role) → the column it filters and its parser.
PARTY_FILTERS = {"provider": ("provider_id", None), "enterprise": ("enterprise_uscc", canonical_uscc)}


def where_parties(model: Any, principal: Principal,
                  roles: tuple[str, ...] = ("provider", "enterprise")) -> Select:
    """The rows of `model` that a list's party query filters (`roles`: provider, enterprise)
    name, each through scoped_filter: a provider or enterprise key sees its own only."""
    named = [query_arg(role, PARTY_FILTERS[role][1]) for role in roles]
    return where_given(select(model), *((getattr(model, PARTY_FILTERS[role][0]),
                                         scoped_filter(principal, role, value))
                                        for role, value in zip(roles, named, strict=True)))


def acting_for(principal: Principal, role: str, named: str | None, field: str, refusal: str) -> str:
    """The subject a write is for: a principal of `role` writes for itself only (naming
    another is a 403 with `refusal`); finance must name it in `field` (422 otherwise)."""
    if principal.role == role:
        if named is not None and named != principal.subject:
            raise ApiError(403, "forbidden", refusal, field)
        return principal.subject
    if not named:
        raise ApiError(422, "missing_field", f"finance must name {field}", field)
    return named


def request_actor() -> Actor | None:
    """Who acts in the request being handled, for the audit trail (None outside a request):
    the authenticated principal, else `anonymous`, under the request's id."""
    if not has_request_context():
        return None
    request_id = g.get("request_id")
    if not request_id:
        request_id = g.request_id = new_request_id()
    principal = g.get("principal")
    if principal is not None:
        return Actor(principal.role, principal.key_id, request_id)
    return Actor("anonymous", None, request_id)
