"""Request parsing shared by every blueprint (answers are serialised by api.schemas)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError
from api.schemas.base import error_of

M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def json_body(required: bool = True) -> Any:
    """The request's JSON; numbers with a fraction parse as Decimal so nothing is rounded."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A chunked body (no Content-Length) is read up to the limit and cut there silently:
        # one byte more behind it means the body was too large, not malformed.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "request_too_large", "Request body too large")
    if not raw:
        if required:
            raise ApiError(400, "bad_request", "Request body must be a JSON object")
        return {}
    try:
        data = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"Request body is not valid JSON: {exc}") from None
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


def page_args() -> tuple[int, str | None]:
    limit = query_arg("limit", int, DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid_query", f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit, request.args.get("starting_after") or None
