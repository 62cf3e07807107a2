"""Billing endpoints: invoices, claims, quota, reconciliations, approvals (docs/API.md#invoices, #claims, #quota, #reconciliation)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import (
    acting_for,
    authenticate_and_read,
    authorised_principal,
    current_principal,
    db_session,
    ensure_subject,
    requires,
    transaction,
    where_parties,
)
from api.errors import ApiError, not_found
from api.hotread import balance_of_row, quota_params, quota_with_key
from api.http import (
    cursor,
    json_body,
    page_args,
    parse_model,
    period_and_status,
    period_arg,
    period_query,
    query_arg,
    whole_number,
)
from api.openapi import PAGE, ListOf, doc, query
from api.schemas import billing as out
from api.schemas.billing import (
    ClaimIn,
    DecisionIn,
    InvoiceIn,
    ReconciliationIn,
    RejectIn,
)
from billing import claims as claims_svc
from billing.invoices import submit_invoice
from billing.ledger import Combined, programme_quotas
from billing.lifecycle import close_period, period_view
from billing.models import Claim, ProviderInvoice, Reconciliation
from billing.reconciliation import adjustments_of, reconcile, summarise
from kernel.db import keyset_page, parse_row_id, where_given
from kernel.keys import key_select
from kernel.periods import local_year
from kernel.uscc import canonical_uscc
from kernel.vocabulary import CLAIM_STATUSES, Event
from metering.models import Enterprise

bp = Blueprint("billing", __name__, url_prefix="/v1")


def policy():
    return current_app.extensions["voucher.policy"]


def others():
    """The programmes run beside the default one (docs/POLICY.md#programmes)."""
    return current_app.extensions["voucher.programmes"].others


def programme_arg():
    """The programme `?program=` names (docs/API.md#quota-programmes): the default one when
    left out; an id no configured programme has is a 404 naming `program`."""
    wanted = query_arg("program")
    if wanted is None:
        return policy()
    chosen = current_app.extensions["voucher.programmes"].get(wanted)
    if chosen is None:
        raise not_found("programme", wanted, "program")
    return policy() if chosen.id == policy().id else chosen


def _after_id(prefix: str, value: str | None) -> int | None:
    return cursor(lambda v: parse_row_id(prefix, v, "invoice" if prefix == "inv_" else "claim"), value)


# --- invoices -----------------------------------------------------------------------------

@doc("Submit a provider invoice (发票)", request=InvoiceIn, response=out.ProviderInvoice, status=201,
     description="Idempotent: the same content again answers 200 with the stored invoice; "
                 "different content under the same invoice_no is a 409 (never overwritten).",
     also={200: "The same invoice again"}, errors={409: "Same invoice_no, different content"},
     tags=["invoices"])
@bp.post("/provider-invoices")
@requires("provider", "finance")
def create_invoice():
    body = parse_model(InvoiceIn, json_body())
    provider_id = acting_for(current_principal(), "provider", body.provider_id, "provider_id",
                             "A provider submits its own invoices only")
    session = db_session()
    fields = body.model_dump(exclude={"provider_id"})
    try:
        with session.begin():
            invoice, created = submit_invoice(session, provider_id, **fields)
    except IntegrityError:  # a concurrent identical submission won the race: answer as a replay
        with session.begin():
            invoice, created = submit_invoice(session, provider_id, **fields)
    return out.ProviderInvoice.dump(invoice), 201 if created else 200


@doc("List provider invoices", description="A provider sees its own, an enterprise those addressed "
     "to it, finance all.", response=ListOf(out.ProviderInvoice), tags=["invoices"],
     query=[query("provider", "Provider id"), query("enterprise", "Enterprise USCC"),
            query("period", "YYYY-MM", example="2026-10"), *PAGE])
@bp.get("/provider-invoices")
@requires("provider", "enterprise", "finance")
def list_invoices():
    limit, after = page_args()
    stmt = where_parties(ProviderInvoice, current_principal())
    stmt = where_given(stmt, (ProviderInvoice.period, period_query()))
    rows, more = keyset_page(db_session(), stmt, ProviderInvoice.id, limit, _after_id("inv_", after))
    return out.ProviderInvoice.page(rows, more, "/v1/provider-invoices")


# --- claims -------------------------------------------------------------------------------

@doc("Submit a monthly claim (申领)", request=ClaimIn, response=out.Claim, status=201,
     description="For a past month only. Evaluated by the next reconciliation of its period.",
     errors={422: "period_not_closed, too_many_items, too_many_claims, settlement_mode_disabled"},
     tags=["claims"])
@bp.post("/claims")
@requires("enterprise", "finance")
def create_claim():
    body = parse_model(ClaimIn, json_body())
    named = canonical_uscc(body.enterprise_uscc) if body.enterprise_uscc else None
    uscc = acting_for(current_principal(), "enterprise", named, "enterprise_uscc",
                      "An enterprise claims for itself only")
    with transaction() as session:
        if session.get(Enterprise, uscc) is None:
            raise ApiError(422, "unknown_enterprise", f"Enterprise {uscc} is not registered", "enterprise_uscc")
        claim = claims_svc.submit_claim(session, uscc, body.period,
                                        [i.model_dump() for i in body.items],
                                        [s.model_dump() for s in body.other_subsidies],
                                        current_app.extensions["voucher.claim_limits"],
                                        policy=current_app.extensions["voucher.policy"])
    return out.Claim.dump(claim), 201


def _claim_or_404(session, claim_id: str, *, lock: bool = False) -> Claim:
    try:
        cid = claims_svc.parse_claim_id(claim_id)
    except ValueError:
        raise not_found("claim", claim_id) from None
    claim = (claims_svc.lock_claim(session, policy(), cid) if lock
             else claims_svc.get_claim(session, cid))
    principal = current_principal()
    if claim is None or (principal.role == "enterprise" and claim.enterprise_uscc != principal.subject):
        raise not_found("claim", claim_id)
    return claim


@doc("Read a claim with its items, figures and discrepancies", response=out.Claim, tags=["claims"])
@bp.get("/claims/<claim_id>")
@requires("enterprise", "finance")
def get_claim(claim_id: str):
    return out.Claim.dump(_claim_or_404(db_session(), claim_id))


@doc("List claims", response=ListOf(out.Claim), tags=["claims"],
     query=[query("enterprise", "Enterprise USCC (finance)"), query("period", "YYYY-MM"),
            query("status", "Claim status", enum=list(CLAIM_STATUSES)), *PAGE])
@bp.get("/claims")
@requires("enterprise", "finance")
def list_claims():
    limit, after = page_args()
    stmt = where_parties(Claim, current_principal(), ("enterprise",))
    stmt = where_given(stmt, *period_and_status(Claim, CLAIM_STATUSES))
    rows, more = keyset_page(db_session(), stmt, Claim.id, limit, _after_id("clm_", after))
    return out.Claim.page(rows, more, "/v1/claims")


@doc("Approve a reconciled claim: its reservation becomes granted", request=DecisionIn,
     request_required=False, response=out.Claim, tags=["claims"],
     errors={409: "Not reconciled yet, or already rejected"})
@bp.post("/claims/<claim_id>/approve")
@requires("finance")
def approve_claim(claim_id: str):
    body = parse_model(DecisionIn, json_body(required=False) or {})
    with transaction() as session:
        claim = _claim_or_404(session, claim_id, lock=True)
        claims_svc.approve(session, policy(), claim, body.reason, others())
    return out.Claim.dump(claim)


@doc("Reject a claim: its reservation is released", request=RejectIn, response=out.Claim,
     tags=["claims"], errors={409: "Already approved"})
@bp.post("/claims/<claim_id>/reject")
@requires("finance")
def reject_claim(claim_id: str):
    body = parse_model(RejectIn, json_body())
    with transaction() as session:
        claim = _claim_or_404(session, claim_id, lock=True)
        claims_svc.reject(session, policy(), claim, body.reason, others())
    return out.Claim.dump(claim)


# --- quota --------------------------------------------------------------------------------

@doc("An enterprise's subsidy quota for a year", response=out.Quota, tags=["quota"],
     description="cap, cap basis (standard or new model filing), granted, reserved and remaining.",
     query=[query("year", "Calendar year; the current year in the policy's timezone when omitted",
                  "integer", example=2026),
            query("program", "A programme id (docs/API.md#quota-programmes); the default programme when omitted")])
@bp.get("/enterprises/<uscc>/quota")
@requires("enterprise", "finance", deferred=True)
def get_quota(uscc: str):
    # The hot read: the key and the quota arrive in one statement (one round trip), whether
    # or not the year has a balance row (api/hotread.py, docs/API.md#quota).
    uscc = canonical_uscc(uscc)
    try:
        year = query_arg("year", whole_number)
        if year is None:
            year = local_year(datetime.now(UTC), policy().timezone)
        if not 2000 <= year <= 2100:
            raise ApiError(400, "invalid_query", "year must be a four-digit year", "year")
        programme = programme_arg()
    except ApiError:
        # 401, 403 and another enterprise's 404 come before a bad year, as on every route.
        ensure_subject(authorised_principal(), "enterprise", uscc, "enterprise")
        raise
    principal, row = authenticate_and_read(QUOTA_READ, **quota_params(programme, uscc, year))
    ensure_subject(principal, "enterprise", uscc, "enterprise")
    if row.enterprise is None:
        raise not_found("enterprise", uscc)
    if not others():  # one programme: the one statement above is the whole answer
        return out.Quota.dump(balance_of_row(row, uscc, year))
    covering = programme_quotas(db_session(), current_app.extensions["voucher.programmes"].all, uscc, year) or []
    return out.Quota.dump(balance_of_row(row, uscc, year), combined=Combined.of(covering))


# The key and the quota in one statement; api/fastpath.py runs this same one.
QUOTA_READ = quota_with_key(key_select())


# --- reconciliations ----------------------------------------------------------------------

@doc("Run the monthly reconciliation (steps: docs/API.md#rec-steps)", request=ReconciliationIn, response=out.Reconciliation,
     status=201, also={200: "A re-run: the same result, nothing reserved twice"}, tags=["reconciliations"])
@bp.post("/reconciliations")
@requires("finance")
def run_reconciliation():
    body = parse_model(ReconciliationIn, json_body())
    with transaction() as session:
        run, first = reconcile(session, policy(), body.period, others=others())
    current_app.extensions["voucher.events"].emit(Event.RECONCILED, run)
    return out.Reconciliation.dump(run), 201 if first else 200


@doc("Close a period: its figures become final (docs/API.md#period-close)", response=out.BillingPeriod,
     description="Refused while any claim of the period is undecided. Closing a closed period "
                 "answers it unchanged. Afterwards runs, new usage records, voids, invoices and "
                 "claims of the period are refused with `period_closed`.",
     errors={409: "claims_undecided, redemptions_undecided, or period_not_over"}, tags=["reconciliations"])
@bp.post("/reconciliations/<period>/close")
@requires("finance")
def close_reconciliation_period(period: str):
    period_arg(period, "period")
    with transaction() as session:
        close_period(session, period)
    return out.BillingPeriod.dump(period_view(session, period))


@doc("A reconciliation with every claim's outcome and the clawbacks", response=out.Reconciliation,
     tags=["reconciliations"])
@bp.get("/reconciliations/<period>")
@requires("finance")
def get_reconciliation(period: str):
    period_arg(period, "reconciliation")
    session = db_session()
    run = session.get(Reconciliation, period)
    if run is None:
        raise not_found("reconciliation", period)
    claims = list(session.scalars(select(Claim).where(Claim.period == period).order_by(Claim.id)))
    # Approvals and rejections since the last run change the figures: summarise what is now.
    state = period_view(session, period)
    return out.Reconciliation.dump(run, claims=claims, adjustments=adjustments_of(session, period),
                                   summary=summarise(session, period, claims), state=state.state,
                                   closed_at=state.closed_at)
