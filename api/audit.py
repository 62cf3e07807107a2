"""`GET /v1/audit-events`: the audit trail, for finance."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select

from api.auth import db_session, requires
from api.http import cursor, page_args, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas.service import AuditEvent as AuditEventOut
from kernel.audit import AuditEvent, parse_public_id

bp = Blueprint("audit", __name__, url_prefix="/v1")


@doc("List audit events",
     description="Every state change, oldest first, each chained to the one before by its hash "
                 "(`voucher audit verify` checks the chain).",
     response=ListOf(AuditEventOut), tags=["audit"],
     query=[query("action", "Only this action", example="claim.approved"),
            query("object_type", "Only this kind of object", example="claim"),
            query("object_id", "Only this object", example="clm_17"), *PAGE])
@bp.get("/audit-events")
@requires("finance")
def list_audit_events():
    limit, after = page_args()
    stmt = select(AuditEvent)
    for name in ("action", "object_type", "object_id"):
        value = query_arg(name)
        if value:
            stmt = stmt.where(getattr(AuditEvent, name) == value)
    if after:
        stmt = stmt.where(AuditEvent.seq > cursor(parse_public_id, after))
    rows = list(db_session().scalars(stmt.order_by(AuditEvent.seq).limit(limit + 1)))
    return AuditEventOut.page(rows[:limit], len(rows) > limit, "/v1/audit-events")
