"""Finance API for the registry: providers, enterprises, model filings (docs/API.md#registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import current_principal, db_session, ensure_subject, requires, transaction
from api.errors import ApiError, not_found
from api.http import json_body, page_args, parse_model, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas.registry import Enterprise as EnterpriseOut
from api.schemas.registry import EnterpriseIn, EnterprisePatch, FilingIn, ProviderIn, ProviderPatch
from api.schemas.registry import ModelFiling as FilingOut
from api.schemas.registry import Provider as ProviderOut
from kernel import audit
from kernel.db import keyset_page
from kernel.uscc import canonical_uscc
from metering import registry
from metering.models import Enterprise, ModelFiling, Provider
from metering.registry import apply_changes, filings_of

bp = Blueprint("registry", __name__, url_prefix="/v1")

__all__ = ["EnterpriseIn", "EnterprisePatch", "FilingIn", "ProviderIn", "ProviderPatch", "bp"]


def _create(model: type[BaseModel], create: Callable[[Session, dict[str, Any]], Any],
            dump: Callable[[Any], dict[str, Any]]):
    """A registration: the body validated by `model`, created by the registry in one
    transaction (metering.registry), answered 201 with its `dump`."""
    body = parse_model(model, json_body())
    with transaction() as session:
        row = create(session, body.model_dump())
    return dump(row), 201


@doc("Register a compute provider", request=ProviderIn, response=ProviderOut, status=201,
     tags=["providers"], errors={409: "A provider with this id exists"},
     example={"id": "jx-zhisuan", "name": "嘉兴智算中心", "kind": "intelligent_computing",
              "county": "南湖区", "listed_from": "2025-05-13"})
@bp.post("/providers")
@requires("finance")
def create_provider():
    return _create(ProviderIn, registry.create_provider, ProviderOut.dump)


@doc("List providers", response=ListOf(ProviderOut), tags=["providers"], query=PAGE)
@bp.get("/providers")
@requires("finance")
def list_providers():
    limit, after = page_args()
    session = db_session()
    rows, more = keyset_page(session, select(Provider), Provider.id, limit, after)
    return ProviderOut.page(rows, more, "/v1/providers")


@doc("Read a provider", description="A provider key reads only its own.",
     response=ProviderOut, tags=["providers"])
@bp.get("/providers/<provider_id>")
@requires("finance", "provider")
def get_provider(provider_id: str):
    ensure_subject(current_principal(), "provider", provider_id, "provider")
    provider = db_session().get(Provider, provider_id)
    if provider is None:
        raise not_found("provider", provider_id)
    return ProviderOut.dump(provider)


@doc("Change a provider (name, kind, county, catalogue listing)", request=ProviderPatch,
     response=ProviderOut, tags=["providers"], example={"listed_until": "2026-12-31"})
@bp.patch("/providers/<provider_id>")
@requires("finance")
def patch_provider(provider_id: str):
    body = parse_model(ProviderPatch, json_body())
    with transaction() as session:
        provider = session.get(Provider, provider_id)
        if provider is None:
            raise not_found("provider", provider_id)
        changes = apply_changes(provider, body.model_dump(exclude_unset=True))
        if provider.listed_from and provider.listed_until and provider.listed_until < provider.listed_from:
            raise ApiError(422, "invalid_date_range", "listed_until is before listed_from", "listed_until")
        if changes:
            audit.append(session, "provider.updated", "provider", provider_id, *audit.diff(changes))
    return ProviderOut.dump(provider)


@doc("Register an enterprise", request=EnterpriseIn, response=EnterpriseOut, status=201,
     tags=["enterprises"], errors={409: "An enterprise with this USCC exists"},
     example={"uscc": "91330402MA2B7K3X13", "name": "某某智能科技有限公司", "county": "南湖区",
              "eligible": True})
@bp.post("/enterprises")
@requires("finance")
def create_enterprise():
    return _create(EnterpriseIn, registry.create_enterprise,
                   lambda enterprise: EnterpriseOut.dump(enterprise, model_filings=[]))


@doc("List enterprises", response=ListOf(EnterpriseOut), tags=["enterprises"],
     query=[query("county", "Only this county (区/县/市)", example="南湖区"), *PAGE])
@bp.get("/enterprises")
@requires("finance")
def list_enterprises():
    limit, after = page_args()
    county = query_arg("county")
    session = db_session()
    stmt = select(Enterprise)
    if county:
        stmt = stmt.where(Enterprise.county == county)
    rows, more = keyset_page(session, stmt, Enterprise.uscc, limit, after)
    return EnterpriseOut.page(rows, more, "/v1/enterprises")


def _enterprise_or_404(session, uscc: str) -> Enterprise:
    uscc = canonical_uscc(uscc)
    ensure_subject(current_principal(), "enterprise", uscc, "enterprise")
    enterprise = session.get(Enterprise, uscc)
    if enterprise is None:
        raise not_found("enterprise", uscc)
    return enterprise


@doc("Read an enterprise with its model filings",
     description="An enterprise key reads only its own.", response=EnterpriseOut,
     tags=["enterprises"])
@bp.get("/enterprises/<uscc>")
@requires("finance", "enterprise")
def get_enterprise(uscc: str):
    session = db_session()
    enterprise = _enterprise_or_404(session, uscc)
    return EnterpriseOut.dump(enterprise, model_filings=filings_of(session, enterprise.uscc))


@doc("Change an enterprise (name, county, eligibility)", request=EnterprisePatch,
     response=EnterpriseOut, tags=["enterprises"], example={"eligible": False})
@bp.patch("/enterprises/<uscc>")
@requires("finance")
def patch_enterprise(uscc: str):
    body = parse_model(EnterprisePatch, json_body())
    with transaction() as session:
        enterprise = _enterprise_or_404(session, uscc)
        changes = apply_changes(enterprise, body.model_dump(exclude_unset=True))
        if changes:
            audit.append(session, "enterprise.updated", "enterprise", enterprise.uscc, *audit.diff(changes))
    return EnterpriseOut.dump(enterprise, model_filings=filings_of(session, enterprise.uscc))


@doc("Record a generative-AI model filing (生成式人工智能模型备案)",
     description="Raises the enterprise's cap for the filing's year (policy). The same filing "
                 "again answers 200; the same number with other content 409.",
     request=FilingIn, response=FilingOut, status=201, tags=["enterprises"],
     errors={409: "The filing number is recorded with different content"},
     also={200: "The same filing again (idempotent)"},
     example={"filing_no": "Zhejiang-JiaXing-202609-001", "model_name": "禾城大模型",
              "obtained_on": "2026-09-18"})
@bp.post("/enterprises/<uscc>/model-filings")
@requires("finance")
def create_filing(uscc: str):
    body = parse_model(FilingIn, json_body())
    session = db_session()
    try:
        with session.begin():
            enterprise = _enterprise_or_404(session, uscc)
            existing = session.scalars(select(ModelFiling).where(ModelFiling.filing_no == body.filing_no)).first()
            if existing is not None:
                same = (existing.enterprise_uscc, existing.model_name, existing.obtained_on) == (
                    enterprise.uscc, body.model_name, body.obtained_on)
                if same:
                    return FilingOut.dump(existing), 200
                raise ApiError(409, "conflict", f"Filing {body.filing_no!r} is already recorded "
                               "with different content", "filing_no")
            filing = ModelFiling(enterprise_uscc=enterprise.uscc, **body.model_dump())
            session.add(filing)
            session.flush()
            audit.append(session, "model_filing.created", "model_filing", f"mf_{filing.id}",
                         after={"enterprise_uscc": enterprise.uscc, **body.model_dump()})
    except IntegrityError:
        raise ApiError(409, "conflict", f"Filing {body.filing_no!r} already exists", "filing_no") from None
    return FilingOut.dump(filing), 201


@doc("List an enterprise's model filings", response=ListOf(FilingOut), tags=["enterprises"])
@bp.get("/enterprises/<uscc>/model-filings")
@requires("finance", "enterprise")
def list_filings(uscc: str):
    session = db_session()
    enterprise = _enterprise_or_404(session, uscc)
    return FilingOut.page(filings_of(session, enterprise.uscc), False)
