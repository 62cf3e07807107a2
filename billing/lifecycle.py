"""The period lifecycle: open periods re-run daily, closed by finance or after `close_after_days`.

A period is open until it is closed (docs/API.md#period-close). While open, the daily reconcile
job re-runs it (late claims, voids after approval). Closing refuses while any claim of the
period is undecided or any of its redemptions flagged; once closed, the period's figures are final: runs, new usage records,
voids, invoices and claims of it are refused with `period_closed` (kernel/billing_periods.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.orm import Session

from billing.models import Claim, Reconciliation
from billing.policy import Policy
from billing.redemption_models import Redemption
from kernel import audit
from kernel.billing_periods import EXCLUSIVE, BillingPeriod, lock_period
from kernel.db import Database, utcnow
from kernel.errors import Conflict, DomainError
from kernel.periods import current_period, date_of_month, parse_day, period_dates, shift_period
from kernel.vocabulary import OPEN, AuditAction, PeriodState, RedemptionStatus

log = logging.getLogger("voucher.lifecycle")


@dataclass(frozen=True)
class PeriodView:
    """A period's state as the API and the console show it."""

    period: str
    state: str
    closed_at: datetime | None
    closed_by: str | None
    undecided: int


def undecided_claims(session: Session, period: str) -> int:
    return session.scalar(select(func.count()).select_from(Claim)
                          .where(Claim.period == period, Claim.status.in_(OPEN))) or 0


def undecided_redemptions(session: Session, period: str) -> int:
    """The period's redemptions flagged by its reconciliation and not yet decided by finance."""
    return session.scalar(select(func.count()).select_from(Redemption)
                          .where(Redemption.period == period, Redemption.status == RedemptionStatus.FLAGGED)) or 0


def period_view(session: Session, period: str) -> PeriodView:
    row = session.get(BillingPeriod, period)
    return PeriodView(period, row.state if row else PeriodState.OPEN.value,
                      row.closed_at if row else None, row.closed_by if row else None,
                      undecided_claims(session, period))


def close_period(session: Session, period: str, *, now: datetime | None = None) -> BillingPeriod:
    """Close `period` inside the caller's transaction; closing a closed period changes nothing.

    Takes the period's row exclusively (docs/ARCHITECTURE.md#lock-order), so runs, decisions,
    claims, invoices and voids of the period in flight finish first and later ones see it
    closed. Refused (Conflict) while the month is not over (`period_not_over`) or any of its
    claims is undecided (`claims_undecided`) or any of its redemptions is flagged and not yet
    decided (`redemptions_undecided`).
    """
    if period >= current_period(now):
        raise Conflict("period_not_over", f"Period {period} is not over; only past months close", "period")
    row = lock_period(session, period, EXCLUSIVE)
    if row.state == PeriodState.CLOSED:
        return row
    undecided = undecided_claims(session, period)
    if undecided:
        raise Conflict("claims_undecided", f"Period {period} has {undecided} undecided claim(s); "
                       "approve or reject them (after a reconciliation) before closing", "period")
    flagged = undecided_redemptions(session, period)
    if flagged:
        raise Conflict("redemptions_undecided", f"Period {period} has {flagged} flagged redemption(s); "
                       "approve or reject them before closing", "period")
    actor = audit.current_actor()  # who closed it: an API key, the console, the CLI or the scheduler
    by = f"{actor.role}:{actor.key_id}" if actor.key_id else actor.role
    row.state, row.closed_at, row.closed_by = PeriodState.CLOSED.value, now or utcnow(), by
    audit.append(session, AuditAction.PERIOD_CLOSED, "reconciliation", f"rec_{period}",
                 before={"state": PeriodState.OPEN.value},
                 after={"state": PeriodState.CLOSED.value, "closed_by": by})
    session.flush()
    return row


def open_periods(session: Session, today: date) -> list[str]:
    """The past months to re-run, oldest first: last month always (as the monthly job did),
    and every month anything touched (claims, runs, period rows), unless closed."""
    before = date_of_month(today)
    touched = union(select(Claim.period), select(Reconciliation.period), select(BillingPeriod.period)).subquery()
    found = set(session.scalars(select(touched.c.period).where(touched.c.period < before)))
    found.add(shift_period(before, -1))
    closed = set(session.scalars(select(BillingPeriod.period).where(
        BillingPeriod.state == PeriodState.CLOSED, BillingPeriod.period.in_(sorted(found)))))
    return sorted(found - closed)


def close_due(policy: Policy, period: str, today: date) -> bool:
    """True from the `close_after_days`-th day after the period's last day."""
    return today >= period_dates(period)[1] + timedelta(days=policy.close_after_days)


class PeriodsIncomplete(RuntimeError):
    """Some open periods could not be re-run; the job run is failed with the summary as its `result`."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def run_open_periods(db: Database, policy: Policy, day: str, others: Sequence[Policy] = ()) -> dict[str, Any]:
    """The daily reconcile job for `day` (YYYY-MM-DD, Asia/Shanghai): re-run every open period,
    each in its own transaction, then close those past `close_after_days` with no claim undecided.

    A period that fails is reported and the others still run; then PeriodsIncomplete is raised.
    """
    from billing.reconciliation import reconcile  # the job module imports the heavy path lazily

    today = parse_day(day)
    summary: dict[str, Any] = {"day": day, "periods": [], "closed": [], "kept_open": [], "errors": []}
    with db.session() as session:
        periods = open_periods(session, today)
    for period in periods:
        try:
            with db.session() as session, session.begin():
                run, _ = reconcile(session, policy, period, others=others)
                summary["periods"].append({"period": period, "runs": run.runs,
                                           "claims": run.summary.get("claims")})
            if not close_due(policy, period, today):
                continue
            with db.session() as session, session.begin():
                undecided = undecided_claims(session, period)
                if undecided:
                    summary["kept_open"].append({"period": period, "undecided": undecided})
                    continue
                close_period(session, period)
                summary["closed"].append(period)
        except DomainError as exc:
            summary["errors"].append({"period": period, "code": exc.code, "message": exc.message})
        except Exception as exc:  # one month's failure must not stop the others
            log.exception("daily reconcile of %s failed", period)
            summary["errors"].append({"period": period, "code": type(exc).__name__, "message": str(exc)})
    if summary["errors"]:
        first = summary["errors"][0]
        raise PeriodsIncomplete(f"{len(summary['errors'])} of {len(periods)} open periods failed; "
                                f"first: {first['period']}: {first['message']}", summary)
    return summary
