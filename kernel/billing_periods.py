"""Billing periods' state (open or closed) and the period lock (docs/ARCHITECTURE.md#lock-order).

One row per period that anything has touched (`billing_period`). Its state says whether the
period's figures are final; the row itself is the first lock every money-moving transaction
of the period takes, so runs, decisions and writes of one period queue on it instead of
meeting in the balance and claim rows in different orders:

- `EXCLUSIVE` (FOR UPDATE): a reconciliation run, closing the period;
- `SHARED` (FOR SHARE): approvals, rejections, claim submissions, invoices, voids — they run
  beside each other (the balance and claim rows order them further) but never beside a run
  or a close of their period.

PostgreSQL honours both; SQLite ignores FOR UPDATE/SHARE and needs nothing more, because every
transaction there begins IMMEDIATE (kernel/db.py): one writer at a time.

Batch ingestion takes no lock: it reads the closed periods among its records once per batch
(`closed_among`), so a push never waits for a month's reconciliation.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import Enum

from sqlalchemy import String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base, Month, UTCDateTime, utcnow
from kernel.errors import Conflict
from kernel.vocabulary import PeriodState


class BillingPeriod(Base):
    __tablename__ = "billing_period"

    period: Mapped[str] = mapped_column(Month, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=PeriodState.OPEN.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(128))  # "api_key:…", "console:…", "scheduler", "cli"


class Mode(Enum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


SHARED, EXCLUSIVE = Mode.SHARED, Mode.EXCLUSIVE


def lock_period(session: Session, period: str, mode: Mode) -> BillingPeriod:
    """Lock `period`'s row (creating it open if missing) and return it, fresh from the database.

    Call it first in the transaction, before any balance or claim row: that is the lock order.
    """
    stmt = (select(BillingPeriod).where(BillingPeriod.period == period)
            .with_for_update(read=mode is SHARED)
            .execution_options(populate_existing=True))
    row = session.scalars(stmt).first()
    if row is None:
        insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)
        session.execute(insert(BillingPeriod).values(period=period, state=PeriodState.OPEN.value,
                                                     created_at=utcnow())
                        .on_conflict_do_nothing(index_elements=["period"]))
        row = session.scalars(stmt).one()
    return row


def refuse_if_closed(session: Session, period: str, param: str | None = "period") -> BillingPeriod:
    """Take the period's shared lock; Conflict `period_closed` when its figures are final."""
    row = lock_period(session, period, SHARED)
    if row.state == PeriodState.CLOSED:
        raise Conflict("period_closed", f"Period {period} is closed: its figures are final", param)
    return row


def state_of(session: Session, period: str) -> BillingPeriod | None:
    """The period's row without a lock (None: never touched, i.e. open)."""
    return session.get(BillingPeriod, period)


def closed_among(session: Session, periods: Iterable[str]) -> set[str]:
    """Which of `periods` are closed: one query, no lock (batch ingestion)."""
    wanted = sorted(set(periods))
    if not wanted:
        return set()
    return set(session.scalars(select(BillingPeriod.period).where(
        BillingPeriod.period.in_(wanted), BillingPeriod.state == PeriodState.CLOSED)))
