"""Finance API for scheduled job runs: `GET /v1/job-runs`, `GET /v1/job-runs/{id}`."""

from __future__ import annotations

from flask import Blueprint

from api.auth import db_session, requires
from api.errors import ApiError, not_found
from api.http import cursor, page_args, query_arg
from api.openapi import PAGE, ListOf, doc, query
from api.schemas.service import JobRun as JobRunOut
from kernel.jobruns import STATUSES, JobRun, list_runs, parse_public_id

bp = Blueprint("jobs", __name__, url_prefix="/v1")


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
    return JobRunOut.page(runs, has_more, "/v1/job-runs")


@doc("Read one job run", response=JobRunOut, tags=["jobs"])
@bp.get("/job-runs/<run_id>")
@requires("finance")
def get_job_run(run_id: str):
    run = db_session().get(JobRun, _run_id(run_id))
    if run is None:
        raise not_found("job run", run_id)
    return JobRunOut.dump(run)
