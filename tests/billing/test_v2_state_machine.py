"""A hypothesis state machine of the v2 money rules against a plain reference model.

The production services (ingestion, voids, invoices, claims, the reconciliation, approvals,
rejections, model filings through the API) run in random order; beside them, `Model` below
restates docs/API.md#rec-steps, #claim-arithmetic and #clawbacks in a few lines of plain
Python — it imports nothing of billing/policy.py for its arithmetic. After every step every
claim's status and payable, every quota (cap, reserved, granted) equal the model's, no cap is
exceeded and ledger verify is clean; every run is repeated at once and must move nothing.
The small caps (¥200 / ¥500) make the cap, 就高不重复 after the cap, clawbacks and squatting
happen within a few steps. SQLite: the arithmetic does not depend on the database.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select

from billing import claims as claims_svc
from billing import ledger
from billing.invoices import submit_invoice
from billing.models import Claim, ClaimAdjustment, LedgerPosting
from billing.policy_file import load_policy
from billing.reconciliation import reconcile
from config.settings import Settings
from kernel.db import Database
from kernel.errors import DomainError
from metering.ingest import ingest_records
from metering.models import Enterprise, Provider
from metering.usage import get_record, void_record
from tests.conftest import NO_PUSH_LIMITS, Api, new_key, truncate_all
from tests.factories import make_uscc
from voucher.app import create_app
from voucher.migrate import upgrade

PERIODS = ["2026-08", "2026-09"]
USCCS = [make_uscc(500 + i) for i in range(2)]
# prov-b leaves the catalogue on 15 September: its later September usage is not eligible.
LISTED_UNTIL = {"prov-a": None, "prov-b": date(2026, 9, 15)}
CAP, RAISED, TOL = 20_000, 50_000, 100


def small_policy():
    return dataclasses.replace(load_policy(), cap_standard=CAP, cap_new_model_filing=RAISED, tolerance=TOL,
                               new_filing_years=1)


@dataclass
class MClaim:
    id: int
    uscc: str
    period: str
    items: list[tuple[str, str, int]]  # (provider, invoice_no, amount_paid)
    other: int
    status: str = "submitted"
    payable: int = 0


@dataclass
class Model:
    """The v2 rules, restated plainly (fen; rate ½ half up; tolerance 100 fen)."""

    usage: dict[str, tuple[str, str, str, int, int]] = field(default_factory=dict)  # rid -> (p, u, P, day, amt)
    void: set[str] = field(default_factory=set)
    invoices: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)  # -> (u, P, amount)
    claims: dict[int, MClaim] = field(default_factory=dict)
    filings: dict[str, list[date]] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    granted: dict[str, int] = field(default_factory=dict)

    def cap(self, u):
        return RAISED if any(d.year == 2026 for d in self.filings.get(u, [])) else CAP

    def remaining(self, u):
        return max(self.cap(u) - self.reserved.get(u, 0) - self.granted.get(u, 0), 0)

    def metered(self, p, u, period, eligible):
        total = 0
        for rid, (rp, ru, rper, day, amount) in self.usage.items():
            if rid in self.void or (rp, ru, rper) != (p, u, period):
                continue
            until = LISTED_UNTIL[p]
            if eligible and until is not None and date(2026, int(period[5:]), day) > until:
                continue
            total += amount
        return total

    def owned(self, c, p, no):
        inv = self.invoices.get((p, no))
        return inv if inv is not None and inv[0] == c.uscc and inv[1] == c.period else None

    def holders(self, period):
        by_invoice: dict[tuple[str, str], list[MClaim]] = {}
        for c in self.claims.values():
            if c.period == period and c.status != "rejected":
                for p, no, _ in c.items:
                    if self.owned(c, p, no):  # only the owner's claims compete for an invoice
                        by_invoice.setdefault((p, no), []).append(c)
        out = {}
        for key, cs in by_invoice.items():
            if len(cs) > 1:
                approved = [c.id for c in cs if c.status == "approved"]
                out[key] = min(approved) if approved else min(c.id for c in cs)
        return out

    def open_bases(self, c, holder, period):
        """An open claim's item bases (0 for a bad item) and whether any item is bad."""
        flagged, bases = False, []
        for p, no, paid in c.items:
            inv = self.owned(c, p, no)
            listed = LISTED_UNTIL[p] is None or LISTED_UNTIL[p] >= date(2026, int(period[5:]), 1)
            bad = not listed or inv is None
            if inv is not None:
                metered = self.metered(p, c.uscc, period, False)
                bad |= abs(paid - inv[2]) > TOL or abs(metered - inv[2]) > TOL
                bad |= holder.get((p, no), c.id) != c.id
            flagged |= bad
            bases.append(0 if bad else min(paid, inv[2], self.metered(p, c.uscc, period, True)))
        return flagged, bases

    def run(self, period):
        holder = self.holders(period)
        mine = [self.claims[cid] for cid in sorted(self.claims)
                if self.claims[cid].period == period and self.claims[cid].status != "rejected"]
        # First every claim gives back what its own figures no longer support: approved claims
        # are clawed back, open ones release the part of their hold above computed − other.
        for c in mine:
            u = c.uscc
            if c.status == "approved":
                bases = []
                for p, no, paid in c.items:
                    inv = self.owned(c, p, no)
                    bases.append(min(paid, inv[2], self.metered(p, u, period, True)) if inv else 0)
                computed = (sum(bases) + 1) // 2
                own = max(min(computed, self.remaining(u) + c.payable) - c.other, 0)
                target = min(max(own, min(c.payable, max(computed - c.other, 0))), c.payable)
                self.granted[u] -= c.payable - target
                c.payable = target
            elif c.status in ("verified", "flagged"):
                computed = (sum(self.open_bases(c, holder, period)[1]) + 1) // 2
                kept = min(c.payable, max(computed - c.other, 0))
                self.reserved[u] -= c.payable - kept
                c.payable = kept
        # Then the open claims in id order, each taking from what the earlier ones left.
        for c in mine:
            if c.status == "approved":
                continue
            u = c.uscc
            held = c.payable if c.status in ("verified", "flagged") else 0
            flagged, bases = self.open_bases(c, holder, period)
            computed = (sum(bases) + 1) // 2
            available = self.remaining(u) + held
            payable = max(max(min(computed, available) - c.other, 0), min(held, max(computed - c.other, 0)))
            self.reserved[u] = self.reserved.get(u, 0) + payable - held
            c.payable, c.status = payable, ("flagged" if flagged else "verified")


class V2Billing(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        truncate_all(DB)
        with DB.session() as s, s.begin():
            for pid, until in LISTED_UNTIL.items():
                s.add(Provider(id=pid, name=pid, kind="supercomputing", listed_from=date(2025, 5, 13),
                               listed_until=until))
            for u in USCCS:
                s.add(Enterprise(uscc=u, name=u, eligible=True))
        self.policy = small_policy()
        self.m = Model()
        self.n = 0
        self.finance = Api(CLIENT, new_key(DB, "finance"))

    @rule(p=st.sampled_from(list(LISTED_UNTIL)), u=st.sampled_from(USCCS), period=st.sampled_from(PERIODS),
          day=st.sampled_from([5, 20]), amount=st.integers(1, 60_000))
    def push(self, p, u, period, day, amount):
        self.n += 1
        ended = datetime(2026, int(period[5:]), day, 4, tzinfo=UTC)
        rec = {"record_id": f"r{self.n}", "enterprise_uscc": u, "resource": "gpu", "unit": "gpu_hour",
               "quantity": "1", "started_at": (ended - timedelta(hours=1)).isoformat(),
               "ended_at": ended.isoformat(), "amount": amount, "currency": "CNY"}
        with DB.session() as s, s.begin():
            assert ingest_records(s, p, [rec]).accepted == 1
        self.m.usage[rec["record_id"]] = (p, u, period, day, amount)

    @precondition(lambda self: self.m.usage)
    @rule(data=st.data())
    def void(self, data):
        rid = data.draw(st.sampled_from(sorted(self.m.usage)))
        with DB.session() as s, s.begin():
            void_record(s, get_record(s, self.m.usage[rid][0], rid), "test")
        self.m.void.add(rid)

    @precondition(lambda self: self.m.usage)
    @rule(data=st.data(), delta=st.sampled_from([0, 0, 0, 60, 500]))
    def invoice(self, data, delta):
        """An invoice for a month that has usage, mostly for exactly what was metered."""
        p, u, period, _, _ = self.m.usage[data.draw(st.sampled_from(sorted(self.m.usage)))]
        self.n += 1
        amount = self.m.metered(p, u, period, False) + delta  # mostly what was metered
        if amount <= 0:
            return
        no = f"I{self.n}"
        with DB.session() as s, s.begin():
            submit_invoice(s, p, invoice_no=no, enterprise_uscc=u, period=period, amount=amount,
                           tax_amount=None, issued_on=date(2026, 10, 1))
        self.m.invoices[(p, no)] = (u, period, amount)

    @precondition(lambda self: self.m.invoices)
    @rule(data=st.data(), squat=st.sampled_from([False, False, False, True]),
          other=st.sampled_from([0, 0, 3_000, 12_000, 30_000]))
    def claim(self, data, squat, other):
        keys = data.draw(st.lists(st.sampled_from(sorted(self.m.invoices)), min_size=1, max_size=2, unique=True))
        owner, period, _ = self.m.invoices[keys[0]]
        # Mostly the invoice's owner; sometimes another enterprise naming it (squatting).
        u = next(x for x in USCCS if x != owner) if squat else owner
        items = [(p, no, self.m.invoices[(p, no)][2] + data.draw(st.sampled_from([0, 0, 40, 400])))
                 for p, no in keys]
        self.submit(u, period, items, other)

    def submit(self, u, period, items, other):
        try:
            with DB.session() as s, s.begin():
                c = claims_svc.submit_claim(
                    s, u, period, [{"provider_id": p, "invoice_no": no, "amount_paid": a} for p, no, a in items],
                    [{"program": "county", "amount": other}] if other else [],
                    claims_svc.ClaimLimits(10, 200))
                cid = c.id
        except DomainError as exc:
            assert exc.code == "too_many_claims"
            return
        self.m.claims[cid] = MClaim(cid, u, period, items, other)

    @rule(p=st.sampled_from(list(LISTED_UNTIL)), u=st.sampled_from(USCCS), period=st.sampled_from(PERIODS),
          day=st.sampled_from([5, 5, 20]), amount=st.sampled_from([501, 9_000, 31_001, 47_000]),
          other=st.sampled_from([0, 0, 3_000, 12_000, 30_000]))
    def honest_month(self, p, u, period, day, amount, other):
        """Usage, the provider's invoice for all of it and the owner's claim of exactly that:
        the walk's clean claims, which reserve quota, reach the cap and can be clawed back."""
        self.push(p, u, period, day, amount)
        self.n += 1
        no, total = f"H{self.n}", self.m.metered(p, u, period, False)
        with DB.session() as s, s.begin():
            submit_invoice(s, p, invoice_no=no, enterprise_uscc=u, period=period, amount=total,
                           tax_amount=None, issued_on=date(2026, 10, 1))
        self.m.invoices[(p, no)] = (u, period, total)
        self.submit(u, period, [(p, no, total)], other)

    @precondition(lambda self: sum(map(len, self.m.filings.values())) < 2)
    @rule(u=st.sampled_from(USCCS), month=st.integers(1, 12))
    def filing(self, u, month):
        self.n += 1
        r = self.finance.post(f"/v1/enterprises/{u}/model-filings", json={
            "filing_no": f"ZJ-{self.n}", "model_name": "m", "obtained_on": f"2026-{month:02d}-01"})
        assert r.status_code == 201, r.json
        self.m.filings.setdefault(u, []).append(date(2026, month, 1))

    @rule(period=st.sampled_from(PERIODS))
    def run(self, period):
        with DB.session() as s, s.begin():
            reconcile(s, self.policy, period)
        self.m.run(period)
        before = self.postings()
        with DB.session() as s, s.begin():  # a re-run at once moves nothing
            reconcile(s, self.policy, period)
        assert self.postings() == before

    @precondition(lambda self: self.m.claims)
    @rule(data=st.data(), approve=st.booleans())
    def decide(self, data, approve):
        cid = data.draw(st.sampled_from(sorted(self.m.claims)))
        c = self.m.claims[cid]
        try:
            with DB.session() as s, s.begin():
                claim = claims_svc.get_claim(s, cid, lock=True)
                if approve:
                    claims_svc.approve(s, self.policy, claim, "reviewed")
                else:
                    claims_svc.reject(s, self.policy, claim, "no")
        except DomainError:
            assert c.status in (("submitted", "rejected") if approve else ("approved",))
            return
        if approve and c.status in ("verified", "flagged"):
            self.m.reserved[c.uscc] -= c.payable
            self.m.granted[c.uscc] = self.m.granted.get(c.uscc, 0) + c.payable
            c.status = "approved"
        elif not approve and c.status in ("submitted", "verified", "flagged"):
            self.m.reserved[c.uscc] = self.m.reserved.get(c.uscc, 0) - c.payable
            c.status, c.payable = "rejected", 0

    def postings(self):
        with DB.session() as s:
            return (s.scalar(select(func.count()).select_from(LedgerPosting)),
                    s.scalar(select(func.count()).select_from(ClaimAdjustment)))

    @invariant()
    def agrees_with_the_model(self):
        if not hasattr(self, "m"):
            return
        with DB.session() as s:
            assert ledger.verify(s).ok
            got = {c.id: (c.status, c.payable) for c in s.scalars(select(Claim))}
            assert got == {cid: (c.status, c.payable) for cid, c in self.m.claims.items()}
            for u in USCCS:
                b = ledger.read_quota(s, self.policy, u, 2026)
                assert (b.cap, b.reserved, b.granted) == \
                    (self.m.cap(u), self.m.reserved.get(u, 0), self.m.granted.get(u, 0)), u
                assert b.reserved + b.granted <= b.cap


DB: Database
CLIENT = None


def test_v2_rules_state_machine(tmp_path):
    global DB, CLIENT
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    upgrade(url)
    DB = Database(url)
    app = create_app(Settings.from_env(env={}, database_url=url, **NO_PUSH_LIMITS), database=DB)
    app.extensions["voucher.policy"] = small_policy()
    CLIENT = app.test_client()
    try:
        V2Billing.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                               suppress_health_check=list(HealthCheck))
        V2Billing.TestCase().runTest()
    finally:
        DB.dispose()
