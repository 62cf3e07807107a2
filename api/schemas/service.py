"""Operations: health, readiness, API keys, scheduled job runs, the audit trail (docs/API.md#jobs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.schemas.base import Resource, Timestamp, ZTimestamp, _Overlay, omitted_when_none, public_id

Role = Literal["finance", "provider", "enterprise"]
JobRunId = public_id("jr_")
AuditEventId = public_id("aud_")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


# --- API keys ---------------------------------------------------------------------------------

class ApiKey(Resource):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "api_key", "id": "key_3f9c2a7d1b", "role": "provider", "subject": "jx-zhisuan",
        "created_at": "2026-10-01T02:00:00+00:00", "revoked_at": None,
        "key": "vk_live_…(shown once)"}]})
    object: Literal["api_key"] = "api_key"
    id: str
    role: Role
    subject: str | None = Field(description="Provider id or enterprise USCC; null for finance")
    created_at: Timestamp
    revoked_at: Timestamp | None
    key: str | None = omitted_when_none(description="The secret, only in the answer to its "
                                        "creation; it is stored as a hash and never shown again")


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    subject: str | None = Field(default=None, description="provider id or enterprise USCC")
    # Whether the role needs a subject, and that it is registered, is checked against the
    # database by api.service.check_subject (the CLI's `voucher keys create` uses it too).


# --- scheduled jobs -----------------------------------------------------------------------------

class JobRun(Resource):
    """A scheduled run of one job for one period (docs/API.md#jobs)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "job_run", "id": "jr_12", "job": "reconcile", "period": "2026-10",
        "status": "succeeded", "started_at": "2026-10-31T18:00:00Z",
        "finished_at": "2026-10-31T18:00:04Z", "process": "sched-1:4120", "error": None,
        "attempt": 1, "heartbeat_at": "2026-10-31T18:00:04Z", "result": {"claims": 41}}]})
    object: Literal["job_run"] = "job_run"
    id: JobRunId = Field(description="jr_…, the `starting_after` cursor")
    job: str = Field(description="pull, reconcile, statements")
    period: str = Field(description="YYYY-MM for monthly jobs; YYYY-MM-DDTHH:MM (Asia/Shanghai "
                                    "fire minute) for pull")
    status: Literal["running", "succeeded", "failed"]
    started_at: ZTimestamp = Field(description="Start of the latest attempt")
    finished_at: ZTimestamp | None
    process: str = Field(description="hostname:pid of the latest attempt")
    error: str | None = Field(description="Why the run failed (exception, or crash detected)")
    attempt: int = Field(ge=1, description="1, then +1 per `voucher jobs rerun`")
    heartbeat_at: ZTimestamp = Field(description="Refreshed while the run works")
    result: Any = Field(description="What the job returned (a summary); on a "
                        "failed run, what it got done if it says (statements: the counts)")


# --- the audit trail ------------------------------------------------------------------------------

class AuditActor(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    key_id: str | None = Field(validation_alias="actor_key_id",
                               description="The API key that acted; null for cli/scheduler/system")
    role: str = Field(validation_alias="actor_role",
                      description="finance, provider, enterprise, cli, scheduler or system")


class AuditEvent(Resource):
    """One entry of the hash-chained audit trail."""

    object: Literal["audit_event"] = "audit_event"
    id: AuditEventId = Field(validation_alias="seq", examples=["aud_42"])
    seq: int = Field(description="Position in the chain: 1, 2, 3, … without gaps")
    at: Timestamp
    actor: AuditActor
    request_id: str
    action: str = Field(examples=["claim.approved"])
    object_type: str = Field(examples=["claim"])
    object_id: str = Field(examples=["clm_17"])
    before: Any = Field(description="The changed fields before the change (null for a creation)")
    after: Any = Field(description="The changed fields after the change")
    prev_hash: str = Field(description="hash of the entry before (64 zeros for the first)")
    hash: str = Field(description="sha256 of this entry's canonical JSON, prev_hash included")

    @model_validator(mode="before")
    @classmethod
    def _actor_of_row(cls, row: Any) -> Any:
        # The row keeps the actor flat (actor_key_id, actor_role); the answer nests it.
        return row if isinstance(row, dict) else _Overlay(row, {"actor": row})
