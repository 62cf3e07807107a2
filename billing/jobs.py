"""Billing job entry points, run by `kernel.jobruns.run_once` (docs/API.md#jobs).

Each returns a JSON-able summary, stored on the job run. Both receive their collaborators —
`reconcile_job(db, period, policy)`, `statements_job(db, period, payments, policy)` with the
payment back-end (the `billing.settlement.Payments` port) — which the composition root builds
from the settings (`voucher.scheduler.reconcile_job` / `statements_job`): billing never reads
the settings nor builds a payment client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from billing.policy import Policy
from billing.settlement import Payments
from kernel.db import Database


class StatementsIncomplete(RuntimeError):
    """Some statements of the period are not issued (failed, or waiting for claim decisions).

    The run is marked failed, with the summary kept as its result (`result`), so that
    `voucher jobs rerun statements PERIOD` issues the rest once their cause is gone.
    """

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def reconcile_job(db: Database, period: str, policy: Policy, others: Sequence[Policy] = ()) -> dict[str, Any]:
    """Reconcile `period` under `policy` (and the programmes run beside it, `others`:
    docs/POLICY.md#programmes) in one transaction; returns the reconciliation summary."""
    from billing.reconciliation import reconcile

    with db.session() as session, session.begin():
        run, first_time = reconcile(session, policy, period, others=others)
        return {"period": period, "runs": run.runs, "first_time": first_time,
                "policy_id": run.policy_id, **run.summary}


def reconcile_open_job(db: Database, day: str, policy: Policy, others: Sequence[Policy] = ()) -> dict[str, Any]:
    """The daily run (docs/API.md#period-close): re-run every open period, close the due ones.

    `day` is the fire's date (YYYY-MM-DD, Asia/Shanghai), the job run's key: one run per day
    across every scheduler process. Raises billing.lifecycle.PeriodsIncomplete (with the
    summary) when a period failed, so the run is failed and `voucher jobs rerun` retries it.
    """
    from billing.lifecycle import run_open_periods

    return run_open_periods(db, policy, day, others)


def statements_job(db: Database, period: str, payments: Payments, policy: Policy) -> dict[str, Any]:
    """Issue the statements of `period` under `policy` through `payments` (the back-end).

    Raises StatementsIncomplete when any statement failed (after trying every one) or waits
    for claims still undecided, so the run is recorded as failed and a re-run issues exactly
    the missing ones (finalized statements are never touched again).
    """
    from billing.statements import issue_statements

    summary = issue_statements(db, policy, period, payments)
    if not summary["complete"]:
        raise StatementsIncomplete(incomplete_message(summary), summary)
    return summary


def incomplete_message(summary: dict[str, Any]) -> str:
    """Why a statement run left statements of its period unissued, and what to do."""
    period = summary["period"]
    missing = summary["failed"] + summary["not_attempted"] + summary["pending"]
    parts = [f"{missing} of {summary['enterprises']} statements of {period} not issued"]
    if summary["failed"] or summary["not_attempted"]:
        first = summary["errors"][0]
        parts.append(f"failed {summary['failed']}, not attempted {summary['not_attempted']}; "
                     f"first: {first['enterprise_uscc']}: {first['message']}")
    if summary["pending"]:
        first = summary["pending_claims"][0]
        parts.append(f"pending {summary['pending']}: claims still undecided (submitted, verified "
                     f"or flagged), e.g. {first['enterprise_uscc']}: {', '.join(first['claims'])}; "
                     f"approve or reject them")
    return "; ".join(parts) + f"; then `voucher jobs rerun statements {period}`"
