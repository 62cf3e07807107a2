"""A hypothesis state machine over the whole service layer.

Pushes, voids, invoices, claims, reconciliations, approvals and rejections in random order;
after every step the ledger invariants hold and a refused operation changed nothing.
Runs on SQLite (the arithmetic and invariants do not depend on the database; the
PostgreSQL-specific locking is proven by tests/billing/test_concurrency.py).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select

from billing import claims as claims_svc
from billing import ledger
from billing.invoices import submit_invoice
from billing.models import Claim, LedgerPosting, QuotaBalance
from billing.policy import round_half_up_fen
from billing.policy_file import load_policy
from billing.reconciliation import reconcile
from metering.ingest import ingest_records
from metering.models import Enterprise, Provider
from metering.usage import get_record, void_record
from tests.conftest import truncate_all
from tests.factories import make_uscc
from voucher.db import Database
from voucher.errors import ApiError
from voucher.migrate import upgrade

PERIODS = ["2026-07", "2026-08", "2026-09"]
PROVIDERS = ["prov-a", "prov-b"]
USCCS = [make_uscc(300 + i) for i in range(2)]


def small_policy():
    """The shipped policy with a cap small enough for random walks to reach it."""
    policy = load_policy()
    caps = {f.name: 20_000 for f in dataclasses.fields(policy) if f.name.startswith("cap") and
            isinstance(getattr(policy, f.name), int)}
    return dataclasses.replace(policy, **caps)


class Billing(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy = small_policy()
        self.n = 0

    @initialize()
    def setup(self):
        truncate_all(DB)
        with DB.session() as s, s.begin():
            for pid in PROVIDERS:
                s.add(Provider(id=pid, name=pid, kind="supercomputing", listed_from=date(2025, 5, 13)))
            for u in USCCS:
                s.add(Enterprise(uscc=u, name=u, eligible=True))
        self.records: list[tuple[str, str]] = []
        self.invoices: list[tuple[str, str]] = []
        self.claims: list[int] = []

    def snapshot(self):
        with DB.session() as s:
            return (s.scalar(select(func.count()).select_from(LedgerPosting)),
                    sorted((b.enterprise_uscc, b.year, b.reserved, b.granted) for b in s.scalars(select(QuotaBalance))),
                    sorted((c.id, c.status, c.payable) for c in s.scalars(select(Claim))))

    @rule(provider=st.sampled_from(PROVIDERS), uscc=st.sampled_from(USCCS), period=st.sampled_from(PERIODS),
          amount=st.integers(1, 30_000))
    def push(self, provider, uscc, period, amount):
        self.n += 1
        y, m = map(int, period.split("-"))
        ended = datetime(y, m, 10, tzinfo=UTC) + timedelta(hours=self.n)
        rec = {"record_id": f"r{self.n}", "enterprise_uscc": uscc, "resource": "gpu", "unit": "gpu_hour",
               "quantity": "1", "started_at": (ended - timedelta(hours=1)).isoformat(),
               "ended_at": ended.isoformat(), "amount": amount, "currency": "CNY"}
        with DB.session() as s, s.begin():
            assert ingest_records(s, provider, [rec]).accepted == 1
        self.records.append((provider, rec["record_id"]))

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def void(self, data):
        provider, rid = data.draw(st.sampled_from(self.records))
        with DB.session() as s, s.begin():
            void_record(s, get_record(s, provider, rid), "test")

    @rule(provider=st.sampled_from(PROVIDERS), uscc=st.sampled_from(USCCS), period=st.sampled_from(PERIODS),
          amount=st.integers(1, 60_000))
    def invoice(self, provider, uscc, period, amount):
        self.n += 1
        no = f"I{self.n}"
        with DB.session() as s, s.begin():
            submit_invoice(s, provider, invoice_no=no, enterprise_uscc=uscc, period=period, amount=amount,
                           tax_amount=None, issued_on=date(2026, 10, 1))
        self.invoices.append((provider, no))

    @precondition(lambda self: self.invoices)
    @rule(data=st.data(), uscc=st.sampled_from(USCCS), period=st.sampled_from(PERIODS),
          other=st.integers(0, 5_000))
    def claim(self, data, uscc, period, other):
        picked = data.draw(st.lists(st.sampled_from(self.invoices), min_size=1, max_size=3, unique=True))
        items = [{"provider_id": p, "invoice_no": no, "amount_paid": data.draw(st.integers(1, 60_000))}
                 for p, no in picked]
        with DB.session() as s, s.begin():
            c = claims_svc.submit_claim(s, uscc, period, items, [{"program": "x", "amount": other}])
            self.claims.append(c.id)

    @rule(period=st.sampled_from(PERIODS))
    def reconcile(self, period):
        with DB.session() as s, s.begin():
            reconcile(s, self.policy, period)

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), approve=st.booleans())
    def decide(self, data, approve):
        cid = data.draw(st.sampled_from(self.claims))
        before = self.snapshot()
        try:
            with DB.session() as s, s.begin():
                c = claims_svc.get_claim(s, cid, lock=True)
                if approve:
                    claims_svc.approve(s, self.policy, c, "ok")
                else:
                    claims_svc.reject(s, self.policy, c, "no")
        except ApiError:
            assert self.snapshot() == before, "a refused operation changed something"

    @invariant()
    def ledger_holds(self):
        with DB.session() as s:
            report = ledger.verify(s)
            assert report.ok, report.breaches
            for b in s.scalars(select(QuotaBalance)):
                assert b.reserved + b.granted <= b.cap
                approved = list(s.scalars(select(Claim).where(
                    Claim.enterprise_uscc == b.enterprise_uscc, Claim.status == "approved")))
                ceiling = sum(round_half_up_fen(c.base * self.policy.rate) for c in approved)
                assert b.granted <= ceiling


DB: Database


def test_billing_state_machine(tmp_path):
    global DB
    url = f"sqlite:///{tmp_path / 'sm.db'}"
    upgrade(url)
    DB = Database(url)
    try:
        Billing.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                             suppress_health_check=list(HealthCheck))
        Billing.TestCase().runTest()
    finally:
        DB.dispose()
