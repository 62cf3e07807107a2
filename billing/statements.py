"""Monthly statements through the payments port (docs/API.md#statements).

Per enterprise and period with metered usage or approved claims: a Customer (metadata
`uscc`), one invoice item per provider for the metered spend (the month's active usage),
one negative item for the approved subsidy ("算力补贴 50%", the rate from the policy), one
negative item per redemption settled with a provider in the month (核销补贴: the subsidy the
enterprise was spared at the provider's checkout, shown once its quarterly batch is approved —
billing/settlements.py `settled_since`, by the approval's time in the policy's timezone), then
an invoice holding those items, finalized. Its total is spend − subsidy − redeemed.

A statement waits while any claim of the enterprise for the period is still undecided
(submitted, verified or flagged): the subsidy it would show is not known yet, and a finalized
statement is never changed. Such an enterprise is counted as `pending` in the run's summary
(listing the claims it waits for) and nothing of it is sent; a later run, once finance has
approved or rejected those claims, issues it. The scheduled job therefore issues the month
before last (voucher.scheduler), a month after that month's reconciliation.

Every remote object is found again by a deterministic key (`stmt:{period}:{uscc}:{provider}`,
`…:subsidy`, and `stmt:{period}:{uscc}` for the invoice) through the idempotent `ensure_*`
calls of the payments port (`billing.settlement.Payments`), and the `statement` table records
how far each one got: a re-run skips finalized statements and resumes half-done ones, creating
nothing twice.
No database transaction is held open across a call to the payment API.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from billing.claims import OPEN
from billing.models import Claim
from billing.policy import Policy
from billing.redemption_models import Redemption
from billing.settlement import PaymentError, Payments
from billing.settlements import settled_since
from kernel import audit
from kernel.db import Base, BigId, Database, Month, Timestamps, UTCDateTime, utcnow
from kernel.periods import local_bounds, parse_period
from kernel.vocabulary import PROVIDER_KIND_SHORT, ClaimStatus, UsageStatus
from metering.models import Enterprise, Provider, UsageRecord

Fen = int

PENDING, DRAFT, FINALIZED = "pending", "draft", "finalized"
UNREACHABLE = "unreachable"  # an outcome: the payment API did not answer at all
KIND_ZH = PROVIDER_KIND_SHORT  # kernel/vocabulary.py


class Statement(Timestamps, Base):
    """What was issued to the payment system for one enterprise and month."""

    __tablename__ = "statement"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"))
    period: Mapped[str] = mapped_column(Month, index=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)  # pending | draft | finalized
    spend: Mapped[int] = mapped_column(BigInteger, default=0)  # fen, metered
    subsidy: Mapped[int] = mapped_column(BigInteger, default=0)  # fen, approved payable + settled redemptions
    total: Mapped[int | None] = mapped_column(BigInteger)  # fen, the finalized invoice's total
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    payment_customer_id: Mapped[str | None] = mapped_column(String(255))
    payment_invoice_id: Mapped[str | None] = mapped_column(String(255))
    payment_status: Mapped[str | None] = mapped_column(String(32))  # open | paid | ...
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("enterprise_uscc", "period"),)


def statement_json(s: Statement) -> dict[str, Any]:
    return {
        "object": "statement",
        "id": f"stm_{s.id}",
        "enterprise_uscc": s.enterprise_uscc,
        "period": s.period,
        "status": s.status,
        "currency": s.currency,
        "spend": s.spend,
        "subsidy": s.subsidy,
        "total": s.total,
        "payment_customer_id": s.payment_customer_id,
        "payment_invoice_id": s.payment_invoice_id,
        "payment_status": s.payment_status,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "issued_at": s.issued_at.isoformat() if s.issued_at else None,
    }


class StatementError(Exception):
    """A statement that must not be issued as it stands (the message says why)."""


@dataclass(frozen=True)
class Line:
    key: str  # metadata statement_key of the invoice item
    amount: Fen  # negative for the subsidy
    description: str


@dataclass(frozen=True)
class StatementPlan:
    """What one enterprise's statement for the period should hold."""

    period: str
    enterprise_uscc: str
    enterprise_name: str
    spend_by_provider: dict[str, Fen]
    subsidy: Fen
    lines: tuple[Line, ...]
    undecided_claims: tuple[str, ...] = ()  # clm_… still submitted, verified or flagged
    redeemed: Fen = 0  # subsidy of the redemptions settled with providers in the month

    @property
    def pending(self) -> bool:
        """Not to be issued yet: some claim of the period awaits finance's decision."""
        return bool(self.undecided_claims)

    @property
    def key(self) -> str:
        return statement_key(self.period, self.enterprise_uscc)

    @property
    def spend(self) -> Fen:
        return sum(self.spend_by_provider.values())

    @property
    def total(self) -> Fen:
        return self.spend - self.subsidy - self.redeemed


@dataclass
class RunSummary:
    period: str
    enterprises: int = 0
    issued: int = 0
    resumed: int = 0
    skipped: int = 0
    pending: int = 0  # waiting for claims still undecided; no statement yet
    failed: int = 0
    not_attempted: int = 0  # left after the payment API could not be reached at all
    spend: Fen = 0
    subsidy: Fen = 0
    total: Fen = 0  # of every finalized statement of the period, this run's and earlier ones
    errors: list[dict[str, str]] = field(default_factory=list)
    pending_claims: list[dict[str, Any]] = field(default_factory=list)  # per pending enterprise

    @property
    def complete(self) -> bool:
        """Every enterprise of the period has its finalized statement."""
        return not (self.pending or self.failed or self.not_attempted)

    def as_dict(self) -> dict[str, Any]:
        return {"object": "statement_run", "period": self.period, "currency": "CNY",
                "enterprises": self.enterprises, "issued": self.issued, "resumed": self.resumed,
                "skipped": self.skipped, "pending": self.pending, "failed": self.failed,
                "not_attempted": self.not_attempted, "complete": self.complete,
                "spend": self.spend, "subsidy": self.subsidy, "total": self.total,
                "errors": self.errors, "pending_claims": self.pending_claims}


def statement_key(period: str, uscc: str) -> str:
    return f"stmt:{period}:{uscc}"


def rate_percent(rate: Fraction) -> str:
    """Fraction(1, 2) -> '50%'; Fraction(1, 3) -> '33.33%' (display only; never used to compute)."""
    pct = rate * 100
    if pct.denominator == 1:
        return f"{pct.numerator}%"
    text = (Decimal(pct.numerator) / Decimal(pct.denominator)).quantize(Decimal("0.01"))
    return f"{text.normalize():f}%"


def plan_statements(session: Session, policy: Policy, period: str) -> list[StatementPlan]:
    """One plan per enterprise with metered usage or claims in `period`, by USCC.

    A plan whose enterprise has undecided claims lists them (`pending`); its lines hold what
    is known so far and are not to be issued.
    """
    parse_period(period)
    spend: dict[str, dict[str, Fen]] = defaultdict(dict)
    for provider_id, uscc, amount in session.execute(
        select(UsageRecord.provider_id, UsageRecord.enterprise_uscc, func.sum(UsageRecord.amount))
        .where(UsageRecord.period == period, UsageRecord.status == UsageStatus.ACTIVE)
        .group_by(UsageRecord.provider_id, UsageRecord.enterprise_uscc)
    ):
        if amount:
            spend[uscc][provider_id] = int(amount)
    subsidy: dict[str, Fen] = {
        uscc: int(total) for uscc, total in session.execute(
            select(Claim.enterprise_uscc, func.sum(Claim.payable))
            .where(Claim.period == period, Claim.status == ClaimStatus.APPROVED)
            .group_by(Claim.enterprise_uscc))
        if total
    }
    undecided: dict[str, list[str]] = defaultdict(list)
    for uscc, claim_id in session.execute(
        select(Claim.enterprise_uscc, Claim.id)
        .where(Claim.period == period, Claim.status.in_(OPEN)).order_by(Claim.id)
    ):
        undecided[uscc].append(f"clm_{claim_id}")
    settled: dict[str, list[Redemption]] = defaultdict(list)
    for r in settled_since(session, *local_bounds(period, policy.timezone)):
        settled[r.enterprise_uscc].append(r)
    usccs = sorted(set(spend) | set(subsidy) | set(undecided) | set(settled))
    if not usccs:
        return []
    names = dict(session.execute(select(Enterprise.uscc, Enterprise.name)
                                 .where(Enterprise.uscc.in_(usccs))).tuples().all())
    providers = {p.id: p for p in session.scalars(select(Provider))}
    percent = rate_percent(policy.rate)
    plans = []
    for uscc in usccs:
        lines = []
        for pid in sorted(spend[uscc]):
            p = providers.get(pid)
            what = f"{p.name}（{KIND_ZH.get(p.kind, p.kind)}）" if p else pid
            lines.append(Line(f"{statement_key(period, uscc)}:{pid}", spend[uscc][pid],
                              f"{what}算力使用 {period}"))
        if subsidy.get(uscc):
            # §四(一): 按照实际使用金额的50%给予算力补贴 — the approved subsidy, as a credit.
            lines.append(Line(f"{statement_key(period, uscc)}:subsidy", -subsidy[uscc],
                              f"算力补贴 {percent}（{period}，{policy.document_no}）"))
        for r in settled[uscc]:
            p = providers.get(r.provider_id)
            lines.append(Line(f"{statement_key(period, uscc)}:rdm_{r.id}", -r.subsidy,
                              f"核销补贴 {p.name if p else r.provider_id}（{r.period}，rdm_{r.id}，{r.reference}）"))
        plans.append(StatementPlan(period, uscc, names.get(uscc, uscc), dict(spend[uscc]),
                                   subsidy.get(uscc, 0), tuple(lines), tuple(undecided[uscc]),
                                   sum(r.subsidy for r in settled[uscc])))
    return plans


def issue_statements(db: Database, policy: Policy, period: str, payments: Payments, *,
                     plans: list[StatementPlan] | None = None,
                     progress: Callable[[StatementPlan, str], None] | None = None) -> dict[str, Any]:
    """Issue (or resume, or skip) every statement of `period`; returns the run's summary.

    A finalized statement is skipped, whatever happened since. An enterprise with undecided
    claims is left pending (nothing is sent) until a later run.
    A statement that fails (payment API error, an item already posted with another amount,
    subsidy above spend, a half-done statement of another month on the same customer) is
    recorded with its error and counted in `failed`; the others go on. Running again
    resumes it. When the API cannot be reached at all (no answer, after the client's
    retries), the run stops there: the rest are counted in `not_attempted`.
    `progress(plan, outcome)` is called after each enterprise.
    """
    if plans is None:
        with db.session() as session:
            plans = plan_statements(session, policy, period)
    summary = RunSummary(period, enterprises=len(plans))
    with db.session() as session:
        finalized = set(session.scalars(select(Statement.enterprise_uscc).where(
            Statement.period == period, Statement.status == FINALIZED)))
    unreachable = False
    for plan in plans:
        if plan.enterprise_uscc in finalized:
            summary.skipped += 1
            outcome = "skipped"
        elif plan.pending:
            summary.pending += 1
            summary.pending_claims.append({"enterprise_uscc": plan.enterprise_uscc,
                                           "claims": list(plan.undecided_claims)})
            outcome = "pending"
        elif unreachable:
            summary.not_attempted += 1
            outcome = "not_attempted"
        else:
            outcome = _issue_one(db, payments, plan, summary)
            unreachable = outcome == UNREACHABLE
        if progress is not None:
            progress(plan, outcome)
    with db.session() as session:
        summary.total = int(session.scalar(
            select(func.coalesce(func.sum(Statement.total), 0))
            .where(Statement.period == period, Statement.status == FINALIZED)) or 0)
    return summary.as_dict()


def _issue_one(db: Database, payments: Payments, plan: StatementPlan, summary: RunSummary) -> str:
    row_id, state = _begin(db, plan)
    if state == FINALIZED:
        summary.skipped += 1
        return "skipped"
    try:
        if plan.subsidy > plan.spend:
            raise StatementError(f"approved subsidy {plan.subsidy} fen exceeds the metered spend "
                                 f"{plan.spend} fen; run the reconciliation of {plan.period} first")
        with db.session() as session:
            blocking = session.scalars(select(Statement.period).where(
                Statement.enterprise_uscc == plan.enterprise_uscc, Statement.period != plan.period,
                Statement.status != FINALIZED, Statement.payment_customer_id.is_not(None))).first()
        if blocking:
            # A new invoice takes every pending item of the customer: finish that month first.
            raise StatementError(f"the statement of {blocking} is half-done on the same customer; "
                                 f"issue that month first (voucher statements --period {blocking})")
        customer = payments.ensure_customer(plan.enterprise_uscc, plan.enterprise_name)
        _update(db, row_id, payment_customer_id=customer["id"])
        for line in plan.lines:
            payments.ensure_invoice_item(customer["id"], line.key, line.amount, line.description)
        invoice = payments.ensure_invoice(customer["id"], plan.key)
        _update(db, row_id, payment_invoice_id=invoice["id"], status=DRAFT)
        if invoice.get("status") == "draft":
            invoice = payments.finalize_invoice(invoice["id"])
        if invoice.get("total") != plan.total:  # e.g. a stray pending item swallowed by the invoice
            raise StatementError(f"invoice {invoice['id']} totals {invoice.get('total')} fen, "
                                 f"expected {plan.total} fen (spend {plan.spend} − subsidy {plan.subsidy}"
                                 f" − redeemed {plan.redeemed})")
    except (PaymentError, StatementError) as exc:
        _update(db, row_id, last_error=str(exc))
        summary.failed += 1
        summary.errors.append({"enterprise_uscc": plan.enterprise_uscc, "message": str(exc)})
        return UNREACHABLE if isinstance(exc, PaymentError) and exc.unreachable else "failed"
    with db.session() as session, session.begin():
        row = session.get(Statement, row_id)
        row.status, row.total, row.payment_status = FINALIZED, int(invoice["total"]), invoice.get("status")
        row.issued_at, row.last_error = utcnow(), None
        audit.append(session, "statement.issued", "statement", f"stm_{row_id}", after={
            "enterprise_uscc": plan.enterprise_uscc, "period": plan.period, "spend": plan.spend,
            "subsidy": plan.subsidy, "redeemed": plan.redeemed, "total": row.total, "payment_invoice_id": invoice["id"]})
    summary.issued += 1
    summary.spend += plan.spend
    summary.subsidy += plan.subsidy + plan.redeemed
    if state != "new":
        summary.resumed += 1
        return "resumed"
    return "issued"


def _begin(db: Database, plan: StatementPlan) -> tuple[int, str]:
    """The statement row (created if missing): (id, "new" | its status before this attempt)."""
    for _ in range(2):
        try:
            with db.session() as session, session.begin():
                row = session.scalars(select(Statement).where(
                    Statement.enterprise_uscc == plan.enterprise_uscc,
                    Statement.period == plan.period)).first()
                state = "new" if row is None else row.status
                if row is None:
                    row = Statement(enterprise_uscc=plan.enterprise_uscc, period=plan.period,
                                    status=PENDING, attempts=0)
                    session.add(row)
                if state != FINALIZED:
                    row.attempts += 1
                    row.spend, row.subsidy = plan.spend, plan.subsidy + plan.redeemed
                session.flush()
                return row.id, state
        except IntegrityError:  # another run created it a moment ago: read it
            continue
    raise StatementError(f"could not record the statement of {plan.enterprise_uscc} for {plan.period}")


def _update(db: Database, row_id: int, **values: Any) -> None:
    with db.session() as session, session.begin():
        row = session.get(Statement, row_id)
        for name, value in values.items():
            setattr(row, name, value)


def statements_of(session: Session, period: str) -> list[Statement]:
    return list(session.scalars(select(Statement).where(Statement.period == period)
                                .order_by(Statement.enterprise_uscc)))
