"""The registry: providers, enterprises, model filings (docs/API.md#registry)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from api.schemas.base import USCC_EXAMPLE, Resource, Timestamp, Uscc, omitted_when_none, public_id

PROVIDER_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"
ProviderKind = Literal["intelligent_computing", "supercomputing"]
FilingId = public_id("mf_")


# --- answers ----------------------------------------------------------------------------------

class Provider(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "provider", "id": "jx-zhisuan", "name": "嘉兴智算中心",
        "kind": "intelligent_computing", "county": "南湖区", "listed_from": "2025-05-13",
        "listed_until": None, "created_at": "2026-10-01T02:00:00+00:00"}]})
    object: Literal["provider"] = "provider"
    id: str
    name: str
    kind: ProviderKind
    county: str | None
    listed_from: date | None = Field(description="First day in the city's catalogue")
    listed_until: date | None = Field(description="Last day in the catalogue; null while listed")
    uscc: str | None = Field(default=None, description="The provider's own USCC (related-party check)")
    legal_representative: str | None = Field(default=None, description="法定代表人 (related-party check)")
    created_at: Timestamp


class ModelFiling(Resource):
    object: Literal["model_filing"] = "model_filing"
    id: FilingId
    enterprise_uscc: str
    filing_no: str
    model_name: str
    obtained_on: date = Field(description="Raises the cap for the year it falls in (policy)")


class Enterprise(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "enterprise", "uscc": USCC_EXAMPLE, "id": USCC_EXAMPLE, "name": "某某智能科技有限公司",
        "county": "南湖区", "eligible": True, "created_at": "2026-10-01T02:00:00+00:00"}]})
    object: Literal["enterprise"] = "enterprise"
    uscc: str = Field(description="统一社会信用代码, upper-case")
    id: str = Field(validation_alias="uscc", description="The USCC again, as every object has an id")
    name: str
    county: str | None
    eligible: bool
    legal_representative: str | None = Field(default=None, description="法定代表人 (related-party check)")
    created_at: Timestamp
    model_filings: list[ModelFiling] | None = omitted_when_none(
        description="Only when one enterprise is read")


# --- requests ---------------------------------------------------------------------------------

class _Listing(BaseModel):
    @model_validator(mode="after")
    def _order(self):
        lf, lu = getattr(self, "listed_from", None), getattr(self, "listed_until", None)
        if lf and lu and lu < lf:
            raise PydanticCustomError("invalid_date_range", "listed_until is before listed_from")
        return self


class ProviderIn(_Listing):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=PROVIDER_ID, examples=["jx-zhisuan"])
    name: str = Field(min_length=1, max_length=200)
    kind: ProviderKind
    county: str | None = Field(default=None, max_length=64)
    listed_from: date | None = None
    listed_until: date | None = None
    uscc: Uscc | None = None
    legal_representative: str | None = Field(default=None, min_length=1, max_length=100)


def _not_null(value: object) -> object:
    # Optional in a PATCH means "may be left out", not "may be set to null": these columns
    # always hold a value (null would reach the database as a NOT NULL violation).
    if value is None:
        raise PydanticCustomError("invalid_null", "may be left out but not set to null")
    return value


class ProviderPatch(_Listing):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    kind: ProviderKind | None = None
    county: str | None = Field(default=None, max_length=64)
    listed_from: date | None = None
    listed_until: date | None = None
    uscc: Uscc | None = None
    legal_representative: str | None = Field(default=None, min_length=1, max_length=100)

    _required_columns = field_validator("name", "kind")(_not_null)


class EnterpriseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uscc: Uscc = Field(examples=["91330402MA2B7K3X1X"])
    name: str = Field(min_length=1, max_length=200)
    county: str | None = Field(default=None, max_length=64)
    eligible: bool = True
    legal_representative: str | None = Field(default=None, min_length=1, max_length=100)


class EnterprisePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    county: str | None = Field(default=None, max_length=64)
    eligible: bool | None = None
    legal_representative: str | None = Field(default=None, min_length=1, max_length=100)

    _required_columns = field_validator("name", "eligible")(_not_null)


class FilingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filing_no: str = Field(min_length=1, max_length=100)
    model_name: str = Field(min_length=1, max_length=200)
    obtained_on: date
