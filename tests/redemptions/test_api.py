"""Redemption at the provider (核销) through the API (docs/API.md#redemptions, #settlements)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from openpyxl import load_workbook

from billing import ledger
from billing.policy_file import load_policy
from billing.redemptions import expire_due
from kernel.db import utcnow
from tests.conftest import Api, new_key
from tests.factories import claim, invoice, setup_programme, usage

P = "2026-02"


@pytest.fixture
def world(client, db, finance):
    _, (u0, u1) = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    prov = Api(client, new_key(db, "provider", "prov-a"))
    ent = Api(client, new_key(db, "enterprise", u0))
    return prov, ent, finance, u0, u1


def authorise(prov, uscc, ref, amount, period=P):
    return prov.post("/v1/redemptions", json={"enterprise_uscc": uscc, "reference": ref,
                                              "list_amount": amount, "period": period})


def quota(api, uscc, year=2026):
    return api.get(f"/v1/enterprises/{uscc}/quota?year={year}").json


def verify(db):
    with db.session() as s:
        report = ledger.verify(s)
    assert report.ok, report.breaches


def test_authorise_holds_half_at_once_and_quota_counts_it(world, db):
    prov, ent, finance, u0, _ = world
    r = authorise(prov, u0, "order-1", 1_000_001)
    assert r.status_code == 201, r.json
    body = r.json
    assert body["object"] == "redemption" and body["id"].startswith("rdm_")
    assert body["status"] == "authorized" and body["subsidy"] == 500_001 and body["held"] == 500_001
    q = quota(ent, u0)
    assert q["reserved"] == 500_001 and q["remaining"] == q["cap"] - 500_001
    again = authorise(prov, u0, "order-1", 1_000_001)
    assert again.status_code == 200 and again.json["id"] == body["id"]
    assert quota(ent, u0)["reserved"] == 500_001
    conflict = authorise(prov, u0, "order-1", 999)
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "reference_conflict"
    verify(db)


def test_partial_hold_when_short_then_quota_exhausted(world, db):
    prov, ent, _, u0, _ = world
    cap = quota(ent, u0)["cap"]
    assert authorise(prov, u0, "big", 2 * cap - 2_000).json["subsidy"] == cap - 1_000
    part = authorise(prov, u0, "short", 10_000)
    assert part.status_code == 201 and part.json["requested"] == 5_000 and part.json["subsidy"] == 1_000
    none = authorise(prov, u0, "none", 10_000)
    assert none.status_code == 422 and none.json["error"]["code"] == "quota_exhausted"
    assert quota(ent, u0)["remaining"] == 0
    verify(db)


def test_capture_recomputes_releases_rest_and_void_releases_all(world, db):
    prov, ent, _, u0, _ = world
    rid = authorise(prov, u0, "o1", 100_000).json["id"]
    over = prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "F-1", "amount": 100_001})
    assert over.status_code == 422 and over.json["error"]["code"] == "amount_above_list"
    cap = prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "F-1", "amount": 60_001})
    assert cap.status_code == 200 and cap.json["status"] == "captured"
    assert cap.json["subsidy"] == 30_001 and cap.json["held"] == 30_001
    assert prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "F-1", "amount": 60_001}).status_code == 200
    assert quota(ent, u0)["reserved"] == 30_001
    assert prov.post(f"/v1/redemptions/{rid}/void").status_code == 409
    rid2 = authorise(prov, u0, "o2", 50_000).json["id"]
    dup = prov.post(f"/v1/redemptions/{rid2}/capture", json={"invoice_no": "F-1", "amount": 50_000})
    assert dup.status_code == 409 and dup.json["error"]["code"] == "invoice_already_redeemed"
    v = prov.post(f"/v1/redemptions/{rid2}/void")
    assert v.status_code == 200 and v.json["status"] == "voided" and v.json["held"] == 0
    assert quota(ent, u0)["reserved"] == 30_001
    verify(db)


def test_scoping_other_provider_and_enterprise_get_404(world, client, db):
    prov, ent, finance, u0, u1 = world
    rid = authorise(prov, u0, "o1", 10_000).json["id"]
    other = Api(client, new_key(db, "provider", "prov-b"))
    other_ent = Api(client, new_key(db, "enterprise", u1))
    assert other.get(f"/v1/redemptions/{rid}").status_code == 404
    assert other_ent.get(f"/v1/redemptions/{rid}").status_code == 404
    assert other.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "X", "amount": 1}).status_code == 404
    assert ent.get(f"/v1/redemptions/{rid}").status_code == 200
    assert [r["id"] for r in ent.get("/v1/redemptions").json["data"]] == [rid]
    assert other.get("/v1/redemptions").json["data"] == []
    assert finance.get("/v1/redemptions?status=authorized").json["data"][0]["id"] == rid


def test_expiry_job_releases_holds_past_expires_at(world, db, app):
    prov, ent, _, u0, _ = world
    authorise(prov, u0, "o1", 10_000)
    policy = load_policy()
    assert expire_due(db, policy)["expired"] == 0
    summary = expire_due(db, policy, now=utcnow() + timedelta(days=policy.hold_days, seconds=1))
    assert summary == {"expired": 1, "released": 5_000}
    assert quota(ent, u0)["reserved"] == 0
    assert prov.get("/v1/redemptions").json["data"][0]["status"] == "expired"
    verify(db)


def test_reconciliation_checks_captures_and_invoice_cannot_be_both(world, db):
    prov, ent, finance, u0, _ = world
    usage(prov, u0, 80_000, period=P)
    invoice(prov, "F-1", u0, 80_000, period=P)
    invoice(prov, "F-2", u0, 5_000, period=P)
    clean = authorise(prov, u0, "o1", 80_000).json["id"]
    prov.post(f"/v1/redemptions/{clean}/capture", json={"invoice_no": "F-1", "amount": 80_000})
    bad = authorise(prov, u0, "o2", 9_000).json["id"]
    prov.post(f"/v1/redemptions/{bad}/capture", json={"invoice_no": "F-9", "amount": 9_000})
    cid = claim(ent, [("prov-a", "F-1", 80_000)], period=P)
    run = finance.post("/v1/reconciliations", json={"period": P})
    assert run.status_code == 201, run.json
    assert run.json["summary"]["redemptions"]["captured"] == 1
    assert run.json["summary"]["redemptions"]["flagged"] == 1
    c = finance.get(f"/v1/claims/{cid}").json
    assert c["status"] == "flagged" and c["payable"] == 0
    assert "invoice_already_redeemed" in [d["code"] for d in c["items"][0]["discrepancies"]]
    assert prov.get(f"/v1/redemptions/{clean}").json["status"] == "captured"
    flagged = prov.get(f"/v1/redemptions/{bad}").json
    assert flagged["status"] == "flagged"
    assert [d["code"] for d in flagged["discrepancies"]] == ["invoice_not_found"]
    rej = finance.post(f"/v1/redemptions/{bad}/reject", json={"reason": "no invoice"})
    assert rej.status_code == 200 and rej.json["held"] == 0
    assert quota(ent, u0)["reserved"] == 40_000  # the clean redemption's hold; the claim holds nothing
    verify(db)


def test_claim_first_flags_the_later_redemption(world, db):
    prov, ent, finance, u0, _ = world
    usage(prov, u0, 20_000, period=P)
    invoice(prov, "F-1", u0, 20_000, period=P)
    claim(ent, [("prov-a", "F-1", 20_000)], period=P)
    rid = authorise(prov, u0, "o1", 20_000).json["id"]
    prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "F-1", "amount": 20_000})
    finance.post("/v1/reconciliations", json={"period": P})
    r = prov.get(f"/v1/redemptions/{rid}").json
    assert r["status"] == "flagged" and r["discrepancies"][0]["code"] == "invoice_already_claimed"
    verify(db)


def test_quarterly_settlement_grants_and_writes_payment_files(world, db, client):
    prov, ent, finance, u0, u1 = world
    usage(prov, u0, 100_000, period=P)
    invoice(prov, "=HYPERLINK(1)", u0, 100_000, period=P)
    rid = authorise(prov, u0, "o1", 120_000).json["id"]
    prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "=HYPERLINK(1)", "amount": 100_000})
    finance.post("/v1/reconciliations", json={"period": P})
    built = finance.post("/v1/settlements", json={"quarter": "2026Q1"})
    assert built.status_code == 200, built.json
    (batch,) = built.json["data"]
    assert batch["provider_id"] == "prov-a" and batch["redemptions"] == 1 and batch["subsidy"] == 50_000
    again = finance.post("/v1/settlements", json={"quarter": "2026Q1"}).json["data"]
    assert again == [] or again[0]["id"] == batch["id"]
    assert prov.get("/v1/settlements").json["data"][0]["id"] == batch["id"]
    ok = finance.post(f"/v1/settlements/{batch['id']}/approve")
    assert ok.status_code == 200 and ok.json["status"] == "approved"
    assert prov.get(f"/v1/redemptions/{rid}").json["status"] == "settled"
    q = quota(ent, u0)
    assert q["granted"] == 50_000 and q["reserved"] == 0
    text = finance.get(f"/v1/settlements/{batch['id']}/payment.csv").get_data().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][7] == "'=HYPERLINK(1)" and rows[-1][9] == "50000" and rows[-1][0].startswith("合计")
    wb = load_workbook(io.BytesIO(finance.get(f"/v1/settlements/{batch['id']}/payment.xlsx").get_data()))
    ws = wb.active
    assert all(c.data_type != "f" for row in ws.iter_rows() for c in row)
    verify(db)


def test_settlements_job_runs_once_per_quarter_and_batches_once_per_provider(world, db):
    from kernel.jobruns import run_once
    from voucher.scheduler import JOBS, settlements_job

    prov, ent, finance, u0, _ = world
    usage(prov, u0, 10_000, period=P)
    invoice(prov, "F-1", u0, 10_000, period=P)
    rid = authorise(prov, u0, "o1", 10_000).json["id"]
    prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": "F-1", "amount": 10_000})
    finance.post("/v1/reconciliations", json={"period": P})
    assert JOBS["settlements"].check_period("2026Q1") == "2026Q1"
    run_once(db, "settlements", "2026Q1", settlements_job)
    run_once(db, "settlements", "2026Q1", settlements_job)  # claimed already: skipped
    batches = finance.get("/v1/settlements?quarter=2026Q1").json["data"]
    assert len(batches) == 1 and batches[0]["subsidy"] == 5_000


def test_captured_redemptions_get_a_risk_score_and_risk_review_above_the_threshold(world, db):
    """docs/API.md#risk: a captured redemption is assessed like a claim; the signals never change
    its subsidy, above the review threshold a clean one waits for finance as `risk_review`."""
    prov, _ent, finance, u0, u1 = world
    for uscc, no in ((u0, "F-1"), (u1, "F-2")):
        usage(prov, uscc, 80_000, period=P)
        invoice(prov, no, uscc, 80_000, period=P)
    plain = authorise(prov, u0, "o1", 80_000).json["id"]
    prov.post(f"/v1/redemptions/{plain}/capture", json={"invoice_no": "F-1", "amount": 80_000})
    related = authorise(prov, u1, "o2", 80_000).json["id"]
    prov.post(f"/v1/redemptions/{related}/capture", json={"invoice_no": "F-2", "amount": 80_000})
    assert prov.get(f"/v1/redemptions/{plain}").json["risk"] is None  # not reconciled yet
    finance.post("/v1/related-parties", json={"provider_id": "prov-a", "enterprise_uscc": u1, "relation": "x"})
    assert finance.post("/v1/reconciliations", json={"period": P}).status_code == 201

    r = prov.get(f"/v1/redemptions/{plain}").json
    assert r["status"] == "captured" and r["discrepancies"] == []
    assert r["risk"]["score"] == 30 and [s["code"] for s in r["risk"]["signals"]] == ["no_contract"]
    assert r["risk"]["signals"][0]["amount"] == 80_000
    r = prov.get(f"/v1/redemptions/{related}").json
    assert r["risk"]["score"] == 90  # no_contract 30 + related_party 60 > 50
    assert r["status"] == "flagged" and [d["code"] for d in r["discrepancies"]] == ["risk_review"]
    assert r["discrepancies"][0]["score"] == 90 and r["subsidy"] == 40_000


# --- closing, modes, events, late captures ------------------------------------------------------

def capture_clean(prov, finance, u0, ref, amount, no, period=P):
    usage(prov, u0, amount, period=period, rid=f"u-{ref}")
    invoice(prov, no, u0, amount, period=period)
    rid = authorise(prov, u0, ref, amount, period).json["id"]
    r = prov.post(f"/v1/redemptions/{rid}/capture", json={"invoice_no": no, "amount": amount})
    assert r.status_code == 200, r.json
    return rid


def test_a_flagged_redemption_holds_its_period_open_and_capture_refuses_a_closed_one(world, db):
    prov, ent, finance, u0, _ = world
    bad = authorise(prov, u0, "o-bad", 9_000).json["id"]
    prov.post(f"/v1/redemptions/{bad}/capture", json={"invoice_no": "NOPE", "amount": 9_000})
    late = authorise(prov, u0, "o-late", 9_000).json["id"]
    finance.post("/v1/reconciliations", json={"period": P})
    assert prov.get(f"/v1/redemptions/{bad}").json["status"] == "flagged"
    r = finance.post(f"/v1/reconciliations/{P}/close", json={})
    assert (r.status_code, r.json["error"]["code"]) == (409, "redemptions_undecided")
    finance.post(f"/v1/redemptions/{bad}/reject", json={"reason": "no invoice"})
    assert finance.post(f"/v1/reconciliations/{P}/close", json={}).status_code == 200
    r = prov.post(f"/v1/redemptions/{late}/capture", json={"invoice_no": "F-L", "amount": 9_000})
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_closed")
    assert prov.get(f"/v1/redemptions/{late}").json["status"] == "authorized"
    verify(db)


@pytest.mark.parametrize("mode", ["reimbursement", "redemption"])
def test_a_mode_the_policy_turns_off_is_refused(world, app, mode):
    import dataclasses

    prov, ent, _, u0, _ = world
    policy = app.extensions["voucher.policy"]
    other = "redemption" if mode == "reimbursement" else "reimbursement"
    app.extensions["voucher.policy"] = dataclasses.replace(policy, settlement_modes=(other,))
    try:
        invoice(prov, "F-1", u0, 10_000, period=P)
        if mode == "reimbursement":
            r = ent.post("/v1/claims", json={"period": P, "items": [
                {"provider_id": "prov-a", "invoice_no": "F-1", "amount_paid": 10_000}]})
            assert authorise(prov, u0, "still-on", 10_000).status_code == 201
        else:
            r = authorise(prov, u0, "o1", 10_000)
            assert claim(ent, [("prov-a", "F-1", 10_000)], period=P)  # reimbursement still on
        assert (r.status_code, r.json["error"]["code"]) == (422, "settlement_mode_disabled")
    finally:
        app.extensions["voucher.policy"] = policy


def test_redemption_events_carry_the_redemption_as_the_api_shows_it(world):
    prov, ent, finance, u0, _ = world
    rid = capture_clean(prov, finance, u0, "o1", 20_000, "F-1")
    events = [e for e in prov.get("/v1/events?limit=1000").json["data"] if e["type"].startswith("redemption.")]
    assert [e["type"] for e in events] == ["redemption.authorized", "redemption.captured"]
    shown = prov.get(f"/v1/redemptions/{rid}").json
    obj = events[-1]["data"]["object"]
    assert obj == shown  # the renderer: today's object, every field the API shows
    assert ent.get(f"/v1/events/{events[-1]['id']}").json["data"]["object"]["id"] == rid


def test_a_redemption_cleared_after_its_quarters_batch_was_approved_joins_the_next_batch(world, db):
    prov, ent, finance, u0, _ = world
    first = capture_clean(prov, finance, u0, "o1", 20_000, "F-1")
    late = authorise(prov, u0, "o2", 6_000).json["id"]
    finance.post("/v1/reconciliations", json={"period": P})
    (q1,) = finance.post("/v1/settlements", json={"quarter": "2026Q1"}).json["data"]
    assert finance.post(f"/v1/settlements/{q1['id']}/approve").json["redemptions"] == 1
    invoice(prov, "F-2", u0, 6_000, period=P)
    usage(prov, u0, 6_000, period=P, rid="u-late")
    assert prov.post(f"/v1/redemptions/{late}/capture", json={"invoice_no": "F-2", "amount": 6_000}).status_code == 200
    finance.post("/v1/reconciliations", json={"period": P})
    assert finance.post("/v1/settlements", json={"quarter": "2026Q1"}).json["data"] == []  # final
    (q2,) = finance.post("/v1/settlements", json={"quarter": "2026Q2"}).json["data"]
    assert q2["quarter"] == "2026Q2" and q2["redemptions"] == 1 and q2["subsidy"] == 3_000
    assert finance.post(f"/v1/settlements/{q2['id']}/approve").json["status"] == "approved"
    assert {prov.get(f"/v1/redemptions/{r}").json["status"] for r in (first, late)} == {"settled"}
    assert quota(ent, u0)["granted"] == 13_000 and quota(ent, u0)["reserved"] == 0
    verify(db)
