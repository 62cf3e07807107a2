"""Billing: provider invoices, claims, quota, reconciliations (docs/API.md#invoices, #claims,
#quota, #reconciliation) — the answers and the request bodies."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, computed_field
from pydantic_core import PydanticCustomError

from api.schemas.base import USCC_EXAMPLE as USCC
from api.schemas.base import Resource, Timestamp, Uscc, omitted_when_none, or_empty, public_id
from api.schemas.risk import Risk
from kernel.periods import parse_period
from kernel.vocabulary import CLAIM_STATUSES

# The claim statuses of kernel/vocabulary.py, as a Literal so the OpenAPI enum lists them inline.
ClaimStatus = Literal[tuple(s.value for s in CLAIM_STATUSES)]  # type: ignore[valid-type]


def _period(value: str) -> str:
    try:
        parse_period(value)  # the one period parser: years 2000–2100 (0000-01 passes the pattern)
    except ValueError as exc:
        raise PydanticCustomError("invalid_field", str(exc)) from None
    return value


Period = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$"), AfterValidator(_period)]
FenAmount = Annotated[int, Field(ge=0, le=10**15, strict=True)]
PositiveFen = Annotated[int, Field(gt=0, le=10**15, strict=True)]
InvoiceId = public_id("inv_")
ClaimId = public_id("clm_")
AdjustmentId = public_id("adj_")
ReconciliationId = public_id("rec_")


# --- answers ----------------------------------------------------------------------------------

class Discrepancy(BaseModel):
    """A reconciliation finding (docs/API.md#discrepancy-codes) with the figures that caused it (fields vary by code)."""

    model_config = ConfigDict(extra="allow")
    code: Literal["invoice_not_found", "invoice_amount_mismatch", "invoice_claimed_twice",
                  "usage_invoice_mismatch", "enterprise_not_eligible", "provider_not_listed",
                  "outside_policy_window", "cap_reached",
                  "usage_voided_after_approval", "invoice_already_redeemed", "invoice_already_claimed",
                  "budget_exhausted", "risk_review"]
    message: str


Discrepancies = Annotated[list[Discrepancy], or_empty(list)]


class ProviderInvoice(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "provider_invoice", "id": "inv_7", "provider_id": "jx-zhisuan",
        "invoice_no": "33021234-00001", "enterprise_uscc": USCC, "period": "2026-10",
        "amount": 1200000, "tax_amount": 67925, "currency": "CNY", "issued_on": "2026-10-31",
        "created_at": "2026-11-01T02:00:00+00:00"}]})
    object: Literal["provider_invoice"] = "provider_invoice"
    id: InvoiceId
    provider_id: str
    invoice_no: str
    enterprise_uscc: str
    period: str
    amount: int = Field(description="Fen")
    tax_amount: int | None
    currency: Literal["CNY"] = "CNY"
    issued_on: date
    created_at: Timestamp


class ClaimItem(Resource):
    provider_id: str
    invoice_no: str
    amount_paid: int
    invoice_amount: int | None = Field(description="Null until reconciled, or when no such invoice")
    metered: int | None = Field(description="Active usage of (provider, enterprise, period), fen")
    base: int
    discrepancies: Discrepancies


class OtherSubsidy(BaseModel):
    program: str
    amount: int


class ProgrammeFigure(BaseModel):
    """A claim's figures under one of the other programmes run beside the default one
    (docs/API.md#quota-programmes)."""

    model_config = ConfigDict(from_attributes=True)
    programme_id: str
    base: int
    computed: int
    alone: int = Field(description="What this programme would pay on its own (cap, budget and declared "
                                   "other subsidies included)")
    payable: int = Field(description="What it reserves or was granted after stacking (docs/POLICY.md#programmes)")
    clawed_back: int = Field(default=0, description="Taken back from its grant after usage was voided")
    cap_reached: bool
    discrepancies: list[str] = Field(description="Codes found under this programme")


class Claim(Resource):
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
    object: Literal["claim"] = "claim"
    id: ClaimId
    enterprise_uscc: str
    period: str
    status: ClaimStatus
    currency: Literal["CNY"] = "CNY"
    items: list[ClaimItem]
    other_subsidies: Annotated[list[OtherSubsidy], or_empty(list)]
    base: int
    computed: int = Field(description="round_half_up(base × rate), once per claim")
    payable_before_cap: int = Field(description="max(computed − other subsidies, 0) (就高不重复)")
    payable: int = Field(description="What this claim reserves, or was granted")
    clawed_back: int
    cap_reached: bool
    discrepancies: Discrepancies = Field(description="Claim-level findings")
    risk: Risk | None = Field(default=None, description="Risk score and signals of the last run "
                                                         "(docs/API.md#risk); null until reconciled")
    policy_id: str | None
    programmes: list[ProgrammeFigure] | None = omitted_when_none(
        description="The other programmes' figures when several run (docs/API.md#quota-programmes); "
                    "`payable` above is the default programme's")
    decision_reason: str | None
    submitted_at: Timestamp | None
    reconciled_at: Timestamp | None
    decided_at: Timestamp | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def year(self) -> int:
        return int(self.period[:4])

    @computed_field(description="Every code on the claim and its items")  # type: ignore[prop-decorator]
    @property
    def discrepancy_codes(self) -> list[str]:
        found = [*self.discrepancies, *(d for i in self.items for d in i.discrepancies)]
        return sorted({d.code for d in found})


class CombinedQuota(BaseModel):
    """The sums of the enterprise's quotas over every programme that covers it
    (docs/API.md#quota-programmes)."""

    model_config = ConfigDict(from_attributes=True)
    programmes: list[str] = Field(description="The programmes added up, the default one first")
    cap: int
    granted: int
    reserved: int
    remaining: int = Field(description="Σ remaining: at most this much more, since 就高不重复 pays one "
                                       "programme of several")


class Quota(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "quota", "enterprise_uscc": USCC, "year": 2026, "currency": "CNY",
        "cap": 200000000, "cap_basis": "standard", "granted": 1500000, "reserved": 600000,
        "remaining": 197900000, "policy_id": "jiaxing-ai-plus-2025"}]})
    object: Literal["quota"] = "quota"
    enterprise_uscc: str
    year: int
    currency: Literal["CNY"] = "CNY"
    cap: int
    cap_basis: Literal["standard", "new_model_filing", "outside_policy_window"]
    granted: int
    reserved: int
    remaining: int = Field(description="cap − granted − reserved, never below 0")
    policy_id: str
    combined: CombinedQuota | None = omitted_when_none(
        description="Only when several programmes run (docs/API.md#quota-programmes)")


class Adjustment(Resource):
    object: Literal["claim_adjustment"] = "claim_adjustment"
    id: AdjustmentId
    claim_id: ClaimId
    kind: Literal["clawback"]
    amount: int = Field(description="Fen; negative for a clawback")
    reason: str
    created_at: Timestamp


class Reconciliation(Resource):
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
    object: Literal["reconciliation"] = "reconciliation"
    id: ReconciliationId = Field(validation_alias="period")
    period: str
    status: str
    runs: int
    policy_id: str
    first_run_at: Timestamp
    last_run_at: Timestamp
    summary: dict[str, Any]
    state: Literal["open", "closed"] = Field(default="open", description="closed: the figures are final (docs/API.md#period-close)")
    closed_at: Timestamp | None = omitted_when_none(description="When the period was closed")
    claims: list[Claim] | None = omitted_when_none(description="In GET only")
    adjustments: list[Adjustment] | None = omitted_when_none(description="In GET only")


class BillingPeriod(Resource):
    """A period's lifecycle state (docs/API.md#period-close)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "billing_period", "id": "2026-10", "period": "2026-10", "state": "closed",
        "closed_at": "2027-01-29T18:00:00+00:00", "closed_by": "finance:key_3", "undecided_claims": 0}]})
    object: Literal["billing_period"] = "billing_period"
    id: str = Field(validation_alias="period")
    period: str
    state: Literal["open", "closed"]
    closed_at: Timestamp | None = omitted_when_none()
    closed_by: str | None = omitted_when_none(description="finance:<key id>, console:…, cli or scheduler")
    undecided_claims: int = Field(validation_alias="undecided", description="Claims submitted, verified or flagged")


# --- requests ---------------------------------------------------------------------------------

class InvoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "invoice_no": "33021234-00001", "enterprise_uscc": "91330402MA2B7K3X13", "period": "2026-10",
        "amount": 1200000, "tax_amount": 67925, "issued_on": "2026-10-31"}]})
    invoice_no: str = Field(min_length=1, max_length=64, examples=["33021234-00001"])
    enterprise_uscc: Uscc
    period: Period
    amount: PositiveFen = Field(description="Invoice total in fen")
    tax_amount: FenAmount | None = None
    issued_on: date
    provider_id: str | None = Field(default=None, description="finance only: the issuing provider")


class ClaimItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider_id: str = Field(min_length=1, max_length=63)
    invoice_no: str = Field(min_length=1, max_length=64)
    amount_paid: PositiveFen


class OtherSubsidyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    program: str = Field(min_length=1, max_length=200)
    amount: FenAmount


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "period": "2026-10",
        "items": [{"provider_id": "jx-zhisuan", "invoice_no": "33021234-00001", "amount_paid": 1200000}],
        "other_subsidies": [{"program": "省级算力券", "amount": 100000}]}]})
    period: Period
    # At most `max_claim_items` (settings): refused by the claims service as too_many_items.
    items: list[ClaimItemIn] = Field(min_length=1)
    other_subsidies: list[OtherSubsidyIn] = Field(default_factory=list, max_length=50)
    enterprise_uscc: str | None = Field(default=None, description="finance only: the claiming enterprise")


class ReconciliationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"period": "2026-10"}]})
    period: Period


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "figures checked"}]})
    reason: str | None = Field(default=None, max_length=2000)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "invoice disputed by the provider"}]})
    reason: str = Field(min_length=1, max_length=2000)
