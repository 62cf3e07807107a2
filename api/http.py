"""Request parsing shared by every blueprint (answers are serialised by api.schemas)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar

from flask import g, request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, not_found
from api.schemas.base import error_of
from kernel.db import NoSuchRow
from kernel.nesting import deeper_than
from kernel.periods import parse_period

M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# Arrays and objects nested deeper than this are refused (400 json_too_deep) rather than
# parsed into a RecursionError (a 500). Generous, so that a usage batch (3 levels) with a
# record's metadata too deep still parses and only that record is rejected
# (metering.records.MAX_METADATA_DEPTH); a deeper body is refused whole.
MAX_JSON_DEPTH = 512
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
def whole_number(text: str) -> int:
    """int() of ASCII digits only: int() itself takes '٢٠٢٦' and '２０２６' too."""
    if not _WHOLE_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


_NO_BODY = object()


def json_body(required: bool = True) -> Any:
    """The request's JSON; numbers with a fraction parse as Decimal so nothing is rounded.
    Parsed once per request (api.auth.requires checks every POST's body before the view)."""
    parsed = g.get("json_body", _NO_BODY)
    if parsed is _NO_BODY:
        parsed = g.json_body = _parse_body()
    if parsed is None:
        if required:
            raise ApiError(400, "bad_request", "Request body must be a JSON object")
        return {}
    return parsed


def _parse_body() -> Any:
    """The request body parsed as JSON, None when there is none."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A chunked body (no Content-Length) is read up to the limit and cut there silently:
        # one byte more behind it means the body was too large, not malformed.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "request_too_large", "Request body too large")
    if not raw:
        return None
    too_deep = ApiError(400, "json_too_deep",
                        f"Request body nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    try:
        data = json.loads(raw, parse_float=Decimal)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"Request body is not valid JSON: {exc}") from None
    # Fewer opening brackets than the limit cannot nest past it (counted at C speed).
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and deeper_than(data, MAX_JSON_DEPTH):
        raise too_deep
    return data


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate a body with its pydantic model; the first error becomes a 422 naming the field."""
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "Request body must be a JSON object", prefix or None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, *error_of(exc.errors(include_url=False)[0], prefix)) from None


def query_arg(name: str, parse: Callable[[str], Any] | None = None, default: Any = None) -> Any:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    if parse is None:
        return value
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid_query", f"Invalid {name}: {exc}", name) from None


def period_query() -> str | None:
    """The `period` query filter: a `YYYY-MM` (400 otherwise), or None when not given."""
    return query_arg("period", lambda v: (parse_period(v), v)[1])


def status_query(statuses: Iterable[str]) -> str | None:
    """The `status` query filter: one of `statuses` (400 otherwise), or None when not given."""
    status = query_arg("status")
    if status and status not in statuses:
        raise ApiError(400, "invalid_query", f"Unknown status {status!r}", "status")
    return status


def period_and_status(model: Any, statuses: Iterable[str]) -> tuple[tuple[Any, Any], ...]:
    """A list's `period` and `status` query filters on `model`'s columns, for where_given."""
    return (model.period, period_query()), (model.status, status_query(statuses))


def page_args() -> tuple[int, str | None]:
    limit = query_arg("limit", whole_number, DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid_query", f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit, request.args.get("starting_after") or None


def cursor(parse: Callable[[str], int], value: str | None) -> int | None:
    """`starting_after` as a row id through the resource's id parser: a malformed id is a
    400; one no row can have (beyond 64 bits) names nothing, a 404."""
    if not value:
        return None
    try:
        return parse(value)
    except NoSuchRow as exc:
        raise ApiError(404, "resource_missing", str(exc), "starting_after") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_query", str(exc), "starting_after") from None


def period_arg(period: str, what: str) -> str:
    """A `YYYY-MM` path parameter; anything else names no `what` (404, like a month never run)."""
    try:
        parse_period(period)
    except ValueError:
        raise not_found(what, period) from None
    return period
