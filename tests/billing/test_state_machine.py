"""A hypothesis state machine over the whole service layer.

Pushes, voids, invoices, claims, reconciliations, approvals and rejections in random order;
after every step the ledger invariants hold. Interleaved with them, operations the service
must refuse — approving or rejecting a claim in the wrong state, changing a submitted
invoice (409), claiming a month that is not over, reconciling a malformed period, voiding a
record the provider does not have, pushing only bad records (each rejected with its code) —
and every refusal leaves the stored state exactly as it was: records, invoices, claims and
their items, quota balances, ledger postings, reconciliations and the audit trail.
The refused operations go through the HTTP API, so a request's transaction is covered too.
Runs on SQLite (the arithmetic and invariants do not depend on the database; the
PostgreSQL-specific locking is proven by tests/billing/test_concurrency.py).
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select

from billing import claims as claims_svc
from billing import ledger
from billing.invoices import submit_invoice
from billing.models import (
    Claim,
    ClaimAdjustment,
    ClaimItem,
    LedgerPosting,
    ProviderInvoice,
    QuotaBalance,
    Reconciliation,
)
from billing.policy import round_half_up_fen
from billing.policy_file import load_policy
from billing.reconciliation import reconcile
from config.settings import Settings
from kernel.audit import AuditEvent
from kernel.db import Database
from kernel.errors import DomainError
from kernel.periods import current_period
from metering.ingest import ingest_records
from metering.models import Enterprise, Provider, UsageRecord
from metering.usage import get_record, void_record
from tests.conftest import NO_PUSH_LIMITS, Api, new_key, truncate_all
from tests.factories import make_uscc
from voucher.app import create_app
from voucher.migrate import upgrade

PERIODS = ["2026-07", "2026-08", "2026-09"]
# Months where only `honest_month` writes: usage, invoice and claim agree, so claims verify,
# reserve quota and can be approved (and clawed back after a void).
HONEST_PERIODS = ["2026-04", "2026-05", "2026-06"]
PROVIDERS = ["prov-a", "prov-b"]
USCCS = [make_uscc(300 + i) for i in range(2)]
UNREGISTERED = make_uscc(399)
# Everything a refused operation must leave untouched. (ingest_batch is not in it: a push
# whose records were all rejected is still reported as a batch, by design.)
STATE_TABLES = [UsageRecord, ProviderInvoice, Claim, ClaimItem, ClaimAdjustment, QuotaBalance,
                LedgerPosting, Reconciliation, AuditEvent]
BAD_PERIODS = ["２０２６-07", "2026-13", "2026-00", "2026-7", "26-07", "2026/07", "2026-07-01", "", " 2026-07",
               202607, None]
# How a record is made bad, and the code the push answers with (docs/API.md#record-codes).
BAD_RECORDS = {
    "invalid_uscc": lambda r: {**r, "enterprise_uscc": r["enterprise_uscc"][:-1] +
                                ("0" if r["enterprise_uscc"][-1] != "0" else "1")},
    "unknown_enterprise": lambda r: {**r, "enterprise_uscc": UNREGISTERED},
    "missing_timezone": lambda r: {**r, "ended_at": r["ended_at"][:19]},
    "invalid_time_range": lambda r: {**r, "started_at": r["ended_at"], "ended_at": r["started_at"]},
    "ends_in_the_future": lambda r: {**r, "ended_at": "2999-01-01T00:00:00+00:00"},
    "invalid_quantity": lambda r: {**r, "quantity": "-1"},
    "invalid_amount": lambda r: {**r, "amount": -5},
    "unsupported_unit": lambda r: {**r, "unit": "furlong"},
    "unsupported_currency": lambda r: {**r, "currency": "USD"},
}
EXPECTED_CODE = {"ends_in_the_future": "invalid_time_range"}


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
        self.record_bodies: dict[tuple[str, str], dict] = {}
        self.invoices: list[tuple[str, str]] = []
        self.invoice_bodies: dict[tuple[str, str], dict] = {}
        self.claims: list[int] = []
        self.honest: set[tuple[str, str, str]] = set()
        self.api = {("finance", None): Api(CLIENT, new_key(DB, "finance"))}
        for pid in PROVIDERS:
            self.api[("provider", pid)] = Api(CLIENT, new_key(DB, "provider", pid))
        for u in USCCS:
            self.api[("enterprise", u)] = Api(CLIENT, new_key(DB, "enterprise", u))

    def snapshot(self):
        """Every row of every table a refused operation must not touch, in key order."""
        with DB.session() as s:
            return {model.__tablename__: [
                tuple(getattr(row, c.key) for c in model.__mapper__.column_attrs)
                for row in s.scalars(select(model).order_by(*model.__mapper__.primary_key))
            ] for model in STATE_TABLES}

    def assert_unchanged(self, before, what):
        after = self.snapshot()
        changed = [t for t in before if before[t] != after[t]]
        assert not changed, f"refused {what} changed {changed}"

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
        self.record_bodies[(provider, rec["record_id"])] = rec

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
        self.invoice_bodies[(provider, no)] = {"invoice_no": no, "enterprise_uscc": uscc, "period": period,
                                               "amount": amount, "issued_on": "2026-10-01"}

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

    @precondition(lambda self: len(self.honest) < len(PROVIDERS) * len(USCCS) * len(HONEST_PERIODS))
    @rule(data=st.data(), amount=st.integers(1, 30_000))
    def honest_month(self, data, amount):
        provider, uscc, period = data.draw(st.sampled_from(
            [k for k in itertools.product(PROVIDERS, USCCS, HONEST_PERIODS) if k not in self.honest]))
        self.honest.add((provider, uscc, period))
        self.n += 1
        y, m = map(int, period.split("-"))
        ended = datetime(y, m, 12, tzinfo=UTC) + timedelta(hours=self.n)
        rec = {"record_id": f"h{self.n}", "enterprise_uscc": uscc, "resource": "gpu", "unit": "gpu_hour",
               "quantity": "1", "started_at": (ended - timedelta(hours=1)).isoformat(),
               "ended_at": ended.isoformat(), "amount": amount, "currency": "CNY"}
        no = f"H{self.n}"
        with DB.session() as s, s.begin():
            assert ingest_records(s, provider, [rec]).accepted == 1
            submit_invoice(s, provider, invoice_no=no, enterprise_uscc=uscc, period=period, amount=amount,
                           tax_amount=None, issued_on=date(2026, 7, 1))
            c = claims_svc.submit_claim(s, uscc, period, [{"provider_id": provider, "invoice_no": no,
                                                            "amount_paid": amount}], [])
        self.records.append((provider, rec["record_id"]))
        self.record_bodies[(provider, rec["record_id"])] = rec
        self.invoices.append((provider, no))
        self.invoice_bodies[(provider, no)] = {"invoice_no": no, "enterprise_uscc": uscc, "period": period,
                                               "amount": amount, "issued_on": "2026-07-01"}
        self.claims.append(c.id)

    @rule(period=st.sampled_from(PERIODS + HONEST_PERIODS))
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
        except DomainError:
            self.assert_unchanged(before, "approval" if approve else "rejection")

    # --- operations the service must refuse, each leaving everything as it was -------------
    # One rule picks which, so refusals take one step in seven and the walk still gets far
    # (approved claims, clawbacks, a reached cap) before and between them.

    @rule(data=st.data(), refusal=st.sampled_from(["change_invoice", "claim_month_not_over",
                                                    "reconcile_bad_period", "void_unknown_record",
                                                    "push_only_bad_records"]))
    def refused_operation(self, data, refusal):
        before = self.snapshot()
        self.assert_unchanged(before, getattr(self, refusal)(data))

    def change_invoice(self, data):
        """The same invoice number with other content: 409, the stored invoice stays."""
        if not self.invoices:
            return self.claim_month_not_over(data)
        provider, no = data.draw(st.sampled_from(self.invoices), label="invoice")
        body = dict(self.invoice_bodies[(provider, no)])
        change = data.draw(st.sampled_from(["amount", "period", "enterprise_uscc", "issued_on", "tax_amount"]),
                           label="change")
        body[change] = {"amount": lambda: body["amount"] + data.draw(st.integers(1, 1_000)),
                        "period": lambda: "2026-06" if body["period"] != "2026-06" else "2026-05",
                        "enterprise_uscc": lambda: next(u for u in USCCS if u != body["enterprise_uscc"]),
                        "issued_on": lambda: "2026-10-02",
                        "tax_amount": lambda: data.draw(st.integers(0, 1_000))}[change]()
        r = self.api[("provider", provider)].post("/v1/provider-invoices", json=body)
        assert r.status_code == 409 and r.json["error"]["code"] == "conflict", r.json
        return f"invoice change ({change})"

    def claim_month_not_over(self, data):
        """A claim for this month or a later one: 422 period_not_closed."""
        uscc = data.draw(st.sampled_from(USCCS), label="uscc")
        y, m = map(int, current_period().split("-"))
        y, m = divmod(y * 12 + m - 1 + data.draw(st.integers(0, 24), label="months ahead"), 12)
        period = f"{y:04d}-{m + 1:02d}"
        picked = data.draw(st.lists(st.sampled_from(self.invoices), max_size=2, unique=True)) if self.invoices else []
        items = [{"provider_id": p, "invoice_no": no, "amount_paid": 100} for p, no in picked] or \
                [{"provider_id": PROVIDERS[0], "invoice_no": "I-none", "amount_paid": 100}]
        r = self.api[("enterprise", uscc)].post("/v1/claims", json={"period": period, "items": items})
        assert r.status_code == 422 and r.json["error"]["code"] == "period_not_closed", r.json
        return f"claim for {period}"

    def reconcile_bad_period(self, data):
        """A malformed period: refused before anything is read or written."""
        period = data.draw(st.sampled_from(BAD_PERIODS), label="period")
        r = self.api[("finance", None)].post("/v1/reconciliations", json={"period": period})
        assert r.status_code in (400, 422) and r.json["error"]["param"] == "period", r.json
        return f"reconciliation of {period!r}"

    def void_unknown_record(self, data):
        """A record this provider never pushed (another provider's, or none at all): 404."""
        provider = data.draw(st.sampled_from(PROVIDERS), label="provider")
        others = [rid for p, rid in self.records if p != provider and (provider, rid) not in self.record_bodies]
        rid = data.draw(st.sampled_from([*others, "r-never-pushed"]), label="record_id")
        if data.draw(st.booleans(), label="as finance"):
            r = self.api[("finance", None)].delete(f"/v1/usage-records/{rid}?provider={provider}",
                                                   json={"reason": "test"})
        else:
            r = self.api[("provider", provider)].delete(f"/v1/usage-records/{rid}", json={"reason": "test"})
        assert r.status_code == 404, r.json
        return f"void of {provider}/{rid}"

    def push_only_bad_records(self, data):
        """A batch of bad records: 200, each rejected with its code, none stored."""
        provider = data.draw(st.sampled_from(PROVIDERS), label="provider")
        uscc = data.draw(st.sampled_from(USCCS), label="uscc")
        mine = [rid for p, rid in self.records if p == provider]
        kinds = data.draw(st.lists(st.sampled_from([*BAD_RECORDS, *(["conflict"] if mine else [])]),
                                   min_size=1, max_size=4), label="kinds")
        batch, expected = [], []
        for kind in kinds:
            self.n += 1
            if kind == "conflict":
                # The same record_id with other content: refused, never overwritten.
                original = self.record_bodies[(provider, data.draw(st.sampled_from(mine)))]
                batch.append({**original, "amount": original["amount"] + 1})
                expected.append("conflict")
                continue
            ended = datetime(2026, 8, 20, tzinfo=UTC) + timedelta(hours=self.n)
            good = {"record_id": f"bad{self.n}", "enterprise_uscc": uscc, "resource": "gpu", "unit": "gpu_hour",
                    "quantity": "1", "started_at": (ended - timedelta(hours=1)).isoformat(),
                    "ended_at": ended.isoformat(), "amount": 100, "currency": "CNY"}
            batch.append(BAD_RECORDS[kind](good))
            expected.append(EXPECTED_CODE.get(kind, kind))
        r = self.api[("provider", provider)].post("/v1/usage-records", json={"records": batch})
        assert r.status_code == 200, r.json
        assert (r.json["accepted"], r.json["rejected"]) == (0, len(batch)), r.json
        assert [res["error"]["code"] for res in r.json["results"]] == expected, r.json
        return f"push of {expected}"

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
CLIENT = None  # the app's test client, on DB


def test_billing_state_machine(tmp_path):
    global DB, CLIENT
    url = f"sqlite:///{tmp_path / 'sm.db'}"
    upgrade(url)
    DB = Database(url)
    app = create_app(Settings.from_env(env={}, database_url=url, **NO_PUSH_LIMITS), database=DB)
    app.extensions["voucher.policy"] = small_policy()  # the API and the services agree on the cap
    CLIENT = app.test_client()
    try:
        Billing.TestCase.settings = settings(max_examples=30, stateful_step_count=35, deadline=None,
                                             suppress_health_check=list(HealthCheck))
        Billing.TestCase().runTest()
    finally:
        DB.dispose()
