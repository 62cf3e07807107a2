"""One home per rule (docs/ARCHITECTURE.md#rule-homes): production runs the functions the
policy tests and docs point at, and the quota's fast path agrees with its definition."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from api.schemas.billing import Quota
from billing import ledger, policy, reconciliation
from billing.policy_file import load_policy
from billing.reconciliation import ItemFacts, evaluate_item
from tests.factories import claim, invoice, setup_programme, usage

POLICY = load_policy()
fen = st.integers(min_value=0, max_value=10**9)
near = st.integers(min_value=-300, max_value=300)


@given(paid=fen, d_invoice=near, d_metered=near, eligible_share=st.fractions(0, 1),
       tolerance=st.integers(0, 200), claimed_by=st.one_of(st.none(), st.integers(1, 10)))
def test_reconciliation_item_equals_the_policy_item(paid, d_invoice, d_metered, eligible_share,
                                                    tolerance, claimed_by):
    pol = dataclasses.replace(POLICY, tolerance=tolerance)
    invoiced, metered = max(paid + d_invoice, 0), max(paid + d_metered, 0)
    eligible = int(metered * eligible_share)
    outcome = evaluate_item(pol, ItemFacts("prov-a", "INV-1", paid, invoiced, metered, claimed_by, eligible))
    base, codes = policy.item_base(pol, paid, invoiced, metered, eligible)
    got = [d["code"] for d in outcome.discrepancies if d["code"] != "invoice_claimed_twice"]
    assert got == codes
    assert outcome.base == (0 if claimed_by is not None else base)


def test_reconciliation_runs_the_policy_functions(monkeypatch):
    """A change made where the docs point changes what the reconciliation pays."""
    calls = []

    def item_base(pol, paid, invoiced, metered, eligible=None):
        calls.append((paid, invoiced, metered, eligible))
        return 7, []

    monkeypatch.setattr(reconciliation, "item_base", item_base)
    outcome = evaluate_item(POLICY, ItemFacts("prov-a", "INV-1", 1_000, 1_000, 1_000, None, 1_000))
    assert calls == [(1_000, 1_000, 1_000, 1_000)] and outcome.base == 7
    assert reconciliation.compute_claim is policy.compute_claim
    assert reconciliation.in_window is policy.in_window
    assert reconciliation.window_bounds is policy.window_bounds


def test_balance_remaining_is_the_policy_remaining():
    b = ledger.Balance("U", 2026, 100, "standard", 30, 80, POLICY.id)
    assert b.remaining == policy.remaining(100, 80, 30) == 0


def _hot_and_domain(finance, app, db, keys):
    """The API's one-statement quota read and billing.ledger.read_quota, for each (uscc, year)."""
    hot = {}
    for uscc, year in keys:  # all HTTP first: an open session would hold SQLite's lock
        r = finance.get(f"/v1/enterprises/{uscc}/quota?year={year}")
        assert r.status_code == 200, r.json
        hot[(uscc, year)] = r.json
    pol = app.extensions["voucher.policy"]
    with db.session() as s:
        return hot, {k: Quota.dump(ledger.read_quota(s, pol, *k)) for k in keys}


def test_hot_quota_read_equals_the_domain_quota(finance, as_key, app, db):
    """api/hotread.py's one statement answers exactly what billing.ledger.read_quota defines:
    with a balance row, without one, with a filing, and for every enterprise of quotas()."""
    _providers, usccs = setup_programme(finance, enterprises=3)
    u_row, u_none, u_filing = usccs
    finance.post(f"/v1/enterprises/{u_filing}/model-filings",
                 json={"filing_no": "ZJ-2026-9", "model_name": "m", "obtained_on": "2026-02-01"})
    provider = as_key("provider", "prov-a")
    usage(provider, u_row, 1_000_000)
    invoice(provider, "INV-1", u_row, 1_000_000)
    claim(as_key("enterprise", u_row), [("prov-a", "INV-1", 1_000_000)])
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    hot, domain = _hot_and_domain(finance, app, db, [(u, y) for u in usccs for y in (2026, 2027)])
    assert hot == domain
    pol = app.extensions["voucher.policy"]
    with db.session() as s:
        everyone = ledger.quotas(s, pol, 2026)
        for uscc in usccs:
            assert everyone[uscc] == ledger.read_quota(s, pol, uscc, 2026)
    assert everyone[u_row].reserved == 500_000 and everyone[u_none].reserved == 0
    assert everyone[u_filing].cap_basis == "new_model_filing"
    assert hot[(u_none, 2026)] | {"reserved": 500_000, "remaining": 199_500_000} == (
        hot[(u_row, 2026)] | {"enterprise_uscc": u_none})  # no balance row: the same figures



def test_hot_quota_read_equals_the_domain_quota_after_a_late_filing(finance, as_key, app, db):
    """A filing recorded after the year's balance row exists raises the cap at once (defect 5)."""
    _providers, (u_row, _u) = setup_programme(finance, enterprises=2)
    provider = as_key("provider", "prov-a")
    usage(provider, u_row, 1_000_000)
    invoice(provider, "INV-1", u_row, 1_000_000)
    claim(as_key("enterprise", u_row), [("prov-a", "INV-1", 1_000_000)])
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    finance.post(f"/v1/enterprises/{u_row}/model-filings",
                 json={"filing_no": "ZJ-2026-10", "model_name": "m", "obtained_on": "2026-11-01"})
    hot, domain = _hot_and_domain(finance, app, db, [(u_row, 2026)])
    assert (hot[(u_row, 2026)]["cap"], hot[(u_row, 2026)]["cap_basis"]) == (500_000_000, "new_model_filing")
    assert hot[(u_row, 2026)]["reserved"] == 500_000
    assert hot == domain


def test_hot_quota_read_equals_the_domain_quota_outside_the_window(finance, app, db):
    """Years with no day in the policy window: cap 0, `outside_policy_window`, also with a filing."""
    _providers, (u0, u1) = setup_programme(finance, enterprises=2)
    finance.post(f"/v1/enterprises/{u1}/model-filings",
                 json={"filing_no": "ZJ-2028-1", "model_name": "m", "obtained_on": "2028-03-01"})
    keys = [(u, y) for u in (u0, u1) for y in (2024, 2028)]
    hot, domain = _hot_and_domain(finance, app, db, keys)
    assert {(b["cap"], b["cap_basis"], b["remaining"]) for b in hot.values()} == {
        (0, "outside_policy_window", 0)}
    assert hot == domain


def test_the_simulation_runs_the_engines_functions():
    """The policy simulation (docs/POLICY.md#simulation) pays with the engine's arithmetic and
    reads with the reconciliation's queries: no second copy to drift."""
    from billing import simulation

    for name in ("compute_claim", "approved_item_base", "recomputed_grant", "redemption_hold",
                 "redemption_capture", "cap_for", "remaining", "in_window"):
        assert getattr(simulation, name) is getattr(policy, name), name
    for name in ("evaluate_item", "claim_level", "provider_not_listed", "metered_sums", "invoice_holders",
                 "_claim_batches", "_facts_for"):
        assert getattr(simulation, name) is getattr(reconciliation, name), name
