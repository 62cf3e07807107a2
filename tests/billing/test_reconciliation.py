"""The monthly reconciliation of docs/API.md#reconciliation, on both databases, through the HTTP API."""

from __future__ import annotations

import pytest

from billing.ledger import verify
from tests.factories import claim, invoice, make_uscc, setup_programme, usage


@pytest.fixture
def w(finance, as_key, app):
    providers, usccs = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=3)
    policy = app.extensions["voucher.policy"]
    return {
        "policy": policy,
        "finance": finance,
        "usccs": usccs,
        "a": as_key("provider", "prov-a"),
        "b": as_key("provider", "prov-b"),
        "e0": as_key("enterprise", usccs[0]),
        "e1": as_key("enterprise", usccs[1]),
        "e2": as_key("enterprise", usccs[2]),
    }


def reconcile(w, period="2026-10"):
    r = w["finance"].post("/v1/reconciliations", json={"period": period})
    assert r.status_code in (200, 201), r.json
    return r


def get_claim(w, cid):
    return w["finance"].get(f"/v1/claims/{cid}").json


def quota(w, uscc, year=2026):
    return w["finance"].get(f"/v1/enterprises/{uscc}/quota?year={year}").json


def codes(c):
    return c["discrepancy_codes"]


def test_clean_claim_is_verified_and_reserves_half_the_base(w):
    u = w["usccs"][0]
    usage(w["a"], u, 1_000_001)
    invoice(w["a"], "A-1", u, 1_000_001)
    cid = claim(w["e0"], [("prov-a", "A-1", 1_000_001)])
    assert get_claim(w, cid)["status"] == "submitted"
    r = reconcile(w)
    assert r.status_code == 201
    c = get_claim(w, cid)
    assert c["status"] == "verified" and codes(c) == []
    assert c["base"] == 1_000_001
    assert c["computed"] == c["payable"] == 500_001  # half-up at the odd fen
    q = quota(w, u)
    assert (q["reserved"], q["granted"]) == (500_001, 0)
    assert q["remaining"] == q["cap"] - 500_001
    assert q["policy_id"] == w["policy"].id == c["policy_id"]


def test_within_tolerance_the_base_is_the_smallest_of_the_three(w):
    u = w["usccs"][0]
    tol = w["policy"].tolerance
    usage(w["a"], u, 100_000 - tol)
    invoice(w["a"], "A-1", u, 100_000)
    cid = claim(w["e0"], [("prov-a", "A-1", 100_000 + tol)])
    reconcile(w)
    c = get_claim(w, cid)
    assert c["status"] == "verified"
    assert c["items"][0]["base"] == 100_000 - tol
    assert c["items"][0]["metered"] == 100_000 - tol


def test_invoice_not_found(w):
    u = w["usccs"][0]
    usage(w["a"], u, 50_000)
    invoice(w["a"], "A-OTHER", w["usccs"][1], 50_000)  # someone else's invoice
    cid = claim(w["e0"], [("prov-a", "A-9", 50_000), ("prov-a", "A-OTHER", 50_000)])
    reconcile(w)
    c = get_claim(w, cid)
    assert c["status"] == "flagged"
    assert [d["code"] for i in c["items"] for d in i["discrepancies"]] == ["invoice_not_found"] * 2
    assert c["payable"] == 0 and quota(w, u)["reserved"] == 0


def test_invoice_amount_mismatch_reports_the_figures(w):
    u = w["usccs"][0]
    tol = w["policy"].tolerance
    usage(w["a"], u, 80_000)
    invoice(w["a"], "A-1", u, 80_000)
    cid = claim(w["e0"], [("prov-a", "A-1", 80_000 + tol + 1)])
    reconcile(w)
    d = get_claim(w, cid)["items"][0]["discrepancies"]
    assert d[0]["code"] == "invoice_amount_mismatch"
    assert (d[0]["amount_paid"], d[0]["invoice_amount"], d[0]["difference"]) == (80_000 + tol + 1, 80_000, tol + 1)


def test_usage_invoice_mismatch(w):
    u = w["usccs"][0]
    tol = w["policy"].tolerance
    usage(w["a"], u, 70_000)
    invoice(w["a"], "A-1", u, 70_000 + tol + 1)
    cid = claim(w["e0"], [("prov-a", "A-1", 70_000 + tol + 1)])
    reconcile(w)
    c = get_claim(w, cid)
    assert codes(c) == ["usage_invoice_mismatch"]
    assert c["items"][0]["discrepancies"][0]["metered"] == 70_000
    assert c["payable"] == 0


def test_invoice_claimed_twice_flags_the_later_claim(w):
    u = w["usccs"][0]
    usage(w["a"], u, 60_000)
    invoice(w["a"], "A-1", u, 60_000)
    first = claim(w["e0"], [("prov-a", "A-1", 60_000)])
    second = claim(w["e0"], [("prov-a", "A-1", 60_000)])
    reconcile(w)
    assert get_claim(w, first)["status"] == "verified"
    c2 = get_claim(w, second)
    assert codes(c2) == ["invoice_claimed_twice"] and c2["payable"] == 0
    assert c2["items"][0]["discrepancies"][0]["first_claim_id"] == first
    assert quota(w, u)["reserved"] == 30_000


def test_enterprise_not_eligible(w):
    u = w["usccs"][2]
    w["finance"].patch(f"/v1/enterprises/{u}", json={"eligible": False})
    usage(w["a"], u, 40_000)
    invoice(w["a"], "A-1", u, 40_000)
    cid = claim(w["e2"], [("prov-a", "A-1", 40_000)])
    reconcile(w)
    c = get_claim(w, cid)
    assert c["status"] == "flagged" and codes(c) == ["enterprise_not_eligible"]
    assert c["base"] == 0 and c["payable"] == 0


def test_provider_not_listed_during_the_period(w):
    u = w["usccs"][0]
    w["finance"].patch("/v1/providers/prov-b", json={"listed_from": "2026-11-01"})
    usage(w["b"], u, 40_000)
    invoice(w["b"], "B-1", u, 40_000)
    cid = claim(w["e0"], [("prov-b", "B-1", 40_000)])
    reconcile(w)
    c = get_claim(w, cid)
    assert codes(c) == ["provider_not_listed"]
    # v2: an item-level finding (docs/API.md#discrepancy-codes), not a claim-level one.
    assert c["discrepancies"] == []
    assert c["items"][0]["discrepancies"][0]["listed_from"] == "2026-11-01"
    assert c["payable"] == 0


def test_outside_policy_window(w):
    u = w["usccs"][0]
    usage(w["a"], u, 40_000, period="2025-04")
    invoice(w["a"], "A-1", u, 40_000, period="2025-04")
    cid = claim(w["e0"], [("prov-a", "A-1", 40_000)], period="2025-04")
    reconcile(w, "2025-04")
    c = get_claim(w, cid)
    assert "outside_policy_window" in codes(c)
    assert c["base"] == 0 and all(i["base"] == 0 for i in c["items"])


def test_other_subsidy_on_the_same_spend_pays_only_the_difference(w):
    """就高不重复: the enterprise ends with the higher subsidy, never both."""
    u = w["usccs"][0]
    usage(w["a"], u, 100_000)
    invoice(w["a"], "A-1", u, 100_000)
    cid = claim(w["e0"], [("prov-a", "A-1", 100_000)], others=[30_000])
    cid2_usage = usage(w["b"], u, 10_000)
    assert cid2_usage
    invoice(w["b"], "B-1", u, 10_000)
    cid2 = claim(w["e0"], [("prov-b", "B-1", 10_000)], others=[9_000])
    reconcile(w)
    c = get_claim(w, cid)
    assert (c["computed"], c["payable"]) == (50_000, 20_000)
    c2 = get_claim(w, cid2)
    assert (c2["computed"], c2["payable"]) == (5_000, 0)


def test_standard_cap_and_cap_reached_across_two_providers_and_two_months(w):
    u = w["usccs"][0]
    cap = w["policy"].cap_standard
    each = cap * 3 // 4  # per provider and month: a month's subsidy is three quarters of the cap
    for period in ("2026-08", "2026-09"):
        for p, key in (("prov-a", "a"), ("prov-b", "b")):
            usage(w[key], u, each, period=period)
            invoice(w[key], f"{p}-{period}", u, each, period=period)
        claim(w["e0"], [("prov-a", f"prov-a-{period}", each), ("prov-b", f"prov-b-{period}", each)],
              period=period)
    reconcile(w, "2026-08")
    reconcile(w, "2026-09")
    claims = w["finance"].get("/v1/claims").json["data"]
    assert claims[0]["payable"] == each and not claims[0]["cap_reached"]
    assert claims[1]["payable"] == cap - each and claims[1]["cap_reached"]
    assert claims[1]["status"] == "verified"
    assert "cap_reached" in codes(claims[1])
    q = quota(w, u)
    assert q["reserved"] == q["cap"] and q["remaining"] == 0 and q["cap_basis"] == "standard"


def test_raised_cap_applies_only_in_the_filing_year(w):
    u = w["usccs"][1]
    w["finance"].post(f"/v1/enterprises/{u}/model-filings",
                      json={"filing_no": "ZJ-2026-1", "model_name": "m", "obtained_on": "2026-02-01"})
    q2026, q2025, q2027 = quota(w, u, 2026), quota(w, u, 2025), quota(w, u, 2027)
    assert q2026["cap_basis"] == "new_model_filing"
    assert (q2025["cap_basis"], q2027["cap_basis"]) == ("standard", "standard")
    assert q2026["cap"] > q2025["cap"] == q2027["cap"]
    big = q2026["cap"] * 2
    usage(w["a"], u, big)
    invoice(w["a"], "A-BIG", u, big)
    cid = claim(w["e1"], [("prov-a", "A-BIG", big)])
    reconcile(w)
    assert get_claim(w, cid)["payable"] == q2026["cap"]


def test_rerun_changes_nothing(w, db):
    u = w["usccs"][0]
    usage(w["a"], u, 90_000)
    invoice(w["a"], "A-1", u, 90_000)
    claim(w["e0"], [("prov-a", "A-1", 90_000)])
    claim(w["e0"], [("prov-a", "A-404", 10)])
    first = reconcile(w)
    before = w["finance"].get("/v1/reconciliations/2026-10").json
    with db.session() as s:
        postings = verify(s).postings
    second = reconcile(w)
    assert second.status_code == 200 and first.status_code == 201
    after = w["finance"].get("/v1/reconciliations/2026-10").json
    assert after["summary"] == before["summary"]
    def strip(cs):
        return [{k: v for k, v in c.items() if k != "reconciled_at"} for c in cs]
    assert strip(after["claims"]) == strip(before["claims"])
    assert after["runs"] == 2
    with db.session() as s:
        assert verify(s).postings == postings
    assert quota(w, u)["reserved"] == 45_000


def test_approve_moves_reserved_to_granted_and_reject_releases(w):
    u = w["usccs"][0]
    usage(w["a"], u, 20_000)
    usage(w["b"], u, 30_000)
    invoice(w["a"], "A-1", u, 20_000)
    invoice(w["b"], "B-1", u, 30_000)
    c1 = claim(w["e0"], [("prov-a", "A-1", 20_000)])
    c2 = claim(w["e0"], [("prov-b", "B-1", 30_000)])
    assert w["finance"].post(f"/v1/claims/{c1}/approve").status_code == 409  # not reconciled yet
    reconcile(w)
    assert quota(w, u)["reserved"] == 25_000
    r = w["finance"].post(f"/v1/claims/{c1}/approve", json={"reason": "ok"})
    assert r.status_code == 200 and r.json["status"] == "approved"
    assert w["finance"].post(f"/v1/claims/{c1}/approve").json["status"] == "approved"  # idempotent
    assert w["finance"].post(f"/v1/claims/{c2}/reject", json={}).status_code == 422  # reason required
    r = w["finance"].post(f"/v1/claims/{c2}/reject", json={"reason": "invoice disputed"})
    assert r.json["status"] == "rejected" and r.json["payable"] == 0
    q = quota(w, u)
    assert (q["granted"], q["reserved"]) == (10_000, 0)
    assert w["finance"].post(f"/v1/claims/{c1}/reject", json={"reason": "x"}).status_code == 409
    reconcile(w)  # decided claims stay as they are
    q = quota(w, u)
    assert (q["granted"], q["reserved"]) == (10_000, 0)


def test_a_flagged_claim_is_approved_only_with_a_reason(w):
    # The rule lives in billing/claims.py: the API obeys it as the console does (issue 13).
    u = w["usccs"][0]
    usage(w["a"], u, 10_000)
    invoice(w["a"], "A-1", u, 30_000)
    cid = claim(w["e0"], [("prov-a", "A-1", 30_000)])
    reconcile(w)
    assert get_claim(w, cid)["status"] == "flagged"
    for body in (None, {}, {"reason": "   "}):
        r = w["finance"].post(f"/v1/claims/{cid}/approve", json=body)
        assert r.status_code == 422, body
        assert (r.json["error"]["code"], r.json["error"]["param"]) == ("reason_required", "reason")
    assert get_claim(w, cid)["status"] == "flagged"
    r = w["finance"].post(f"/v1/claims/{cid}/approve", json={"reason": "storage fees explained"})
    assert r.status_code == 200 and r.json["status"] == "approved"
    assert r.json["decision_reason"] == "storage fees explained"
    assert w["finance"].post(f"/v1/claims/{cid}/approve").json["status"] == "approved"  # idempotent


def test_void_after_approval_claws_back_at_next_reconciliation(w):
    u = w["usccs"][0]
    tol = w["policy"].tolerance
    usage(w["a"], u, 50_000, rid="keep")
    usage(w["a"], u, tol, rid="small")  # voiding this one stays within tolerance
    invoice(w["a"], "A-1", u, 50_000 + tol)
    cid = claim(w["e0"], [("prov-a", "A-1", 50_000 + tol)])
    reconcile(w)
    w["finance"].post(f"/v1/claims/{cid}/approve")
    granted = quota(w, u)["granted"]
    assert granted == (50_000 + tol) // 2
    w["a"].delete("/v1/usage-records/small", json={"reason": "double-billed"})
    reconcile(w)
    c = get_claim(w, cid)
    assert c["payable"] == 25_000 and c["clawed_back"] == granted - 25_000
    w["a"].delete("/v1/usage-records/keep", json={"reason": "wrong tenant"})
    run = reconcile(w).json
    c = get_claim(w, cid)
    assert c["payable"] == 0 and c["clawed_back"] == granted
    assert quota(w, u)["granted"] == 0
    adjustments = w["finance"].get("/v1/reconciliations/2026-10").json["adjustments"]
    assert [a["amount"] for a in adjustments] == [-(granted - 25_000), -25_000]
    assert run["summary"]["totals"]["clawed_back"] == granted
    reconcile(w)  # nothing more to claw back
    assert len(w["finance"].get("/v1/reconciliations/2026-10").json["adjustments"]) == 2


def test_claims_are_for_past_months_and_name_bad_fields(w):
    assert w["e0"].post("/v1/claims", json={"period": "2099-01", "items": [
        {"provider_id": "prov-a", "invoice_no": "x", "amount_paid": 1}]}).json["error"]["param"] == "period"
    r = w["e0"].post("/v1/claims", json={"period": "2026-10", "items": [
        {"provider_id": "prov-a", "invoice_no": "x", "amount_paid": 1.5}]})
    assert r.status_code == 422 and r.json["error"]["param"] == "items[0].amount_paid"
    r = w["e0"].post("/v1/claims", json={"period": "2026-10", "items": [
        {"provider_id": "nobody", "invoice_no": "x", "amount_paid": 1}]})
    assert r.json["error"]["param"] == "items[0].provider_id"
    r = w["e0"].post("/v1/claims", json={"period": "2026-10", "items": []})
    assert r.json["error"]["param"] == "items"


def test_invoices_are_idempotent_and_conflicts_are_409(w):
    u = w["usccs"][0]
    body = {"invoice_no": "A-1", "enterprise_uscc": u, "period": "2026-10", "amount": 100,
            "issued_on": "2026-10-31"}
    assert w["a"].post("/v1/provider-invoices", json=body).status_code == 201
    assert w["a"].post("/v1/provider-invoices", json=body).status_code == 200
    r = w["a"].post("/v1/provider-invoices", json=dict(body, amount=101))
    assert r.status_code == 409 and r.json["error"]["param"] == "invoice_no"
    r = w["a"].post("/v1/provider-invoices", json=dict(body, invoice_no="A-2", enterprise_uscc=make_uscc(555)))
    assert r.status_code == 422 and r.json["error"]["code"] == "unknown_enterprise"
    assert w["e0"].get("/v1/provider-invoices").json["data"][0]["invoice_no"] == "A-1"
    assert w["e1"].get("/v1/provider-invoices").json["data"] == []
    assert w["b"].get("/v1/provider-invoices").json["data"] == []


def test_scopes_for_claims_and_quota(w):
    u0, u1 = w["usccs"][0], w["usccs"][1]
    cid = claim(w["e0"], [("prov-a", "A-1", 10)])
    assert w["e1"].get(f"/v1/claims/{cid}").status_code == 404
    assert w["e1"].get(f"/v1/enterprises/{u0}/quota?year=2026").status_code == 404
    assert w["e1"].get(f"/v1/enterprises/{u1}/quota?year=2026").status_code == 200
    assert w["a"].get(f"/v1/claims/{cid}").status_code == 403
    assert w["e0"].post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 403
    assert w["e0"].post(f"/v1/claims/{cid}/approve").status_code == 403
    assert w["e0"].get(f"/v1/enterprises/{u0}/quota").status_code == 200  # v2: the current year
    assert w["finance"].get(f"/v1/enterprises/{make_uscc(777)}/quota?year=2026").status_code == 404


@pytest.mark.tampers_with_ledger
def test_ledger_verify_passes_after_scenarios_and_catches_tampering(w, db):
    from sqlalchemy import text
    u = w["usccs"][0]
    usage(w["a"], u, 100_000)
    invoice(w["a"], "A-1", u, 100_000)
    cid = claim(w["e0"], [("prov-a", "A-1", 100_000)])
    reconcile(w)
    w["finance"].post(f"/v1/claims/{cid}/approve")
    with db.session() as s:
        report = verify(s)
    assert report.ok, report.breaches
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_posting SET amount = amount + 1 WHERE kind = 'grant' AND amount > 0"))
    with db.session() as s:
        report = verify(s)
    assert not report.ok
    assert {b.what for b in report.breaches} >= {"unbalanced_entry", "balance_mismatch"}


def test_first_month_counts_only_usage_inside_the_window(w):
    """2025-05: the invoice covers the whole month; usage before 13 May earns nothing."""
    u = w["usccs"][0]
    usage(w["a"], u, 30_000, period="2025-05", day=5)   # before effective_from
    usage(w["a"], u, 70_000, period="2025-05", day=20)
    invoice(w["a"], "A-MAY", u, 100_000, period="2025-05")
    cid = claim(w["e0"], [("prov-a", "A-MAY", 100_000)], period="2025-05")
    reconcile(w, "2025-05")
    c = get_claim(w, cid)
    assert c["status"] == "verified" and codes(c) == []
    assert c["items"][0]["metered"] == 100_000
    assert c["base"] == 70_000 and c["payable"] == 35_000


def test_claims_in_batches_of_one_give_what_one_batch_gives(w, db):
    """The reconciliation streams claims in batches; the quota, the invoice holders and the
    ledger must carry across batch boundaries exactly as in one pass."""
    from sqlalchemy import select

    from billing.models import Claim, ClaimItem, LedgerPosting, QuotaBalance
    from billing.reconciliation import reconcile as run

    u0, u1, u2 = w["usccs"]
    big = w["policy"].cap_standard * 3 // 2  # one month's subsidy is three quarters of the cap
    for key, p in (("a", "prov-a"), ("b", "prov-b")):
        usage(w[key], u0, big)
        invoice(w[key], f"{p}-1", u0, big)
    usage(w["a"], u1, 80_000)
    invoice(w["a"], "A-U1", u1, 80_000)
    claim(w["e0"], [("prov-a", "prov-a-1", big)])
    claim(w["e1"], [("prov-a", "A-U1", 80_000)], others=[10_000])
    claim(w["e0"], [("prov-b", "prov-b-1", big)])  # reaches the cap
    claim(w["e0"], [("prov-a", "prov-a-1", big)])  # claimed twice
    claim(w["e2"], [("prov-a", "A-404", 5_000)])  # no such invoice

    def state(s):
        return {
            "claims": s.execute(select(Claim.id, Claim.status, Claim.base, Claim.computed,
                                       Claim.payable_before_cap, Claim.payable, Claim.cap_reached,
                                       Claim.discrepancies).order_by(Claim.id)).all(),
            "items": s.execute(select(ClaimItem.id, ClaimItem.invoice_amount, ClaimItem.metered,
                                      ClaimItem.base, ClaimItem.discrepancies)
                               .order_by(ClaimItem.id)).all(),
            "postings": s.execute(select(LedgerPosting.enterprise_uscc, LedgerPosting.account,
                                         LedgerPosting.kind, LedgerPosting.claim_id,
                                         LedgerPosting.amount, LedgerPosting.reason)
                                  .order_by(LedgerPosting.id)).all(),
            "balances": s.execute(select(QuotaBalance.enterprise_uscc, QuotaBalance.cap,
                                         QuotaBalance.reserved, QuotaBalance.granted)
                                  .order_by(QuotaBalance.enterprise_uscc)).all(),
        }

    seen = []
    for batch in (1000, 1, 2):
        with db.session() as s:
            s.begin()
            result, _ = run(s, w["policy"], "2026-10", batch=batch)
            seen.append((result.summary, state(s)))
            s.rollback()
    assert seen[0] == seen[1] == seen[2]
    summary, st = seen[0]
    assert summary["by_status"] == {"submitted": 0, "verified": 3, "flagged": 2, "approved": 0,
                                    "rejected": 0, "waitlisted": 0}
    assert summary["cap_reached"] == 1
    assert [c.payable for c in st["claims"]] == [big // 2, 30_000, w["policy"].cap_standard - big // 2,
                                                 0, 0]


def test_provider_of_a_kind_the_policy_does_not_subsidise(w, app, as_key):
    # The Jiaxing file lists both kinds; a policy of 智算 only must refuse 超算 spend.
    import dataclasses

    app.extensions["voucher.policy"] = dataclasses.replace(
        w["policy"], resource_kinds=("intelligent_computing",))
    r = w["finance"].post("/v1/providers", json={"id": "hpc-c", "name": "HPC", "kind": "supercomputing",
                                                   "listed_from": "2025-05-13"})
    assert r.status_code == 201, r.json
    hpc = as_key("provider", "hpc-c")
    u = w["usccs"][0]
    usage(w["a"], u, 40_000)
    invoice(w["a"], "A-1", u, 40_000)
    usage(hpc, u, 20_000)
    invoice(hpc, "C-1", u, 20_000)
    mixed = claim(w["e0"], [("prov-a", "A-1", 40_000), ("hpc-c", "C-1", 20_000)])
    reconcile(w)
    c = get_claim(w, mixed)
    # v2: item-level — the 超算 item earns nothing, the listed 智算 item (¥400) still pays ¥200.
    assert codes(c) == ["provider_not_listed"] and c["payable"] == 20_000
    assert [i["base"] for i in c["items"]] == [40_000, 0]
    found = c["items"][1]["discrepancies"][0]
    assert (found["provider_id"], found["kind"], found["resource_kinds"]) == \
        ("hpc-c", "supercomputing", ["intelligent_computing"])
