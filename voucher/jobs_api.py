"""Finance API for scheduled job runs: `GET /v1/job-runs`, `GET /v1/job-runs/{id}`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from voucher.auth import db_session, requires
from voucher.errors import ApiError, not_found
from voucher.http import cursor, list_envelope, page_args, query_arg
from voucher.jobs import STATUSES, JobRun, job_run_json, list_runs, parse_public_id
from voucher.openapi import PAGE, ListOf, doc, query

bp = Blueprint("jobs", __name__, url_prefix="/v1")


class JobRunOut(BaseModel):
    """A scheduled run of one job for one period (SPEC §6 job run)."""

    model_config = ConfigDict(title="JobRun", json_schema_extra={"examples": [{
        "object": "job_run", "id": "jr_12", "job": "reconcile", "period": "2026-10",
        "status": "succeeded", "started_at": "2026-10-31T18:00:00Z",
        "finished_at": "2026-10-31T18:00:04Z", "process": "sched-1:4120", "error": None,
        "attempt": 1, "heartbeat_at": "2026-10-31T18:00:04Z", "result": {"claims": 41}}]})
    object: Literal["job_run"]
    id: str = Field(description="jr_…, the `starting_after` cursor")
    job: str = Field(description="pull, reconcile, statements")
    period: str = Field(description="YYYY-MM for monthly jobs; YYYY-MM-DDTHH:MM (Asia/Shanghai "
                                    "fire minute) for pull")
    status: Literal["running", "succeeded", "failed"]
    started_at: datetime = Field(description="Start of the latest attempt")
    finished_at: datetime | None
    process: str = Field(description="hostname:pid of the latest attempt")
    error: str | None = Field(description="Why the run failed (exception, or crash detected)")
    attempt: int = Field(ge=1, description="1, then +1 per `voucher jobs rerun`")
    heartbeat_at: datetime = Field(description="Refreshed while the run works")
    result: Any = Field(default=None, description="What the job returned (a summary); on a "
                        "failed run, what it got done if it says (statements: the counts)")


def _run_id(value: str) -> int:
    try:
        return parse_public_id(value)
    except ValueError:
        raise not_found("job run", value) from None


@doc("List scheduled job runs",
     description="Oldest first. Each (job, period) has one run; a re-run is a new attempt of "
                 "the same run. A run left `running` by a crashed process turns `failed` once "
                 "a scheduler notices (dead pid or silent heartbeat).",
     response=ListOf(JobRunOut), tags=["jobs"],
     query=[query("job", "Job name", example="reconcile"),
            query("status", "Run status", enum=list(STATUSES)),
            query("period", "Exact period key", example="2026-10"), *PAGE])
@bp.get("/job-runs")
@requires("finance")
def list_job_runs():
    status = query_arg("status")
    if status and status not in STATUSES:
        raise ApiError(400, "invalid_query", f"status must be one of {', '.join(STATUSES)}",
                       "status")
    limit, after = page_args()
    after_id = cursor(parse_public_id, after)
    runs, has_more = list_runs(db_session(), job=query_arg("job"), status=status,
                               period=query_arg("period"), limit=limit, after_id=after_id)
    return list_envelope([job_run_json(r) for r in runs], has_more, "/v1/job-runs")


@doc("Read one job run", response=JobRunOut, tags=["jobs"])
@bp.get("/job-runs/<run_id>")
@requires("finance")
def get_job_run(run_id: str):
    run = db_session().get(JobRun, _run_id(run_id))
    if run is None:
        raise not_found("job run", run_id)
    return job_run_json(run)
