"""Billing job entry points, called as fn(db, period) by `voucher.jobs.run_once` (SPEC §8).

Each loads its configuration through `config.settings` when it runs (the scheduler process
builds nothing for them) and returns a JSON-able summary, stored on the job run.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from voucher.db import Database


class StatementsIncomplete(RuntimeError):
    """Some statements of the period failed; the run is marked failed and can be re-run."""


def reconcile_job(db: Database, period: str) -> dict[str, Any]:
    """Reconcile `period` in one transaction; returns the reconciliation summary."""
    from billing.policy_file import load_policy
    from billing.reconciliation import reconcile

    policy = load_policy(Settings.from_env().policy_path)
    with db.session() as session, session.begin():
        run, first_time = reconcile(session, policy, period)
        return {"period": period, "runs": run.runs, "first_time": first_time,
                "policy_id": run.policy_id, **run.summary}


def statements_job(db: Database, period: str) -> dict[str, Any]:
    """Issue the statements of `period` through the configured Stripe-compatible API.

    Raises StatementsIncomplete when any statement failed (after trying every one), so the
    run is recorded as failed and a re-run resumes exactly the unfinished ones.
    """
    from adapters.stripe import StripeClient
    from billing.policy_file import load_policy
    from billing.statements import issue_statements

    settings = Settings.from_env()
    policy = load_policy(settings.policy_path)
    with StripeClient.from_settings(settings) as payments:
        summary = issue_statements(db, policy, period, payments)
    if summary["failed"] or summary["not_attempted"]:
        first = summary["errors"][0]
        raise StatementsIncomplete(
            f"{summary['failed'] + summary['not_attempted']} of {summary['enterprises']} statements of "
            f"{period} not issued; first: {first['enterprise_uscc']}: {first['message']}")
    return summary
