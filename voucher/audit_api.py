"""`GET /v1/audit-events`: the audit trail, for finance."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, Field
from sqlalchemy import select

from voucher.audit import AuditEvent, event_json, parse_public_id
from voucher.auth import db_session, requires
from voucher.http import cursor, list_envelope, page_args, query_arg
from voucher.openapi import PAGE, ListOf, doc, query

bp = Blueprint("audit", __name__, url_prefix="/v1")


class AuditActor(BaseModel):
    key_id: str | None = Field(description="The API key that acted; null for cli/scheduler/system")
    role: str = Field(description="finance, provider, enterprise, cli, scheduler or system")


class AuditEventOut(BaseModel):
    """One entry of the hash-chained audit trail."""

    object: Literal["audit_event"]
    id: str = Field(examples=["aud_42"])
    seq: int = Field(description="Position in the chain: 1, 2, 3, … without gaps")
    at: datetime
    actor: AuditActor
    request_id: str
    action: str = Field(examples=["claim.approved"])
    object_type: str = Field(examples=["claim"])
    object_id: str = Field(examples=["clm_17"])
    before: Any = Field(description="The changed fields before the change (null for a creation)")
    after: Any = Field(description="The changed fields after the change")
    prev_hash: str = Field(description="hash of the entry before (64 zeros for the first)")
    hash: str = Field(description="sha256 of this entry's canonical JSON, prev_hash included")


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
    return list_envelope([event_json(r) for r in rows[:limit]], len(rows) > limit, "/v1/audit-events")
