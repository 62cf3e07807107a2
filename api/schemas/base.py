"""What every API schema shares: the response base class, the list envelope, the error body,
timestamps, public ids, and the adapter from a pydantic error's `loc` to the error's `param`.

One model per resource (docs/ARCHITECTURE.md): the same class serialises the answer
(`Provider.dump(row)`, `Provider.page(rows, has_more, url)`) and is the OpenAPI component
(api.openapi), so the document cannot drift from what the API answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from kernel.uscc import valid_uscc

USCC_EXAMPLE = "91330402MA2B7K3X13"
ERROR_TYPES = Literal["invalid_request_error", "authentication_error", "permission_error",
                      "idempotency_error", "rate_limit_error", "api_error"]


def _none(value: Any) -> bool:
    return value is None


def omitted_when_none(**kwargs: Any) -> Any:
    """A field that is left out of the answer (not sent as null) when it has no value."""
    return Field(default=None, exclude_if=_none, **kwargs)


_DATE_TIME = WithJsonSchema({"type": "string", "format": "date-time"})
# Two spellings of UTC are in use and kept, so that answers stay byte-for-byte as they were:
# `Timestamp` is Python's isoformat (`…+00:00`), `ZTimestamp` ends in `Z` (usage records, jobs).
Timestamp = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str,
                                                when_used="json"), _DATE_TIME]
ZTimestamp = Annotated[datetime, PlainSerializer(lambda v: v.isoformat().replace("+00:00", "Z"),
                                                 return_type=str, when_used="json"), _DATE_TIME]


@cache
def public_id(prefix: str) -> Any:
    """A public id (`ur_42`, `rec_2026-10`): the row's key with the resource's prefix."""
    return Annotated[str, BeforeValidator(
        lambda v: v if isinstance(v, str) and v.startswith(prefix) else f"{prefix}{v}")]


def or_empty(factory: type) -> Any:
    """A JSON column that may hold null and is answered as an empty object/array."""
    return BeforeValidator(lambda v: factory() if v is None else v)


def normalise_uscc(value: object) -> str:
    code = valid_uscc(value)
    if code is None:
        raise PydanticCustomError("invalid_uscc", "is not a valid unified social credit code")
    return code


# A USCC in a request body: checked (GB 32100-2015) and made canonical (kernel.uscc:
# separators removed, upper case; docs/API.md#uscc); `invalid_uscc` otherwise.
Uscc = Annotated[str, BeforeValidator(normalise_uscc)]


class _Overlay:
    """An object's attributes, some replaced or added (for `model_validate(from_attributes)`)."""

    __slots__ = ("_obj", "_extra")

    def __init__(self, obj: Any, extra: dict[str, Any]) -> None:
        self._obj, self._extra = obj, extra

    def __getattr__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return getattr(self._obj, name)


class Resource(BaseModel):
    """An object the API answers with, read from an ORM row (or any object) by attribute name."""

    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)

    @classmethod
    def dump(cls, obj: Any, **fields: Any) -> dict[str, Any]:
        """The JSON body for `obj`; `fields` replace or add attributes (e.g. `key=` once)."""
        source = _Overlay(obj, fields) if fields else obj
        return cls.model_validate(source, from_attributes=True).model_dump(mode="json")

    @classmethod
    def page(cls, rows: Iterable[Any], has_more: bool, url: str | None = None) -> dict[str, Any]:
        """A list envelope of these objects (`{object: "list", data, has_more, url}`)."""
        return list_of(cls).model_validate(
            {"data": rows, "has_more": has_more, "url": url}, from_attributes=True
        ).model_dump(mode="json")


class Page(BaseModel):
    """The list envelope; `list_of(Model)` is its subclass for one kind of object."""

    model_config = ConfigDict(from_attributes=True, json_schema_serialization_defaults_required=True)
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = Field(description="Whether another page follows")
    url: str | None = omitted_when_none()


@cache
def list_of(model: type[BaseModel]) -> type[Page]:
    """`ProviderList`: the page of `Provider` objects (one component per listed resource)."""
    name = f"{model.__name__}List"
    return type(name, (Page,), {
        "__module__": model.__module__, "__doc__": f"A page of {model.__name__} objects",
        "__annotations__": {"data": list[model]},  # type: ignore[valid-type]
    })


# --- errors ---------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: ERROR_TYPES
    code: str = Field(examples=["invalid_field"], description="Machine-readable reason")
    message: str = Field(description="For people; may change")
    param: str | None = omitted_when_none(examples=["records[3].ended_at"],
                                          description="The offending field, when there is one")


class ErrorBody(BaseModel):
    """Every failure: Stripe-style `{"error": {...}}`, never an HTML page."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "type": "invalid_request_error", "code": "missing_field",
        "message": "Missing required field name", "param": "name"}}]})
    error: ErrorDetail

    @classmethod
    def dump(cls, type: str, code: str, message: str, param: str | None = None,
             **extra: Any) -> dict[str, Any]:
        detail = ErrorDetail(type=type, code=code, message=message, param=param, **extra)  # type: ignore[arg-type]
        return cls(error=detail).model_dump(mode="json")


# Pydantic error types that are this API's own codes (raised as PydanticCustomError by a
# validator: `invalid_uscc`, `invalid_date_range`, `missing_field`, ...).
_OWN_CODES = ("invalid_", "unsupported_", "missing_")


def loc_to_param(loc: Sequence[Any], prefix: str = "") -> str:
    """`("items", 2, "amount")` → `items[2].amount` (after `prefix`, if any)."""
    param = prefix
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else str(part)
    return param


def error_of(first: dict[str, Any], prefix: str = "") -> tuple[str, str, str | None]:
    """(code, message, param) of one pydantic error, as a 422 of this API reports it."""
    param = loc_to_param(first["loc"], prefix) or None
    kind = first["type"]
    if kind == "missing":
        return "missing_field", f"Missing required field {param}", param
    if kind == "extra_forbidden":
        return "unknown_field", f"Unknown field {param}", param
    code = kind if kind.startswith(_OWN_CODES) else "invalid_field"
    return code, (f"{param}: {first['msg']}" if param else first["msg"]), param
