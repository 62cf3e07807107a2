"""Risk review (docs/API.md#risk): a claim's risk, contracts, the price catalogue and
related-party links — the answers and the request bodies."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from api.schemas.base import USCC_EXAMPLE as USCC
from api.schemas.base import Resource, Timestamp, Uscc, public_id

ContractId = public_id("ctr_")
PriceId = public_id("prc_")
RelatedPartyId = public_id("rel_")
SignalCode = Literal["price_above_catalogue", "no_contract", "related_party", "ineligible_resource",
                     "usage_spike"]


class Signal(BaseModel):
    """One risk signal with its figures (fields vary by code) and a plain-language explanation."""

    model_config = ConfigDict(extra="allow")
    code: SignalCode
    weight: int = Field(ge=0, le=100, description="The policy's weight of this signal ([risk.weights])")
    message: str = Field(description="What was found, in English")
    message_zh: str = Field(description="The same in Chinese")


class Risk(BaseModel):
    """A claim's risk: the sum of its signals' weights, at most 100. Never changes an amount."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"score": 30, "signals": [{
        "code": "no_contract", "weight": 30, "amount": 120000, "providers": {"jx-zhisuan": 120000},
        "message": "120000 fen of usage with jx-zhisuan is not covered by a confirmed contract",
        "message_zh": "与jx-zhisuan的120000分用量没有已确认的合同覆盖"}]}]})
    score: int = Field(ge=0, le=100)
    signals: list[Signal]


# --- contracts --------------------------------------------------------------------------------

class Contract(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "contract", "id": "ctr_3", "provider_id": "jx-zhisuan", "enterprise_uscc": USCC,
        "contract_no": "JXZS-2026-017", "signed_on": "2026-01-05", "valid_from": "2026-01-01",
        "valid_until": "2026-12-31", "confirmed": True, "confirmed_at": "2026-01-06T02:00:00+00:00",
        "created_at": "2026-01-05T02:00:00+00:00"}]})
    object: Literal["contract"] = "contract"
    id: ContractId
    provider_id: str
    enterprise_uscc: str
    contract_no: str
    signed_on: date
    valid_from: date = Field(description="First day covered (inclusive, Shanghai date)")
    valid_until: date = Field(description="Last day covered (inclusive)")
    confirmed_at: Timestamp | None = Field(description="When the enterprise confirmed it; null until then")
    created_at: Timestamp


class ContractIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider_id: str | None = Field(default=None, description="Finance only: the provider; a provider "
                                                               "key registers its own")
    enterprise_uscc: Uscc = Field(examples=[USCC])
    contract_no: str = Field(min_length=1, max_length=100)
    signed_on: date
    valid_from: date
    valid_until: date

    @model_validator(mode="after")
    def _order(self):
        if self.valid_until < self.valid_from:
            raise PydanticCustomError("invalid_date_range", "valid_until is before valid_from")
        return self


# --- price catalogue --------------------------------------------------------------------------

Resource_ = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class Price(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "price", "id": "prc_1", "provider_id": "jx-zhisuan", "resource": "gpu.h800",
        "unit": "gpu_hour", "unit_price": 1200, "currency": "CNY", "effective_from": "2026-01-01",
        "created_at": "2026-01-01T02:00:00+00:00"}]})
    object: Literal["price"] = "price"
    id: PriceId
    provider_id: str
    resource: str
    unit: str
    unit_price: int = Field(description="List price, fen per unit")
    currency: Literal["CNY"] = "CNY"
    effective_from: date = Field(description="In force from this Shanghai date until the next entry's")
    created_at: Timestamp


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resource: Resource_ = Field(examples=["gpu.h800"])
    unit: str = Field(min_length=1, max_length=16, examples=["gpu_hour"])
    unit_price: int = Field(gt=0, le=10**12, strict=True, description="Fen per unit")
    effective_from: date


# --- related parties --------------------------------------------------------------------------

class RelatedPartyOut(Resource):
    object: Literal["related_party"] = "related_party"
    id: RelatedPartyId
    provider_id: str
    enterprise_uscc: str
    relation: str
    created_at: Timestamp


class RelatedPartyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider_id: str = Field(min_length=1, max_length=63)
    enterprise_uscc: Uscc = Field(examples=[USCC])
    relation: str = Field(min_length=1, max_length=200, examples=["同一实际控制人"])
