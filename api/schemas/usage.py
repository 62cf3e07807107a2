"""Usage records and the answer to a push (docs/API.md#usage-records).

The push's records are validated one by one by `metering.records.UsageRecordIn` (the hot path:
a bad record is answered in its result, never fails the batch); `UsageBatchIn` documents the body.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api.schemas.base import (
    USCC_EXAMPLE,
    ErrorDetail,
    Resource,
    ZTimestamp,
    omitted_when_none,
    or_empty,
    public_id,
)
from metering.records import UsageRecordIn


def _decimal_string(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


RecordId = public_id("ur_")


class UsageRecord(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "usage_record", "id": "ur_1042", "record_id": "job-4103947-1",
        "provider_id": "jx-zhisuan", "enterprise_uscc": USCC_EXAMPLE, "resource": "gpu.h800",
        "unit": "gpu_hour", "quantity": "12.5", "started_at": "2026-10-15T01:00:00Z",
        "ended_at": "2026-10-15T02:00:00Z", "period": "2026-10", "amount": 600000,
        "currency": "CNY", "status": "active", "metadata": {}, "voided_at": None,
        "void_reason": None, "created_at": "2026-10-15T02:01:00Z"}]})
    object: Literal["usage_record"] = "usage_record"
    id: RecordId = Field(description="The service's id (ur_…), the `starting_after` cursor")
    record_id: str = Field(description="The provider's id, unique per provider")
    provider_id: str
    enterprise_uscc: str
    resource: str
    unit: Literal["gpu_hour", "core_hour", "node_hour"]
    quantity: Annotated[str, BeforeValidator(_decimal_string)] = Field(
        pattern=r"^[0-9]+(\.[0-9]{1,6})?$", description="Exact decimal string")
    started_at: ZTimestamp
    ended_at: ZTimestamp
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
                        description="YYYY-MM holding ended_at in Asia/Shanghai")
    amount: int = Field(description="Fen")
    currency: Literal["CNY"]
    status: Literal["active", "void"]
    metadata: Annotated[dict[str, Any], or_empty(dict)] = Field(validation_alias="metadata_")
    voided_at: ZTimestamp | None
    void_reason: str | None
    created_at: ZTimestamp


class RecordResult(BaseModel):
    record_id: str | None = Field(description="Null when the record had no usable record_id")
    status: Literal["accepted", "duplicate", "rejected"]
    error: ErrorDetail | None = omitted_when_none(description="Only for rejected records")


class UsageBatch(Resource):
    """The answer to a push: counts and one result per input record, in input order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "usage_batch", "accepted": 1, "duplicates": 0, "rejected": 1, "results": [
            {"record_id": "job-4103947-1", "status": "accepted"},
            {"record_id": "job-4103948-1", "status": "rejected", "error": {
                "type": "invalid_request_error", "code": "missing_timezone",
                "message": "records[1].ended_at: must carry a UTC offset (e.g. +08:00 or Z)",
                "param": "records[1].ended_at"}}]}]})
    object: Literal["usage_batch"] = "usage_batch"
    accepted: int
    duplicates: int
    rejected: int
    results: list[RecordResult]

    @classmethod
    def dump_batch(cls, batch: Any) -> dict[str, Any]:
        """`dump(batch)` without re-validating each result: metering.ingest builds every result
        in this schema's JSON shape already, and a push answers up to 5,000 of them (validating
        them again was a tenth of a push's time). tests/api/test_usage_batch_shape.py holds the
        two equal."""
        return {"object": "usage_batch", "accepted": batch.accepted, "duplicates": batch.duplicates,
                "rejected": batch.rejected, "results": batch.results}


class UsageBatchIn(BaseModel):
    """A batch of usage records. Each record is validated on its own (`UsageRecordIn`), so a
    bad record is reported in its result and never fails the batch."""

    model_config = ConfigDict(extra="forbid")
    records: list[UsageRecordIn] = Field(min_length=1, max_length=5000,
                                         description="At most VOUCHER_MAX_BATCH_RECORDS (5,000)")


class VoidIn(BaseModel):
    """Optional body of a void; other fields are ignored."""

    reason: str | None = Field(default=None, max_length=1000, examples=["duplicate of job-4103946"])
