"""Risk registries over HTTP (docs/API.md#risk-registries): contracts (the provider registers,
the enterprise confirms), the price catalogue and related-party links (finance)."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select

from api.auth import current_principal, db_session, ensure_subject, requires
from api.errors import ApiError, not_found
from api.http import cursor, json_body, page_args, parse_model, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas.risk import Contract as ContractOut
from api.schemas.risk import ContractIn, Price, PriceIn, RelatedPartyIn, RelatedPartyOut
from kernel.db import parse_row_id, utcnow
from kernel.uscc import canonical_uscc
from metering import contracts
from metering.contracts import Contract, PriceEntry, RelatedParty
from metering.models import Provider

bp = Blueprint("contracts", __name__, url_prefix="/v1")


def _contract_id(value: str) -> int:
    try:
        return parse_row_id("ctr_", value, "contract")
    except ValueError:
        raise not_found("contract", value) from None


@doc("Register a contract with an enterprise (the provider; unconfirmed until the enterprise confirms)",
     request=ContractIn, response=ContractOut, status=201, tags=["contracts"],
     description="Idempotent: the same contract again answers 200; the same contract_no with other "
                 "content 409. A provider key registers its own contracts; finance names provider_id.",
     also={200: "The same contract again"}, errors={409: "Same contract_no, different content"},
     example={"enterprise_uscc": "91330402MA2B7K3X13", "contract_no": "JXZS-2026-017",
              "signed_on": "2026-01-05", "valid_from": "2026-01-01", "valid_until": "2026-12-31"})
@bp.post("/contracts")
@requires("finance", "provider")
def create_contract():
    body = parse_model(ContractIn, json_body())
    principal = current_principal()
    provider_id = principal.subject if principal.role == "provider" else body.provider_id
    if principal.role == "provider" and body.provider_id not in (None, principal.subject):
        raise ApiError(403, "permission_error", "A provider registers its own contracts", "provider_id")
    if not provider_id:
        raise ApiError(422, "parameter_missing", "provider_id is required", "provider_id")
    session = db_session()
    with session.begin():
        contract, created = contracts.register_contract(session, provider_id, body.model_dump())
    return ContractOut.dump(contract), 201 if created else 200


@doc("List contracts", description="A provider sees its own, an enterprise those made with it.",
     response=ListOf(ContractOut), tags=["contracts"],
     query=[query("provider", "Only this provider"), query("enterprise", "Only this enterprise (USCC)"), *PAGE])
@bp.get("/contracts")
@requires("finance", "provider", "enterprise")
def list_contracts():
    limit, after = page_args()
    principal = current_principal()
    stmt = select(Contract)
    provider = query_arg("provider")
    enterprise = query_arg("enterprise", canonical_uscc)
    if principal.role == "provider":
        provider = principal.subject
    if principal.role == "enterprise":
        enterprise = principal.subject
    if provider:
        stmt = stmt.where(Contract.provider_id == provider)
    if enterprise:
        stmt = stmt.where(Contract.enterprise_uscc == enterprise)
    after_id = cursor(lambda v: parse_row_id("ctr_", v, "contract"), after)
    if after_id:
        stmt = stmt.where(Contract.id > after_id)
    rows = list(db_session().scalars(stmt.order_by(Contract.id).limit(limit + 1)))
    return ContractOut.page(rows[:limit], len(rows) > limit, "/v1/contracts")


@doc("Confirm a contract (the enterprise it was made with)", response=ContractOut, tags=["contracts"],
     description="Usage is covered from valid_from to valid_until (inclusive) once confirmed; "
                 "confirming again changes nothing.")
@bp.post("/contracts/<contract_id>/confirm")
@requires("enterprise")
def confirm_contract(contract_id: str):
    principal = current_principal()
    session = db_session()
    with session.begin():
        contract = contracts.confirm_contract(session, _contract_id(contract_id), principal.subject, utcnow())
    return ContractOut.dump(contract)


@doc("Record a list price in a provider's catalogue (effective-dated)", request=PriceIn, response=Price,
     status=201, tags=["providers"], also={200: "The same entry again"},
     errors={409: "Another price for the same resource, unit and day"},
     example={"resource": "gpu.h800", "unit": "gpu_hour", "unit_price": 1200, "effective_from": "2026-01-01"})
@bp.post("/providers/<provider_id>/prices")
@requires("finance")
def create_price(provider_id: str):
    body = parse_model(PriceIn, json_body())
    session = db_session()
    with session.begin():
        entry, created = contracts.add_price(session, provider_id, body.model_dump())
    return Price.dump(entry), 201 if created else 200


@doc("List a provider's price catalogue", description="A provider key reads only its own.",
     response=ListOf(Price), tags=["providers"])
@bp.get("/providers/<provider_id>/prices")
@requires("finance", "provider")
def list_prices(provider_id: str):
    ensure_subject(current_principal(), "provider", provider_id, "provider")
    session = db_session()
    if session.get(Provider, provider_id) is None:
        raise not_found("provider", provider_id)
    rows = session.scalars(select(PriceEntry).where(PriceEntry.provider_id == provider_id)
                           .order_by(PriceEntry.resource, PriceEntry.unit, PriceEntry.effective_from))
    return Price.page(list(rows), False)


@doc("Record a related-party link between a provider and an enterprise", request=RelatedPartyIn,
     response=RelatedPartyOut, status=201, tags=["related-parties"], also={200: "The same pair again"},
     example={"provider_id": "jx-zhisuan", "enterprise_uscc": "91330402MA2B7K3X13",
              "relation": "同一实际控制人"})
@bp.post("/related-parties")
@requires("finance")
def create_related_party():
    body = parse_model(RelatedPartyIn, json_body())
    session = db_session()
    with session.begin():
        link, created = contracts.add_related_party(session, body.model_dump())
    return RelatedPartyOut.dump(link), 201 if created else 200


@doc("List related-party links", response=ListOf(RelatedPartyOut), tags=["related-parties"], query=PAGE)
@bp.get("/related-parties")
@requires("finance")
def list_related_parties():
    limit, after = page_args()
    after_id = cursor(lambda v: parse_row_id("rel_", v, "related party"), after)
    stmt = select(RelatedParty)
    if after_id:
        stmt = stmt.where(RelatedParty.id > after_id)
    rows = list(db_session().scalars(stmt.order_by(RelatedParty.id).limit(limit + 1)))
    return RelatedPartyOut.page(rows[:limit], len(rows) > limit, "/v1/related-parties")
