"""The money rules of v2 (docs/POLICY.md, docs/API.md#rec-steps), hand-computed, through the HTTP API
on both databases. Figures in the names and comments are yuan; the code speaks fen (¥1 = 100)."""

from __future__ import annotations

import pytest

from billing import ledger
from billing.policy import stacked_payable
from kernel.periods import current_period, period_year
from tests.factories import claim, invoice, setup_programme, usage

YUAN = 100


@pytest.fixture
def w(finance, as_key, app):
    _providers, usccs = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    return {"policy": app.extensions["voucher.policy"], "finance": finance, "usccs": usccs,
            "a": as_key("provider", "prov-a"), "b": as_key("provider", "prov-b"),
            "e0": as_key("enterprise", usccs[0]), "e1": as_key("enterprise", usccs[1])}


def run(w, period="2026-10"):
    r = w["finance"].post("/v1/reconciliations", json={"period": period})
    assert r.status_code in (200, 201), r.json
    return r.json


def get_claim(w, cid):
    return w["finance"].get(f"/v1/claims/{cid}").json


def quota(w, uscc, year=2026):
    return w["finance"].get(f"/v1/enterprises/{uscc}/quota?year={year}").json


def adjustments(w, period="2026-10"):
    return w["finance"].get(f"/v1/reconciliations/{period}").json["adjustments"]


# --- 1. 就高不重复 with the cap -------------------------------------------------------------

def test_stacking_after_the_cap_pure_6m_spend_3m_computed_1_5m_other_pays_500k():
    # min(¥3,000,000, ¥2,000,000 left) − ¥1,500,000 = ¥500,000
    assert stacked_payable(3_000_000 * YUAN, 2_000_000 * YUAN, 1_500_000 * YUAN) == 500_000 * YUAN
    # the other subsidy above what this programme could pay: nothing, never negative
    assert stacked_payable(3_000_000 * YUAN, 2_000_000 * YUAN, 2_500_000 * YUAN) == 0


def test_spend_6m_computed_3m_other_1_5m_standard_cap_pays_500k(w):
    u = w["usccs"][0]
    spend = 6_000_000 * YUAN
    usage(w["a"], u, spend)
    invoice(w["a"], "A-6M", u, spend)
    cid = claim(w["e0"], [("prov-a", "A-6M", spend)], others=[1_500_000 * YUAN])
    run(w)
    c = get_claim(w, cid)
    assert c["computed"] == 3_000_000 * YUAN
    assert c["payable_before_cap"] == 1_500_000 * YUAN  # what v1 paid: ¥3,000,000 from two programmes
    assert c["payable"] == 500_000 * YUAN and c["cap_reached"]
    assert quota(w, u)["reserved"] == 500_000 * YUAN


# --- 2. years outside the window ------------------------------------------------------------

def test_years_without_a_window_day_have_cap_0(w):
    u = w["usccs"][0]
    for year in (2024, 2028):
        q = quota(w, u, year)
        assert (q["cap"], q["cap_basis"], q["remaining"]) == (0, "outside_policy_window", 0), year
    assert quota(w, u, 2025)["cap"] == 2_000_000 * YUAN  # 2025 has days from 13 May on


def test_filing_obtained_before_effective_from_raises_its_window_year(w):
    u = w["usccs"][0]
    r = w["finance"].post(f"/v1/enterprises/{u}/model-filings",
                          json={"filing_no": "ZJ-2025-1", "model_name": "m", "obtained_on": "2025-03-01"})
    assert r.status_code == 201, r.json
    q = quota(w, u, 2025)
    assert (q["cap"], q["cap_basis"]) == (5_000_000 * YUAN, "new_model_filing")
    assert quota(w, u, 2024)["cap_basis"] == "outside_policy_window"


# --- 3. caps derived from filings at every read and run --------------------------------------

def test_filing_after_the_balance_row_changes_the_next_read_and_run(w, db):
    u = w["usccs"][0]
    spend = 5_000_000 * YUAN  # computed ¥2,500,000: the standard cap cuts it to ¥2,000,000
    usage(w["a"], u, spend)
    invoice(w["a"], "A-5M", u, spend)
    cid = claim(w["e0"], [("prov-a", "A-5M", spend)])
    run(w)
    assert get_claim(w, cid)["payable"] == 2_000_000 * YUAN
    r = w["finance"].post(f"/v1/enterprises/{u}/model-filings",
                          json={"filing_no": "ZJ-2026-1", "model_name": "m", "obtained_on": "2026-06-01"})
    assert r.status_code == 201, r.json
    with db.session() as s:  # the domain read, without any re-run
        b = ledger.read_quota(s, w["policy"], u, 2026)
        assert (b.cap, b.cap_basis) == (5_000_000 * YUAN, "new_model_filing")
        assert b.remaining == 3_000_000 * YUAN
        assert ledger.quotas(s, w["policy"], 2026)[u] == b
    run(w)  # the next run pays the whole ¥2,500,000 under the raised cap
    assert get_claim(w, cid)["payable"] == 2_500_000 * YUAN


# --- 4. invoice squatting ----------------------------------------------------------------------

def test_another_enterprise_naming_my_invoice_never_takes_it(w):
    owner, squatter = w["usccs"]
    usage(w["a"], owner, 10_000 * YUAN)
    invoice(w["a"], "A-1", owner, 10_000 * YUAN)
    squat = claim(w["e1"], [("prov-a", "A-1", 10_000 * YUAN)])  # first, with a lower id
    mine = claim(w["e0"], [("prov-a", "A-1", 10_000 * YUAN)])
    run(w)
    s, m = get_claim(w, squat), get_claim(w, mine)
    assert s["discrepancy_codes"] == ["invoice_not_found"] and s["payable"] == 0
    assert m["status"] == "verified" and m["discrepancy_codes"] == []
    assert m["payable"] == 5_000 * YUAN


# --- 5. listing per usage date, provider_not_listed per item -----------------------------------

def test_unlisted_provider_zeroes_only_its_own_item(w):
    u = w["usccs"][0]
    w["finance"].patch("/v1/providers/prov-b", json={"listed_from": "2026-11-01"})
    usage(w["a"], u, 4_000 * YUAN)
    invoice(w["a"], "A-1", u, 4_000 * YUAN)
    usage(w["b"], u, 1_000 * YUAN)
    invoice(w["b"], "B-1", u, 1_000 * YUAN)
    cid = claim(w["e0"], [("prov-a", "A-1", 4_000 * YUAN), ("prov-b", "B-1", 1_000 * YUAN)])
    run(w)
    c = get_claim(w, cid)
    assert [i["base"] for i in c["items"]] == [4_000 * YUAN, 0]
    assert [d["code"] for d in c["items"][1]["discrepancies"]] == ["provider_not_listed"]
    assert c["status"] == "flagged" and c["payable"] == 2_000 * YUAN  # ¥4,000 × 50%


def test_delisted_mid_month_counts_only_usage_ended_by_then(w):
    u = w["usccs"][0]
    w["finance"].patch("/v1/providers/prov-b", json={"listed_until": "2026-10-15"})
    usage(w["b"], u, 300 * YUAN, day=15)  # ended 15 Oct 12:00 Shanghai: inside the listing
    usage(w["b"], u, 200 * YUAN, day=20)  # after the delisting: metered, not eligible
    invoice(w["b"], "B-1", u, 500 * YUAN)
    cid = claim(w["e0"], [("prov-b", "B-1", 500 * YUAN)])
    run(w)
    c = get_claim(w, cid)
    assert c["status"] == "verified" and c["discrepancy_codes"] == []  # no flag
    assert c["items"][0]["metered"] == 500 * YUAN  # the invoice comparison uses all usage
    assert c["base"] == 300 * YUAN and c["payable"] == 150 * YUAN


# --- 6. approved claims recomputed -------------------------------------------------------------

def test_void_of_20k_in_a_4m_month_claws_back_10k_not_2m(w):
    u = w["usccs"][0]
    usage(w["a"], u, 3_980_000 * YUAN, rid="most")
    usage(w["a"], u, 20_000 * YUAN, rid="wrong")
    invoice(w["a"], "A-4M", u, 4_000_000 * YUAN)
    cid = claim(w["e0"], [("prov-a", "A-4M", 4_000_000 * YUAN)])
    run(w)
    assert w["finance"].post(f"/v1/claims/{cid}/approve").json["payable"] == 2_000_000 * YUAN
    assert w["a"].delete("/v1/usage-records/wrong", json={"reason": "wrong tenant"}).status_code == 200
    run(w)
    c = get_claim(w, cid)
    assert c["status"] == "approved"
    assert (c["payable"], c["clawed_back"]) == (1_990_000 * YUAN, 10_000 * YUAN)
    (found,) = [d for d in c["discrepancies"] if d["code"] == "usage_voided_after_approval"]
    assert (found["granted_at_approval"], found["payable"], found["clawed_back"]) == \
        (2_000_000 * YUAN, 1_990_000 * YUAN, 10_000 * YUAN)
    assert (found["base_at_approval"], found["base"]) == (4_000_000 * YUAN, 3_980_000 * YUAN)
    assert [a["amount"] for a in adjustments(w)] == [-10_000 * YUAN]
    q = quota(w, u)
    assert (q["granted"], q["remaining"]) == (1_990_000 * YUAN, 10_000 * YUAN)
    run(w)  # idempotent: no second adjustment for the same difference
    assert [a["amount"] for a in adjustments(w)] == [-10_000 * YUAN]
    assert get_claim(w, cid)["discrepancies"] == c["discrepancies"]


def test_50_more_usage_after_a_5000_approval_claws_back_nothing(w):
    u = w["usccs"][0]
    usage(w["a"], u, 10_000 * YUAN)
    invoice(w["a"], "A-1", u, 10_000 * YUAN)
    cid = claim(w["e0"], [("prov-a", "A-1", 10_000 * YUAN)])
    run(w)
    w["finance"].post(f"/v1/claims/{cid}/approve")
    usage(w["a"], u, 50 * YUAN, rid="late")
    run(w)
    c = get_claim(w, cid)
    assert (c["payable"], c["clawed_back"]) == (5_000 * YUAN, 0)
    assert c["discrepancy_codes"] == [] and adjustments(w) == []


def test_approved_flagged_claim_is_not_zeroed_by_its_discrepancy(w):
    """Approved although flagged (usage ¥1,100 against a ¥1,000 invoice, so base 0 and ¥0 granted):
    a re-run recomputes ¥500 without zeroing the item, above the ¥0 grant — never raised."""
    u = w["usccs"][0]
    usage(w["a"], u, 1_100 * YUAN, rid="big")
    invoice(w["a"], "A-1", u, 1_000 * YUAN)
    cid = claim(w["e0"], [("prov-a", "A-1", 1_000 * YUAN)])
    run(w)
    assert get_claim(w, cid)["status"] == "flagged"  # usage_invoice_mismatch: base 0, payable 0
    w["finance"].post(f"/v1/claims/{cid}/approve", json={"reason": "provider explained the extra hour"})
    run(w)
    c = get_claim(w, cid)
    assert (c["payable"], c["clawed_back"]) == (0, 0)  # recomputed ¥500 > ¥0 granted: never raised
    assert adjustments(w) == []


# --- 7. claim limits ---------------------------------------------------------------------------

def test_at_most_10_undecided_claims_per_enterprise_and_period(w):
    ids = [claim(w["e0"], [("prov-a", f"A-{n}", 100)]) for n in range(10)]
    r = w["e0"].post("/v1/claims", json={"period": "2026-10", "items": [
        {"provider_id": "prov-a", "invoice_no": "A-10", "amount_paid": 100}]})
    assert r.status_code == 422 and r.json["error"]["code"] == "too_many_claims", r.json
    assert claim(w["e0"], [("prov-a", "A-10", 100)], period="2026-09")  # another period is apart
    assert claim(w["e1"], [("prov-a", "A-10", 100)])  # another enterprise is apart
    w["finance"].post(f"/v1/claims/{ids[0]}/reject", json={"reason": "duplicate"})
    assert claim(w["e0"], [("prov-a", "A-10", 100)])  # a decided claim frees a place


def test_at_most_200_items_per_claim(w):
    items = [{"provider_id": "prov-a", "invoice_no": f"A-{n}", "amount_paid": 100} for n in range(201)]
    r = w["e0"].post("/v1/claims", json={"period": "2026-10", "items": items})
    assert r.status_code == 422, r.json
    assert (r.json["error"]["code"], r.json["error"]["param"]) == ("too_many_items", "items")
    assert w["e0"].post("/v1/claims", json={"period": "2026-10", "items": items[:200]}).status_code == 201


# --- 8. the quota's year defaults to the current one ---------------------------------------------

def test_quota_without_year_is_the_current_shanghai_year(w):
    u = w["usccs"][0]
    r = w["e0"].get(f"/v1/enterprises/{u}/quota")
    assert r.status_code == 200, r.json
    year = period_year(current_period(tz="Asia/Shanghai"))
    assert r.json == quota(w, u, year)


def test_the_reconciliation_runs_the_v2_policy_functions():
    """One home per rule (docs/ARCHITECTURE.md#rule-homes): the v2 arithmetic is billing/policy.py's."""
    from billing import policy, reconciliation

    assert reconciliation.listing_bounds is policy.listing_bounds
    assert reconciliation.approved_item_base is policy.approved_item_base
    assert reconciliation.recomputed_grant is policy.recomputed_grant
    assert reconciliation.kept_hold is policy.kept_hold


# --- 9. a run releases before it reserves: a re-run right after it moves nothing -----------------

def postings(db):
    with db.session() as s:
        report = ledger.verify(s)
    assert report.ok, report.breaches
    return report.postings


def test_a_later_claims_release_reaches_an_earlier_claim_in_the_same_run(w, db):
    """docs/API.md#rec-steps, step 3. A (the earlier claim) is flagged at the first run, B
    reserves ¥1,200,000 of the ¥2,000,000 cap. Then A's usage is completed and part of B's is
    voided: A is clean (computed ¥1,500,000), B flagged (base 0). The second run releases B's
    ¥1,200,000 before A takes quota, so A gets its whole ¥1,500,000 at once — evaluated first
    against ¥800,000 left, A would be cut to ¥800,000 and the next run with nothing changed
    would reserve ¥700,000 more."""
    u = w["usccs"][0]
    usage(w["a"], u, 2_000_000 * YUAN, rid="a-1")
    invoice(w["a"], "A-3M", u, 3_000_000 * YUAN)  # ¥1,000,000 of usage not pushed yet: mismatch
    usage(w["b"], u, 2_300_000 * YUAN, rid="b-1")
    usage(w["b"], u, 100_000 * YUAN, rid="b-wrong")
    invoice(w["b"], "B-2.4M", u, 2_400_000 * YUAN)
    a = claim(w["e0"], [("prov-a", "A-3M", 3_000_000 * YUAN)])
    b = claim(w["e0"], [("prov-b", "B-2.4M", 2_400_000 * YUAN)])
    run(w)
    assert (get_claim(w, a)["status"], get_claim(w, a)["payable"]) == ("flagged", 0)
    assert (get_claim(w, b)["status"], get_claim(w, b)["payable"]) == ("verified", 1_200_000 * YUAN)

    usage(w["a"], u, 1_000_000 * YUAN, rid="a-2")  # A's usage now equals its invoice
    assert w["b"].delete("/v1/usage-records/b-wrong", json={"reason": "wrong tenant"}).status_code == 200
    run(w)
    ca, cb = get_claim(w, a), get_claim(w, b)
    assert (ca["status"], ca["payable"], ca["cap_reached"]) == ("verified", 1_500_000 * YUAN, False)
    assert (cb["status"], cb["payable"], cb["discrepancy_codes"]) == ("flagged", 0, ["usage_invoice_mismatch"])
    q = quota(w, u)
    assert (q["reserved"], q["granted"], q["remaining"]) == (1_500_000 * YUAN, 0, 500_000 * YUAN)

    moved = postings(db)
    run(w)  # nothing changed since: nothing moves
    assert postings(db) == moved
    assert get_claim(w, a)["payable"] == 1_500_000 * YUAN and quota(w, u)["reserved"] == 1_500_000 * YUAN


def test_a_later_approved_claims_clawback_reaches_an_earlier_claim_in_the_same_run(w, db):
    """docs/API.md#rec-steps, step 3, with a clawback (#clawbacks). B, approved for ¥1,500,000 of
    the ¥2,000,000 cap, loses ¥1,000,000 of its ¥3,000,000 usage to a void: base ¥2,000,000, grant
    ¥1,000,000, ¥500,000 clawed back. The earlier claim A, clean now (computed ¥1,500,000), is
    evaluated after the clawback: ¥1,000,000 left, so ¥1,000,000 with cap_reached — not ¥500,000
    now and ¥500,000 more at the next run."""
    u = w["usccs"][0]
    usage(w["a"], u, 2_000_000 * YUAN, rid="a-1")
    invoice(w["a"], "A-3M", u, 3_000_000 * YUAN)  # mismatch until the rest is pushed
    usage(w["b"], u, 2_000_000 * YUAN, rid="b-1")
    usage(w["b"], u, 1_000_000 * YUAN, rid="b-wrong")
    invoice(w["b"], "B-3M", u, 3_000_000 * YUAN)
    a = claim(w["e0"], [("prov-a", "A-3M", 3_000_000 * YUAN)])
    b = claim(w["e0"], [("prov-b", "B-3M", 3_000_000 * YUAN)])
    run(w)
    assert get_claim(w, a)["payable"] == 0
    assert w["finance"].post(f"/v1/claims/{b}/approve").json["payable"] == 1_500_000 * YUAN

    usage(w["a"], u, 1_000_000 * YUAN, rid="a-2")
    assert w["b"].delete("/v1/usage-records/b-wrong", json={"reason": "wrong tenant"}).status_code == 200
    run(w)
    ca, cb = get_claim(w, a), get_claim(w, b)
    assert (cb["status"], cb["payable"], cb["clawed_back"]) == ("approved", 1_000_000 * YUAN, 500_000 * YUAN)
    assert (ca["status"], ca["payable"], ca["cap_reached"]) == ("verified", 1_000_000 * YUAN, True)
    q = quota(w, u)
    assert (q["reserved"], q["granted"], q["remaining"]) == (1_000_000 * YUAN, 1_000_000 * YUAN, 0)

    moved = postings(db)
    run(w)
    assert postings(db) == moved
    assert get_claim(w, a)["payable"] == 1_000_000 * YUAN
    assert [x["amount"] for x in adjustments(w)] == [-500_000 * YUAN]
