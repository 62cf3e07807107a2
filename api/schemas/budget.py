"""The programme's budget (docs/API.md#budget)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.base import Resource, omitted_when_none


class CombinedBudget(BaseModel):
    """Every programme's budget of the year added up (docs/API.md#quota-programmes)."""

    model_config = ConfigDict(from_attributes=True)
    programmes: list[str] = Field(description="The programmes added up, the default one first")
    annual: int | None = Field(description="fen; null when any of them is unlimited")
    reserved: int
    granted: int


class Budget(Resource):
    """The programme's annual budget: what every enterprise reserved and was granted in a year."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "budget", "year": 2026, "annual": 5_000_000_000, "reserved": 1_200_000_000,
        "granted": 2_300_000_000, "remaining": 1_500_000_000, "waitlisted": 0, "waitlisted_claims": 0,
        "forecast_exhausted_on": "2026-11-20", "currency": "CNY"}]})
    object: Literal["budget"] = "budget"
    year: int
    annual: int | None = Field(description="fen; null: the policy sets no budget (unlimited)")
    reserved: int = Field(description="fen reserved by verified and flagged claims, all enterprises")
    granted: int = Field(description="fen granted by approved claims, all enterprises")
    remaining: int | None = Field(description="annual − reserved − granted, never below 0; null: unlimited")
    waitlisted: int = Field(description="fen the budget could not fund yet (budget_exhausted)")
    waitlisted_claims: int = Field(description="claims waiting for budget, cut or waitlisted")
    forecast_exhausted_on: date | None = Field(
        description="the day the budget runs out at the pace of the last 90 days' use; null: "
                    "no budget or no use in those days")
    currency: Literal["CNY"] = "CNY"
    combined: CombinedBudget | None = omitted_when_none(
        description="Only when several programmes run (docs/API.md#quota-programmes)")
