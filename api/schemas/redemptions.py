"""Redemptions at the provider (核销) and quarterly settlements (docs/API.md#redemptions,
#settlements) — the answers and the request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.schemas.base import USCC_EXAMPLE as USCC
from api.schemas.base import Resource, Timestamp, Uscc, public_id
from api.schemas.billing import Discrepancies, Period, PositiveFen
from api.schemas.risk import Risk
from kernel.vocabulary import REDEMPTION_STATUSES, SettlementStatus

RedemptionStatus = Literal[tuple(s.value for s in REDEMPTION_STATUSES)]  # type: ignore[valid-type]
SettlementStatusValue = Literal[tuple(s.value for s in SettlementStatus)]  # type: ignore[valid-type]
RedemptionId = public_id("rdm_")
SettlementId = public_id("stl_")
Reference = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
InvoiceNo = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Quarter = Annotated[str, StringConstraints(pattern=r"^(20[0-9]{2}|2100)Q[1-4]$")]


class RedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "enterprise_uscc": USCC, "reference": "order-2026-0001", "list_amount": 1000000, "period": "2026-03"}]})
    enterprise_uscc: Uscc
    reference: Reference = Field(description="The provider's own order number: the idempotency key")
    list_amount: PositiveFen = Field(description="The order's full price, fen")
    period: Period


class CaptureIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "invoice_no": "33021234-00077", "amount": 960000}]})
    invoice_no: InvoiceNo = Field(description="The invoice issued to the enterprise for the full amount")
    amount: PositiveFen = Field(description="The full captured amount, fen; at most the list amount")


class RedemptionDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "invoice re-issued"}]})
    reason: str | None = Field(default=None, max_length=2000)


class SettlementIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"quarter": "2026Q1"}]})
    quarter: Quarter
    provider_id: str | None = Field(default=None, description="Only this provider's batch")


class Redemption(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "redemption", "id": "rdm_5", "provider_id": "jx-zhisuan", "reference": "order-2026-0001",
        "enterprise_uscc": USCC, "period": "2026-03", "year": 2026, "status": "authorized",
        "currency": "CNY", "list_amount": 1000000, "requested": 500000, "subsidy": 500000,
        "held": 500000, "invoice_no": None, "amount": None, "discrepancies": [],
        "policy_id": "jiaxing-ai-plus-2025", "settlement_id": None,
        "created_at": "2026-03-10T02:00:00+00:00", "expires_at": "2026-04-09T02:00:00+00:00",
        "captured_at": None, "reconciled_at": None, "decided_at": None, "settled_at": None}]})
    object: Literal["redemption"] = "redemption"
    id: RedemptionId
    provider_id: str
    reference: str
    enterprise_uscc: str
    period: str
    year: int
    status: RedemptionStatus
    currency: Literal["CNY"] = "CNY"
    list_amount: int = Field(description="Fen")
    requested: int = Field(description="round_half_up(list_amount × rate), before the quota cut")
    subsidy: int = Field(description="Held (authorised), recomputed on the captured amount (captured), "
                                     "or granted (settled)")
    held: int = Field(description="What it holds on the quota now (counted in the quota's reserved)")
    invoice_no: str | None
    amount: int | None = Field(description="The captured amount, fen")
    discrepancies: Discrepancies
    risk: Risk | None = Field(default=None, description="Risk signals and score (docs/API.md#risk); "
                                                      "null until a reconciliation checked the capture")
    policy_id: str
    decision_reason: str | None = None
    settlement_id: SettlementId | None
    created_at: Timestamp
    expires_at: Timestamp
    captured_at: Timestamp | None
    reconciled_at: Timestamp | None
    decided_at: Timestamp | None
    settled_at: Timestamp | None


class Settlement(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "settlement", "id": "stl_2", "provider_id": "jx-zhisuan", "quarter": "2026Q1",
        "status": "pending", "currency": "CNY", "redemptions": 12, "amount": 11520000, "subsidy": 5760000,
        "policy_id": "jiaxing-ai-plus-2025", "created_at": "2026-04-01T21:00:00+00:00",
        "approved_at": None}]})
    object: Literal["settlement"] = "settlement"
    id: SettlementId
    provider_id: str
    quarter: str
    status: SettlementStatusValue
    currency: Literal["CNY"] = "CNY"
    redemptions: int = Field(description="How many redemptions the batch pays")
    amount: int = Field(description="Σ captured amounts, fen")
    subsidy: int = Field(description="Σ subsidies: what the treasury pays the provider, fen")
    policy_id: str
    created_at: Timestamp
    approved_at: Timestamp | None
