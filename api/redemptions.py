"""Redemption endpoints (核销): authorise, capture, void, decide, list; quarterly settlements and
their payment files (docs/API.md#redemptions, #settlements). Thin: parse, call one service of
billing/redemptions.py or billing/settlements.py, render."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from flask import Blueprint, current_app, send_file
from sqlalchemy.exc import IntegrityError

from api.auth import current_principal, db_session, requires, transaction, where_parties
from api.errors import ApiError, not_found
from api.http import cursor, json_body, page_args, parse_model, period_and_status, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas import redemptions as out
from api.schemas.redemptions import CaptureIn, RedemptionDecisionIn, RedemptionIn, SettlementIn
from billing import redemptions as svc
from billing import settlements
from billing.redemption_models import Redemption, SettlementBatch
from billing.reports import FORMATS
from kernel.db import keyset_page, where_given
from kernel.vocabulary import REDEMPTION_STATUSES

bp = Blueprint("redemptions", __name__, url_prefix="/v1")
SPOOL_BYTES = 8 * 1024 * 1024


def policy():
    return current_app.extensions["voucher.policy"]


# --- redemptions ----------------------------------------------------------------------------------

@doc("Authorise a redemption: hold the subsidy on the enterprise's quota at once", request=RedemptionIn,
     response=out.Redemption, status=201, tags=["redemptions"],
     description="subsidy = min(round_half_up(list_amount × rate), remaining), held at once (the quota's "
                 "`reserved` counts it); a partial hold when the quota is short. Idempotent by (provider, "
                 "reference): the same request again answers 200 with the stored redemption.",
     also={200: "The same reference and request again"},
     errors={409: "reference_conflict, or period_closed",
             422: "quota_exhausted, budget_exhausted, unknown_enterprise, enterprise_not_eligible, "
                  "outside_policy_window, settlement_mode_disabled"})
@bp.post("/redemptions")
@requires("provider")
def authorize_redemption():
    provider_id = current_principal().subject
    body = parse_model(RedemptionIn, json_body())
    args = (provider_id, body.enterprise_uscc, body.reference, body.list_amount, body.period)
    session = db_session()
    try:
        with session.begin():
            r, created = svc.authorize(session, policy(), *args)
    except IntegrityError:  # the same reference won a race on another balance row: answer as a replay
        with session.begin():
            r, created = svc.authorize(session, policy(), *args)
    return out.Redemption.dump(r), 201 if created else 200


def _act(redemption_id: str, action: Callable[..., object], *args: object):
    """`action(session, policy, redemption, *args)` on the redemption, locked, in one
    transaction; answers the redemption as it then stands."""
    with transaction() as session:
        r = _redemption_or_404(session, redemption_id, lock=True)
        action(session, policy(), r, *args)
    return out.Redemption.dump(r)


def _reason(*, required: bool = False) -> str | None:
    """A decision body's reason (RedemptionDecisionIn); a `required` one must not be blank (422)."""
    body = parse_model(RedemptionDecisionIn, json_body(required=False) or {})
    if required and not (body.reason or "").strip():
        raise ApiError(422, "reason_required", "A rejection needs a reason", "reason")
    return body.reason


def _redemption_or_404(session, redemption_id: str, *, lock: bool = False) -> Redemption:
    try:
        rid = svc.parse_redemption_id(redemption_id)
    except ValueError:
        raise not_found("redemption", redemption_id) from None
    r = svc.lock_redemption(session, policy(), rid) if lock else svc.get(session, rid)
    principal = current_principal()
    if r is None or (principal.role == "provider" and r.provider_id != principal.subject) or \
            (principal.role == "enterprise" and r.enterprise_uscc != principal.subject):
        raise not_found("redemption", redemption_id)
    return r


@doc("Read a redemption", response=out.Redemption, tags=["redemptions"],
     description="A provider reads its own, an enterprise those on its quota, finance all.")
@bp.get("/redemptions/<redemption_id>")
@requires("provider", "enterprise", "finance")
def get_redemption(redemption_id: str):
    return out.Redemption.dump(_redemption_or_404(db_session(), redemption_id))


@doc("List redemptions", response=ListOf(out.Redemption), tags=["redemptions"],
     description="A provider sees its own, an enterprise the holds on its quota, finance all.",
     query=[query("provider", "Provider id"), query("enterprise", "Enterprise USCC"),
            query("period", "YYYY-MM"), query("status", "Redemption status",
                                              enum=[s.value for s in REDEMPTION_STATUSES]),
            query("settlement", "Settlement id (stl_…)"), *PAGE])
@bp.get("/redemptions")
@requires("provider", "enterprise", "finance")
def list_redemptions():
    limit, after = page_args()
    stmt = where_parties(Redemption, current_principal())
    stmt = where_given(stmt, *period_and_status(Redemption, REDEMPTION_STATUSES),
                       (Redemption.settlement_id,
                        query_arg("settlement", settlements.parse_settlement_id)))
    after_id = cursor(svc.parse_redemption_id, after)
    rows, more = keyset_page(db_session(), stmt, Redemption.id, limit, after_id)
    return out.Redemption.page(rows, more, "/v1/redemptions")


@doc("Capture a redemption with its full-amount invoice", request=CaptureIn, response=out.Redemption,
     tags=["redemptions"],
     description="The subsidy is recomputed on the captured amount (≤ list_amount), never above the "
                 "hold; the rest of the hold is released. The same capture again answers it unchanged.",
     errors={409: "redemption_not_authorized, redemption_expired, invoice_already_redeemed, period_closed",
             422: "amount_above_list"})
@bp.post("/redemptions/<redemption_id>/capture")
@requires("provider")
def capture_redemption(redemption_id: str):
    body = parse_model(CaptureIn, json_body())
    return _act(redemption_id, svc.capture, body.invoice_no, body.amount)


@doc("Void an authorised redemption: its hold is released", response=out.Redemption, tags=["redemptions"],
     errors={409: "Already captured, expired or settled"})
@bp.post("/redemptions/<redemption_id>/void")
@requires("provider", "finance")
def void_redemption(redemption_id: str):
    json_body(required=False)
    return _act(redemption_id, svc.void)


@doc("Accept a flagged redemption for settlement (a reason required)", request=RedemptionDecisionIn,
     response=out.Redemption, tags=["redemptions"], errors={409: "Not flagged"})
@bp.post("/redemptions/<redemption_id>/approve")
@requires("finance")
def approve_redemption(redemption_id: str):
    return _act(redemption_id, svc.approve, _reason())


@doc("Reject a captured or flagged redemption: its hold is released", request=RedemptionDecisionIn,
     response=out.Redemption, tags=["redemptions"], errors={409: "Not captured, or settled"})
@bp.post("/redemptions/<redemption_id>/reject")
@requires("finance")
def reject_redemption(redemption_id: str):
    return _act(redemption_id, svc.reject, _reason(required=True) or "")


# --- settlements ----------------------------------------------------------------------------------

@doc("Build the quarter's settlement batches (one per provider)", request=SettlementIn,
     response=ListOf(out.Settlement), tags=["settlements"],
     description="Each provider's captured, clean redemptions of the quarter join its pending batch; "
                 "an approved batch is final. The same call again adds only what cleared since.")
@bp.post("/settlements")
@requires("finance")
def build_settlements():
    body = parse_model(SettlementIn, json_body())
    with transaction() as session:
        batches = settlements.build(session, policy(), body.quarter, body.provider_id)
        answer = out.Settlement.page(batches, False, "/v1/settlements")
    return answer


def _settlement_or_404(session, settlement_id: str) -> SettlementBatch:
    try:
        sid = settlements.parse_settlement_id(settlement_id)
    except ValueError:
        raise not_found("settlement", settlement_id) from None
    batch = session.get(SettlementBatch, sid)
    principal = current_principal()
    if batch is None or (principal.role == "provider" and batch.provider_id != principal.subject):
        raise not_found("settlement", settlement_id)
    return batch


@doc("List settlement batches", response=ListOf(out.Settlement), tags=["settlements"],
     description="A provider sees its own, finance all.",
     query=[query("quarter", "YYYYQn"), query("provider", "Provider id"), *PAGE])
@bp.get("/settlements")
@requires("provider", "finance")
def list_settlements():
    limit, after = page_args()
    stmt = where_parties(SettlementBatch, current_principal(), ("provider",))
    stmt = where_given(stmt, (SettlementBatch.quarter, query_arg("quarter")))
    after_id = cursor(settlements.parse_settlement_id, after)
    rows, more = keyset_page(db_session(), stmt, SettlementBatch.id, limit, after_id)
    return out.Settlement.page(rows, more, "/v1/settlements")


@doc("Read a settlement batch", response=out.Settlement, tags=["settlements"])
@bp.get("/settlements/<settlement_id>")
@requires("provider", "finance")
def get_settlement(settlement_id: str):
    return out.Settlement.dump(_settlement_or_404(db_session(), settlement_id))


@doc("Approve a settlement batch: its redemptions are settled (granted on the quota)",
     response=out.Settlement, tags=["settlements"], errors={409: "settlement_empty"})
@bp.post("/settlements/<settlement_id>/approve")
@requires("finance")
def approve_settlement(settlement_id: str):
    json_body(required=False)
    with transaction() as session:
        batch = _settlement_or_404(session, settlement_id)
        settlements.approve(session, policy(), batch.id, current_principal().key_id)
    return out.Settlement.dump(batch)


def _payment_file(settlement_id: str, fmt: str):
    session = db_session()
    batch = _settlement_or_404(session, settlement_id)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    settlements.write_payment_file(session, batch, fmt, spool)
    name = settlements.filename(batch, fmt)
    session.rollback()
    spool.seek(0)
    return send_file(spool, mimetype=FORMATS[fmt], as_attachment=True, download_name=name, max_age=0)


@doc("Download a batch's payment file as CSV", tags=["settlements"], response_content_type=FORMATS["csv"],
     description="One row per redemption and a total row; amounts in integer fen (and yuan); UTF-8 with a "
                 "byte-order mark; text cells never formulas.")
@bp.get("/settlements/<settlement_id>/payment.csv")
@requires("finance")
def payment_csv(settlement_id: str):
    return _payment_file(settlement_id, "csv")


@doc("Download a batch's payment file as an Excel workbook", tags=["settlements"],
     response_content_type=FORMATS["xlsx"],
     description="The same rows as the CSV with Chinese and English headers; text cells never formulas.")
@bp.get("/settlements/<settlement_id>/payment.xlsx")
@requires("finance")
def payment_xlsx(settlement_id: str):
    return _payment_file(settlement_id, "xlsx")
