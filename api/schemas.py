"""Response (and envelope) schemas for the OpenAPI description.

Request bodies are described by the models the views validate with (`ProviderIn`,
`UsageRecordIn`, ...); these models describe what the API answers. They are documentation
checked against reality: tests validate real responses against the generated document.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from metering.records import UsageRecordIn

USCC_EXAMPLE = "91330402MA2B7K3X13"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["invalid_request_error", "authentication_error", "permission_error",
                  "idempotency_error", "rate_limit_error", "api_error"]
    code: str = Field(examples=["invalid_field"], description="Machine-readable reason")
    message: str = Field(description="For people; may change")
    param: str | None = Field(default=None, examples=["records[3].ended_at"],
                              description="The offending field, when there is one")


class ErrorBody(BaseModel):
    """Every failure: Stripe-style `{"error": {...}}`, never an HTML page."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "type": "invalid_request_error", "code": "missing_field",
        "message": "Missing required field name", "param": "name"}}]})
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class ApiKey(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "api_key", "id": "key_3f9c2a7d1b", "role": "provider", "subject": "jx-zhisuan",
        "created_at": "2026-10-01T02:00:00+00:00", "revoked_at": None,
        "key": "vk_live_…(shown once)"}]})
    object: Literal["api_key"]
    id: str
    role: Literal["finance", "provider", "enterprise"]
    subject: str | None = Field(description="Provider id or enterprise USCC; null for finance")
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = Field(default=None, description="The secret, only in the answer to its "
                            "creation; it is stored as a hash and never shown again")


class Provider(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "provider", "id": "jx-zhisuan", "name": "嘉兴智算中心",
        "kind": "intelligent_computing", "county": "南湖区", "listed_from": "2025-05-13",
        "listed_until": None, "created_at": "2026-10-01T02:00:00+00:00"}]})
    object: Literal["provider"]
    id: str
    name: str
    kind: Literal["intelligent_computing", "supercomputing"]
    county: str | None
    listed_from: date | None = Field(description="First day in the city's catalogue")
    listed_until: date | None = Field(description="Last day in the catalogue; null while listed")
    created_at: datetime


class ModelFiling(BaseModel):
    object: Literal["model_filing"]
    id: str
    enterprise_uscc: str
    filing_no: str
    model_name: str
    obtained_on: date = Field(description="Raises the cap for the year it falls in (policy)")


class Enterprise(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "enterprise", "uscc": USCC_EXAMPLE, "id": USCC_EXAMPLE, "name": "某某智能科技有限公司",
        "county": "南湖区", "eligible": True, "created_at": "2026-10-01T02:00:00+00:00"}]})
    object: Literal["enterprise"]
    uscc: str = Field(description="统一社会信用代码, upper-case")
    id: str = Field(description="The USCC again, as every object has an id")
    name: str
    county: str | None
    eligible: bool
    created_at: datetime
    model_filings: list[ModelFiling] | None = Field(
        default=None, description="Only when one enterprise is read")


class UsageRecord(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "usage_record", "id": "ur_1042", "record_id": "job-4103947-1",
        "provider_id": "jx-zhisuan", "enterprise_uscc": USCC_EXAMPLE, "resource": "gpu.h800",
        "unit": "gpu_hour", "quantity": "12.5", "started_at": "2026-10-15T01:00:00Z",
        "ended_at": "2026-10-15T02:00:00Z", "period": "2026-10", "amount": 600000,
        "currency": "CNY", "status": "active", "metadata": {}, "voided_at": None,
        "void_reason": None, "created_at": "2026-10-15T02:01:00Z"}]})
    object: Literal["usage_record"]
    id: str = Field(description="The service's id (ur_…), the `starting_after` cursor")
    record_id: str = Field(description="The provider's id, unique per provider")
    provider_id: str
    enterprise_uscc: str
    resource: str
    unit: Literal["gpu_hour", "core_hour", "node_hour"]
    quantity: str = Field(pattern=r"^[0-9]+(\.[0-9]{1,6})?$", description="Exact decimal string")
    started_at: datetime
    ended_at: datetime
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
                        description="YYYY-MM holding ended_at in Asia/Shanghai")
    amount: int = Field(description="Fen")
    currency: Literal["CNY"]
    status: Literal["active", "void"]
    metadata: dict[str, Any]
    voided_at: datetime | None
    void_reason: str | None
    created_at: datetime


class RecordResult(BaseModel):
    record_id: str | None = Field(description="Null when the record had no usable record_id")
    status: Literal["accepted", "duplicate", "rejected"]
    error: ErrorDetail | None = Field(default=None, description="Only for rejected records")


class UsageBatch(BaseModel):
    """The answer to a push: counts and one result per input record, in input order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "usage_batch", "accepted": 1, "duplicates": 0, "rejected": 1, "results": [
            {"record_id": "job-4103947-1", "status": "accepted"},
            {"record_id": "job-4103948-1", "status": "rejected", "error": {
                "type": "invalid_request_error", "code": "missing_timezone",
                "message": "records[1].ended_at: must carry a UTC offset (e.g. +08:00 or Z)",
                "param": "records[1].ended_at"}}]}]})
    object: Literal["usage_batch"]
    accepted: int
    duplicates: int
    rejected: int
    results: list[RecordResult]


class UsageBatchIn(BaseModel):
    """A batch of usage records. Each record is validated on its own (`UsageRecordIn`), so a
    bad record is reported in its result and never fails the batch."""

    model_config = ConfigDict(extra="forbid")
    records: list[UsageRecordIn] = Field(min_length=1, max_length=5000,
                                         description="At most VOUCHER_MAX_BATCH_RECORDS (5,000)")


class VoidIn(BaseModel):
    """Optional body of a void; other fields are ignored."""

    reason: str | None = Field(default=None, max_length=1000, examples=["duplicate of job-4103946"])
