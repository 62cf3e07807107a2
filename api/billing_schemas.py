"""Response schemas of the billing API, for the OpenAPI description (tests check real answers)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

USCC = "91330402MA2B7K3X13"
ClaimStatus = Literal["submitted", "verified", "flagged", "approved", "rejected"]


class Discrepancy(BaseModel):
    """A reconciliation finding (docs/API.md#discrepancy-codes) with the figures that caused it (fields vary by code)."""

    model_config = ConfigDict(extra="allow")
    code: Literal["invoice_not_found", "invoice_amount_mismatch", "invoice_claimed_twice",
                  "usage_invoice_mismatch", "enterprise_not_eligible", "provider_not_listed",
                  "outside_policy_window", "cap_reached"]
    message: str


class ProviderInvoice(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "provider_invoice", "id": "inv_7", "provider_id": "jx-zhisuan",
        "invoice_no": "33021234-00001", "enterprise_uscc": USCC, "period": "2026-10",
        "amount": 1200000, "tax_amount": 67925, "currency": "CNY", "issued_on": "2026-10-31",
        "created_at": "2026-11-01T02:00:00+00:00"}]})
    object: Literal["provider_invoice"]
    id: str
    provider_id: str
    invoice_no: str
    enterprise_uscc: str
    period: str
    amount: int = Field(description="Fen")
    tax_amount: int | None
    currency: Literal["CNY"]
    issued_on: date
    created_at: datetime


class ClaimItem(BaseModel):
    provider_id: str
    invoice_no: str
    amount_paid: int
    invoice_amount: int | None = Field(description="Null until reconciled, or when no such invoice")
    metered: int | None = Field(description="Active usage of (provider, enterprise, period), fen")
    base: int
    discrepancies: list[Discrepancy]


class OtherSubsidy(BaseModel):
    program: str
    amount: int


class Claim(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "claim", "id": "clm_12", "enterprise_uscc": USCC, "period": "2026-10", "year": 2026,
        "status": "verified", "currency": "CNY",
        "items": [{"provider_id": "jx-zhisuan", "invoice_no": "33021234-00001", "amount_paid": 1200000,
                   "invoice_amount": 1200000, "metered": 1200050, "base": 1200000, "discrepancies": []}],
        "other_subsidies": [], "base": 1200000, "computed": 600000, "payable_before_cap": 600000,
        "payable": 600000, "clawed_back": 0, "cap_reached": False, "discrepancies": [],
        "discrepancy_codes": [], "policy_id": "jiaxing-ai-plus-2025", "decision_reason": None,
        "submitted_at": "2026-11-02T01:00:00+00:00", "reconciled_at": "2026-11-30T18:00:00+00:00",
        "decided_at": None}]})
    object: Literal["claim"]
    id: str
    enterprise_uscc: str
    period: str
    year: int
    status: ClaimStatus
    currency: Literal["CNY"]
    items: list[ClaimItem]
    other_subsidies: list[OtherSubsidy]
    base: int
    computed: int = Field(description="round_half_up(base × rate), once per claim")
    payable_before_cap: int = Field(description="max(computed − other subsidies, 0) (就高不重复)")
    payable: int = Field(description="What this claim reserves, or was granted")
    clawed_back: int
    cap_reached: bool
    discrepancies: list[Discrepancy] = Field(description="Claim-level findings")
    discrepancy_codes: list[str] = Field(description="Every code on the claim and its items")
    policy_id: str | None
    decision_reason: str | None
    submitted_at: datetime | None
    reconciled_at: datetime | None
    decided_at: datetime | None


class Quota(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "quota", "enterprise_uscc": USCC, "year": 2026, "currency": "CNY",
        "cap": 200000000, "cap_basis": "standard", "granted": 1500000, "reserved": 600000,
        "remaining": 197900000, "policy_id": "jiaxing-ai-plus-2025"}]})
    object: Literal["quota"]
    enterprise_uscc: str
    year: int
    currency: Literal["CNY"]
    cap: int
    cap_basis: Literal["standard", "new_model_filing"]
    granted: int
    reserved: int
    remaining: int = Field(description="cap − granted − reserved, never below 0")
    policy_id: str


class Adjustment(BaseModel):
    object: Literal["claim_adjustment"]
    id: str
    claim_id: str
    kind: Literal["clawback"]
    amount: int = Field(description="Fen; negative for a clawback")
    reason: str
    created_at: datetime


class Reconciliation(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "reconciliation", "id": "rec_2026-10", "period": "2026-10", "status": "completed",
        "runs": 1, "policy_id": "jiaxing-ai-plus-2025", "first_run_at": "2026-11-01T18:00:00+00:00",
        "last_run_at": "2026-11-01T18:00:00+00:00",
        "summary": {"claims": 1, "by_status": {"submitted": 0, "verified": 1, "flagged": 0,
                                               "approved": 0, "rejected": 0},
                    "discrepancies": {}, "cap_reached": 0,
                    "totals": {"amount_paid": 1200000, "invoiced": 1200000, "metered": 1200050,
                               "base": 1200000, "computed": 600000, "payable": 600000,
                               "reserved": 600000, "granted": 0, "clawed_back": 0},
                    "currency": "CNY"}}]})
    object: Literal["reconciliation"]
    id: str
    period: str
    status: str
    runs: int
    policy_id: str
    first_run_at: datetime
    last_run_at: datetime
    summary: dict[str, Any]
    claims: list[Claim] | None = Field(default=None, description="In GET only")
    adjustments: list[Adjustment] | None = Field(default=None, description="In GET only")
