"""Risk review in the console (docs/API.md#risk): the month's claims by risk for finance, and
the registries the signals read (docs/API.md#risk-registries) — the provider registers a
contract, the enterprise confirms it, finance records list prices and related-party links.

Thin like the rest of the console: the same request models as the API check the forms, the
same services (metering/contracts.py) write, each in its own transaction.
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from api.auth import db_session
from api.schemas.risk import ContractIn, PriceIn, RelatedPartyIn
from billing.models import Claim
from console.i18n import _, current_lang
from console.security import current_user, login_required
from console.views import (
    _period_or_404,
    bp,
    claim_codes,
    database,
    end_reads,
    parse_yuan,
    provider_names,
    service_error,
)
from kernel.db import parse_row_id, utcnow
from kernel.errors import DomainError
from kernel.vocabulary import Discrepancy
from metering import contracts
from metering.contracts import Contract, PriceEntry, RelatedParty
from metering.models import Enterprise, Provider

_TEXT = ("code", "weight", "message", "message_zh")


def signal_view(signal: dict[str, Any]) -> dict[str, Any]:
    """A signal as the page shows it: its explanation in the reader's language and its figures."""
    figures = {k: v for k, v in signal.items() if k not in _TEXT}
    return {"code": signal["code"], "weight": signal["weight"], "figures": figures,
            "message": signal["message_zh"] if current_lang() == "zh" else signal["message"]}


def risk_rows(claims: list[Claim]) -> list[dict[str, Any]]:
    """The month's claims by risk: the highest score first, then by id; unreconciled ones last."""
    rows = [{"claim": c, "score": (c.risk or {}).get("score"),
             "signals": [signal_view(s) for s in (c.risk or {}).get("signals", [])],
             "review": Discrepancy.RISK_REVIEW in claim_codes(c)} for c in claims]
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0), r["claim"].id))
    return rows


@bp.get("/reconciliations/<period>/risk")
@login_required("finance")
def risk(period: str):
    _period_or_404(period)
    s = db_session()
    claims = list(s.scalars(select(Claim).where(Claim.period == period).order_by(Claim.id)))
    usccs = {c.enterprise_uscc for c in claims}
    ents = dict(s.execute(select(Enterprise.uscc, Enterprise.name).where(Enterprise.uscc.in_(usccs))).all()) \
        if usccs else {}
    rows = risk_rows(claims)
    return render_template("console/risk.html", period=period, rows=rows, ents=ents,
                           names=provider_names(s, {i.provider_id for c in claims for i in c.items}),
                           review=sum(1 for r in rows if r["review"]), active="reconciliation")


# --- the registries ---------------------------------------------------------------------------

def _form(model: type[BaseModel], fields: tuple[str, ...], **extra: Any) -> BaseModel:
    """The form's fields through the API's request model; a refusal names the field."""
    values = {k: request.form.get(k, "").strip() or None for k in fields}
    try:
        return model.model_validate({**values, **extra})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ())) or "form"
        raise _Refused(_("%(field)s：%(error)s", field=field, error=err.get("msg", ""))) from None


class _Refused(Exception):
    """A form the service refused; the message is in the reader's language."""


def _write(action, done: str, back: str, **back_args: Any):
    """Run `action(session)` in its own transaction; flash what happened and go back (PRG)."""
    end_reads()
    try:
        with database().session() as ws, ws.begin():
            action(ws)
    except DomainError as exc:
        flash(service_error(exc), "error")
    else:
        flash(done, "success")
    return redirect(url_for(back, **back_args))


def _refused(exc: _Refused, back: str, **back_args: Any):
    flash(str(exc), "error")
    return redirect(url_for(back, **back_args))


@bp.get("/contracts")
@login_required("provider", "enterprise", "finance")
def contracts_page():
    user = current_user()
    s = db_session()
    stmt = select(Contract)
    if user.role == "provider":
        stmt = stmt.where(Contract.provider_id == user.subject)
    elif user.role == "enterprise":
        stmt = stmt.where(Contract.enterprise_uscc == user.subject)
    rows = list(s.scalars(stmt.order_by(Contract.valid_from.desc(), Contract.id.desc()).limit(500)))
    ents = {c.enterprise_uscc for c in rows}
    names = dict(s.execute(select(Enterprise.uscc, Enterprise.name).where(Enterprise.uscc.in_(ents))).all()) \
        if ents else {}
    return render_template("console/contracts.html", contracts=rows, ents=names,
                           providers=provider_names(s, {c.provider_id for c in rows}), active="contracts")


@bp.post("/contracts")
@login_required("provider")
def register_contract():
    provider_id = current_user().subject
    try:
        body = _form(ContractIn, ("enterprise_uscc", "contract_no", "signed_on", "valid_from", "valid_until"))
    except _Refused as exc:
        return _refused(exc, ".contracts_page")
    values = body.model_dump()
    return _write(lambda ws: contracts.register_contract(ws, provider_id, values),
                  _("合同 %(no)s 已登记，待企业确认。", no=values["contract_no"]), ".contracts_page")


@bp.post("/contracts/<contract_id>/confirm")
@login_required("enterprise")
def confirm_contract(contract_id: str):
    try:
        ident = parse_row_id("ctr_", contract_id, "contract")
    except ValueError:
        abort(404)
    uscc = current_user().subject
    row = db_session().get(Contract, ident)
    if row is None or row.enterprise_uscc != uscc:
        abort(404)  # another's contract is no such page, as in the API
    return _write(lambda ws: contracts.confirm_contract(ws, ident, uscc, utcnow()),
                  _("合同 %(no)s 已确认。", no=row.contract_no), ".contracts_page")


@bp.get("/risk-registry")
@login_required("finance")
def risk_registry():
    s = db_session()
    providers = list(s.scalars(select(Provider).order_by(Provider.id)))
    prices = list(s.scalars(select(PriceEntry).order_by(PriceEntry.provider_id, PriceEntry.resource,
                                                        PriceEntry.unit, PriceEntry.effective_from)))
    links = list(s.scalars(select(RelatedParty).order_by(RelatedParty.id)))
    usccs = {x.enterprise_uscc for x in links}
    ents = dict(s.execute(select(Enterprise.uscc, Enterprise.name).where(Enterprise.uscc.in_(usccs))).all()) \
        if usccs else {}
    return render_template("console/risk_registry.html", providers=providers, prices=prices, links=links,
                           ents=ents, names={p.id: p.name for p in providers}, active="risk_registry")


@bp.post("/prices")
@login_required("finance")
def record_price():
    provider_id = request.form.get("provider_id", "")
    try:
        body = _form(PriceIn, ("resource", "unit", "effective_from"),
                     unit_price=_fen(request.form.get("unit_price", "")))
    except _Refused as exc:
        return _refused(exc, ".risk_registry")
    values = body.model_dump()
    return _write(lambda ws: contracts.add_price(ws, provider_id, values),
                  _("已记录 %(id)s 的目录价。", id=provider_id), ".risk_registry")


@bp.post("/related-parties")
@login_required("finance")
def record_related_party():
    try:
        body = _form(RelatedPartyIn, ("provider_id", "enterprise_uscc", "relation"))
    except _Refused as exc:
        return _refused(exc, ".risk_registry")
    values = body.model_dump()
    return _write(lambda ws: contracts.add_related_party(ws, values),
                  _("已记录关联关系。"), ".risk_registry")


def _fen(text: str) -> int:
    """A list price in yuan (up to 2 decimals, "12" or "12.50") as fen."""
    try:
        return parse_yuan(text)
    except ValueError:
        raise _Refused(_("目录价应为元，最多两位小数，如 12.50。")) from None
