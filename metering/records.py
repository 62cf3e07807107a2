"""The usage-record schema: validation of one pushed record, with its rejection codes (docs/API.md#record-codes).

Validation is pure (no database); `ingest.py` adds the checks that need one
(`unknown_enterprise`, `duplicate`, `conflict`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kernel.nesting import deeper_than
from kernel.periods import period_of
from kernel.uscc import valid_uscc

UNITS = ("gpu_hour", "core_hour", "node_hour")
CURRENCIES = ("CNY",)
MAX_QUANTITY = Decimal(1000000000000)  # 10^12 units in one record is a typo, not usage
MAX_AMOUNT = 10**15  # fen
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32  # objects and arrays; deeper would only be a way to exhaust the stack
QUANTITY_STEP = Decimal("0.000001")
_RESOURCE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f]")


def metadata_too_big(v: dict) -> bool:
    """len(json.dumps(v, default=str)) > MAX_METADATA_BYTES, without serialising the usual
    small flat object: an upper bound on its JSON length (12 characters per character of a
    string, the worst escape) settles it; anything else is serialised. Serialising every
    record's metadata was a fifth of ingestion's CPU time."""
    bound = 2
    for key, value in v.items():
        kind = type(value)
        if type(key) is not str:
            break
        if kind is str:
            size = 12 * len(value) + 2
        elif kind is int and -10**18 < value < 10**18:
            size = 20
        elif value is None or value is True or value is False:
            size = 5
        else:
            break
        bound += 12 * len(key) + 6 + size
        if bound > MAX_METADATA_BYTES:
            break
    else:
        return False
    return len(json.dumps(v, default=str)) > MAX_METADATA_BYTES


# The code reported for any failure in a field, unless a validator chose a sharper one.
FIELD_CODES = {
    "enterprise_uscc": "invalid_uscc",
    "quantity": "invalid_quantity",
    "amount": "invalid_amount",
    "unit": "unsupported_unit",
    "currency": "unsupported_currency",
}


def _fail(code: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(code, message)


def parse_time(value: Any) -> datetime:
    """RFC 3339 with an offset; a timestamp without one is refused, never guessed."""
    if not isinstance(value, str):
        raise _fail("invalid_field", "must be an RFC 3339 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail("invalid_field", "is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _fail("missing_timezone", "must carry a UTC offset (e.g. +08:00 or Z)")
    return moment


def parse_quantity(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise _fail("invalid_quantity", "must be a decimal string such as \"12.5\"")
    try:
        q = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise _fail("invalid_quantity", "is not a decimal number") from None
    if not q.is_finite() or q <= 0:  # v2: usage of nothing is not usage (docs/API.md#record-codes)
        raise _fail("invalid_quantity", "must be a finite number greater than 0")
    if q > MAX_QUANTITY:
        raise _fail("invalid_quantity", f"must be at most {MAX_QUANTITY}")
    if q != q.quantize(QUANTITY_STEP, rounding="ROUND_DOWN"):
        raise _fail("invalid_quantity", "has more than 6 fractional digits")
    return q.quantize(QUANTITY_STEP)


_SCALARS = frozenset((str, int, bool, type(None)))


def _plain_json(value: Any) -> Any:
    """Metadata as the JSON column stores it: fractional numbers (parsed as Decimal so money
    stays exact) become plain JSON numbers; metadata is free-form and never money. The usual
    flat object of strings and integers is returned as it is, not copied."""
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)  # float ok: metadata
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


class UsageRecordIn(BaseModel):
    """One usage record as a provider pushes it (docs/API.md#usage-endpoints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str = Field(min_length=1, max_length=200, examples=["job-4103947-1"])
    enterprise_uscc: str = Field(examples=["91330402MA2B7K3X1X"])
    resource: str = Field(examples=["gpu.h800"], description="gpu.<model>, gpu, cpu, ...")
    unit: Literal["gpu_hour", "core_hour", "node_hour"]
    quantity: Decimal = Field(description="Decimal string, at most 6 fractional digits",
                              examples=["12.5"])
    started_at: datetime
    ended_at: datetime
    amount: int = Field(description="Integer fen", examples=[600000])
    currency: Literal["CNY"]
    metadata: dict[str, Any] | None = None

    @field_validator("record_id", mode="before")
    @classmethod
    def _record_id(cls, v: Any) -> Any:
        if not isinstance(v, str) or not v.strip() or _CONTROL.search(v):
            raise _fail("invalid_field", "must be a non-empty printable string")
        return v

    @field_validator("enterprise_uscc", mode="before")
    @classmethod
    def _uscc(cls, v: Any) -> str:
        code = valid_uscc(v)  # stored canonical (docs/API.md#uscc)
        if code is None:
            raise _fail("invalid_uscc", "is not a valid unified social credit code (GB 32100-2015)")
        return code

    @field_validator("resource", mode="before")
    @classmethod
    def _resource(cls, v: Any) -> Any:
        if not isinstance(v, str) or not _RESOURCE.fullmatch(v):
            raise _fail("invalid_field", "must match ^[a-z0-9][a-z0-9._-]{0,63}$ (e.g. gpu.h800, cpu)")
        return v

    @field_validator("quantity", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Decimal:
        return parse_quantity(v)

    @field_validator("started_at", "ended_at", mode="before")
    @classmethod
    def _time(cls, v: Any) -> datetime:
        return parse_time(v)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _fail("invalid_amount", "must be an integer number of fen")
        if not 0 <= v <= MAX_AMOUNT:
            raise _fail("invalid_amount", f"must be between 0 and {MAX_AMOUNT} fen")
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise _fail("invalid_field", "must be an object")
        if deeper_than(v, MAX_METADATA_DEPTH):  # before anything that walks it recursively
            raise _fail("invalid_field", f"must nest at most {MAX_METADATA_DEPTH} levels deep")
        if metadata_too_big(v):
            raise _fail("invalid_field", f"must be at most {MAX_METADATA_BYTES} bytes")
        return _plain_json(v)

    @model_validator(mode="after")
    def _range(self) -> UsageRecordIn:
        if self.ended_at < self.started_at:
            raise _fail("invalid_time_range", "ended_at is before started_at")
        return self


@dataclass(frozen=True)
class RecordError:
    code: str
    message: str
    param: str

    def as_dict(self) -> dict[str, str]:
        return {"type": "invalid_request_error", "code": self.code, "message": self.message,
                "param": self.param}


def _error_from(exc: ValidationError, prefix: str) -> RecordError:
    first = exc.errors(include_url=False)[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else ("ended_at" if first["type"] == "invalid_time_range" else "")
    kind = first["type"]
    if kind == "missing":
        code, message = FIELD_CODES.get(field, "invalid_field"), f"{field} is required"
    elif kind == "extra_forbidden":
        code, message = "invalid_field", f"{field} is not a usage-record field"
    else:
        custom = kind.startswith(("invalid_", "unsupported_", "missing_timezone"))
        code = kind if custom else FIELD_CODES.get(field, "invalid_field")
        message = f"{field} {first['msg']}" if custom else f"{field}: {first['msg']}"
    param = f"{prefix}.{field}" if field else prefix
    return RecordError(code, message, param)


def validate_record(raw: Any, prefix: str, now: datetime, skew: timedelta) -> UsageRecordIn | RecordError:
    if not isinstance(raw, dict):
        return RecordError("invalid_field", "a usage record must be a JSON object", prefix)
    try:
        rec = UsageRecordIn.model_validate(raw)
    except ValidationError as exc:
        return _error_from(exc, prefix)
    if rec.ended_at > now + skew:
        return RecordError("invalid_time_range",
                           f"ended_at is more than {int(skew.total_seconds())} s in the future",
                           f"{prefix}.ended_at")
    return rec


# The canonical form hashed by content_hash. One encoder for every record: json.dumps with
# these options would build a new one per call (a third of the hash's cost).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(rec: UsageRecordIn) -> str:
    """What makes two pushes of one record_id 'the same content' (a replay, not a conflict).
    Stored with each record, so its bytes never change: a replay must hash as its original."""
    canonical = _CANONICAL.encode([
        rec.enterprise_uscc,
        rec.resource,
        rec.unit,
        str(rec.quantity),
        rec.started_at.astimezone(UTC).isoformat(),
        rec.ended_at.astimezone(UTC).isoformat(),
        rec.amount,
        rec.currency,
        rec.metadata,
    ])
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_period(rec: UsageRecordIn) -> str:
    return period_of(rec.ended_at)
