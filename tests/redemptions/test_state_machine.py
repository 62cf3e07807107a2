"""A hypothesis state machine over authorise / capture / void / expire / claims / reconcile
against a reference model of one enterprise's quota (docs/API.md#redemptions)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from billing import ledger
from billing.policy_file import load_policy
from billing.redemptions import expire_due
from kernel.db import utcnow
from tests.conftest import Api, new_key
from tests.factories import setup_programme

P = "2026-02"
POLICY = load_policy()


def half(fen: int) -> int:
    return (fen + 1) // 2  # round_half_up(fen × 0.5)


def machine(app, db):
    class Redemptions(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            from tests.conftest import truncate_all

            truncate_all(db)
            client = app.test_client()
            self.finance = Api(client, new_key(db, "finance"))
            _, (self.u,) = setup_programme(self.finance, enterprises=1)
            self.prov = Api(client, new_key(db, "provider", "prov-a"))
            self.ent = Api(client, new_key(db, "enterprise", self.u))
            self.cap = 200_000  # a small cap: a model filing is not needed, the fill does it
            big = self.prov.post("/v1/redemptions", json={"enterprise_uscc": self.u, "reference": "fill",
                                                          "list_amount": 2 * (POLICY.cap_standard - self.cap),
                                                          "period": P}).json
            # captured, so that it never expires: the quota left to the machine is `cap`
            self.prov.post(f"/v1/redemptions/{big['id']}/capture",
                           json={"invoice_no": "FILL", "amount": big["list_amount"]})
            self.base_hold = big["held"]
            self.model: dict[str, dict] = {}  # id -> {status, held, list}
            self.refs = 0
            self.claimed = 0

        def remaining(self):
            return self.cap - sum(r["held"] for r in self.model.values())

        @rule(amount=st.integers(1, 150_000))
        def authorise(self, amount):
            self.refs += 1
            r = self.prov.post("/v1/redemptions", json={"enterprise_uscc": self.u, "reference": f"r{self.refs}",
                                                        "list_amount": amount, "period": P})
            expect = min(half(amount), self.remaining())
            if expect == 0:
                assert r.status_code == 422 and r.json["error"]["code"] == "quota_exhausted"
                return
            assert r.status_code == 201, r.json
            assert r.json["subsidy"] == expect
            self.model[r.json["id"]] = {"status": "authorized", "held": expect, "list": amount}

        def pick(self, data, status):
            ids = sorted(i for i, r in self.model.items() if r["status"] == status)
            return data.draw(st.sampled_from(ids)) if ids else None

        @rule(data=st.data(), frac=st.floats(0.01, 1.2))
        def capture(self, data, frac):
            rid = self.pick(data, "authorized")
            if rid is None:
                return
            m = self.model[rid]
            amount = max(1, int(m["list"] * frac))
            r = self.prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": f"F-{rid}", "amount": amount})
            if amount > m["list"]:
                assert r.status_code == 422
                return
            assert r.status_code == 200, r.json
            m["held"] = min(half(amount), m["held"])
            m["status"] = "captured"
            assert r.json["subsidy"] == m["held"]

        @rule(data=st.data())
        def void(self, data):
            rid = self.pick(data, "authorized")
            if rid is None:
                return
            assert self.prov.post(f"/v1/redemptions/{rid}/void").status_code == 200
            self.model[rid].update(status="voided", held=0)

        @rule()
        def expire(self):
            expire_due(db, POLICY, now=utcnow() + timedelta(days=POLICY.hold_days + 1))
            for m in self.model.values():
                if m["status"] == "authorized":
                    m.update(status="expired", held=0)

        @rule()
        def reconcile(self):
            assert self.finance.post("/v1/reconciliations", json={"period": P}).status_code in (200, 201)
            for m in self.model.values():  # no invoices exist: every capture is flagged
                if m["status"] == "captured":
                    m["status"] = "flagged"

        @rule(data=st.data())
        def reject(self, data):
            rid = self.pick(data, "flagged")
            if rid is None:
                return
            r = self.finance.post(f"/v1/redemptions/{rid}/reject", json={"reason": "no invoice"})
            assert r.status_code == 200, r.json
            self.model[rid].update(status="rejected", held=0)

        @precondition(lambda self: self.claimed < 3)
        @rule()
        def claim(self):
            self.claimed += 1
            r = self.ent.post("/v1/claims", json={"period": P, "items": [
                {"provider_id": "prov-a", "invoice_no": f"F-rdm_{self.claimed}", "amount_paid": 1_000}]})
            assert r.status_code == 201, r.json  # claims of unknown invoices reserve nothing

        @invariant()
        def quota_matches_the_model(self):
            q = self.ent.get(f"/v1/enterprises/{self.u}/quota?year=2026").json
            held = sum(m["held"] for m in self.model.values())
            assert q["reserved"] == self.base_hold + held
            assert q["reserved"] + q["granted"] <= q["cap"]
            for rid, m in self.model.items():
                got = self.prov.get(f"/v1/redemptions/{rid}").json
                assert (got["status"], got["held"]) == (m["status"], m["held"]), (rid, got, m)

        def teardown(self):
            with db.session() as s:
                report = ledger.verify(s)
            assert report.ok, report.breaches

    return Redemptions


def test_redemptions_follow_the_reference_model(app, db):
    test = machine(app, db).TestCase
    test.settings = settings(max_examples=15, stateful_step_count=12, deadline=None,
                             suppress_health_check=list(HealthCheck))
    test().runTest()
