"""The programme's budget (docs/API.md#budget): cut, waitlist, first-in-first-out funding, the
forecast, the threshold events and the policy keys — figures computed by hand."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from billing.budget import ProgrammeBudget, forecast_exhausted_on
from billing.ledger import verify
from billing.policy import PolicyError, thresholds_crossed
from billing.policy_file import default_policy_path, parse_policy
from tests.billing.test_v2_rules import get_claim as get
from tests.billing.test_v2_rules import run
from tests.factories import claim, invoice, setup_programme, usage


@pytest.fixture
def w(finance, as_key, app):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=4)
    shipped = app.extensions["voucher.policy"]

    def budget(annual):
        app.extensions["voucher.policy"] = dataclasses.replace(shipped, budget_annual=annual)

    return {"finance": finance, "usccs": usccs, "a": as_key("provider", "prov-a"), "budget": budget,
            "app": app, "e": [as_key("enterprise", u) for u in usccs]}


def spend(w, n, paid, period="2026-10"):
    """Enterprise n bought `paid` fen in `period` and claims it: payable paid / 2."""
    u = w["usccs"][n]
    usage(w["a"], u, paid, period=period)
    invoice(w["a"], f"A-{n}-{period}", u, paid, period=period)
    return claim(w["e"][n], [("prov-a", f"A-{n}-{period}", paid)], period=period)


def row(w):
    db = w["app"].extensions["voucher.db"]
    with db.session() as s:
        r = s.scalars(select(ProgrammeBudget)).one()
        return r.annual, r.reserved, r.granted


def events(api, kind):
    return [e["data"]["object"] for e in api.get(f"/v1/events?type={kind}&limit=100").json["data"]]


def exhausted(c):
    return [d for d in c["discrepancies"] if d["code"] == "budget_exhausted"]


def test_cut_waitlist_and_funding_when_budget_frees_up(w):
    w["budget"](10_000)  # ¥100
    a, b = spend(w, 0, 8_000), spend(w, 1, 10_000)  # payable 4_000 and 5_000
    c, d = spend(w, 2, 6_000), spend(w, 3, 2_000)  # 3_000 and 1_000
    run(w)
    assert (get(w, a)["payable"], get(w, b)["payable"]) == (4_000, 5_000)
    cut = get(w, c)
    assert cut["status"] == "verified" and cut["payable"] == 1_000  # 10_000 − 9_000 left
    assert exhausted(cut)[0] | {"message": ""} == {
        "code": "budget_exhausted", "message": "", "payable_before_budget": 3_000, "payable": 1_000,
        "waitlisted": 2_000, "budget_annual": 10_000, "budget_remaining": 1_000}
    waiting = get(w, d)
    assert waiting["status"] == "waitlisted" and waiting["payable"] == 0
    assert exhausted(waiting)[0]["waitlisted"] == 1_000
    assert row(w) == (10_000, 10_000, 0)
    budget = w["finance"].get("/v1/budget?year=2026").json
    assert budget | {"forecast_exhausted_on": None} == {
        "object": "budget", "year": 2026, "annual": 10_000, "reserved": 10_000, "granted": 0,
        "remaining": 0, "waitlisted": 3_000, "waitlisted_claims": 2, "forecast_exhausted_on": None,
        "currency": "CNY"}
    assert budget["forecast_exhausted_on"] is not None  # spent: today (Asia/Shanghai)

    r = w["finance"].post(f"/v1/claims/{d}/approve", json={"reason": "x"})
    assert r.status_code == 409 and r.json["error"]["code"] == "claim_waitlisted"
    # Approving moves reserved to granted: the budget's total does not change.
    assert w["finance"].post(f"/v1/claims/{a}/approve", json={"reason": "ok"}).status_code == 200
    assert row(w) == (10_000, 6_000, 4_000)
    # Rejecting b frees 5_000: the next run funds c's 2_000, then d's 1_000, in that order.
    assert w["finance"].post(f"/v1/claims/{b}/reject", json={"reason": "no"}).status_code == 200
    assert row(w) == (10_000, 1_000, 4_000)
    run(w)
    assert (get(w, c)["payable"], get(w, c)["status"], exhausted(get(w, c))) == (3_000, "verified", [])
    assert (get(w, d)["payable"], get(w, d)["status"]) == (1_000, "verified")
    assert row(w) == (10_000, 4_000, 4_000)
    assert w["finance"].get("/v1/budget").json["waitlisted"] == 0
    assert verify_ok(w)


def verify_ok(w):
    with w["app"].extensions["voucher.db"].session() as s:
        report = verify(s)
    assert report.ok, report.breaches
    return True


def test_waitlist_is_first_in_first_out_across_periods(w):
    w["budget"](4_000)
    x = spend(w, 0, 8_000, "2026-09")  # 4_000: all of it
    z = spend(w, 1, 2_000, "2026-09")  # 1_000, submitted second
    y = spend(w, 2, 4_000, "2026-10")  # 2_000, submitted third
    run(w, "2026-09")
    run(w, "2026-10")
    assert [get(w, i)["status"] for i in (x, z, y)] == ["verified", "waitlisted", "waitlisted"]
    w["finance"].post(f"/v1/claims/{x}/reject", json={"reason": "no"})
    run(w, "2026-10")  # y was submitted after z: it waits behind z, though budget is free
    assert get(w, y)["status"] == "waitlisted"
    assert exhausted(get(w, y))[0]["message"] == f"Waiting behind clm_{z.removeprefix('clm_')} for budget"
    run(w, "2026-09")
    assert (get(w, z)["status"], get(w, z)["payable"]) == ("verified", 1_000)
    run(w, "2026-10")
    assert (get(w, y)["status"], get(w, y)["payable"]) == ("verified", 2_000)
    assert row(w) == (4_000, 3_000, 0)
    verify_ok(w)


def test_threshold_events_once_per_crossing(w):
    w["budget"](10_000)
    spend(w, 0, 9_000)  # 4_500: 45 %
    run(w)
    assert events(w["finance"], "budget.threshold_reached") == []
    b = spend(w, 1, 7_000)  # + 3_500 = 8_000: 80 % — crosses 50 and 80
    c = spend(w, 2, 6_000)  # + 3_000, cut to 2_000: 100 %
    d = spend(w, 3, 2_000)  # waitlisted
    run(w)
    reached = events(w["finance"], "budget.threshold_reached")
    assert [(e["threshold"], e["annual"]) for e in reached] == [(50, 10_000), (80, 10_000), (100, 10_000)]
    waitlisted = events(w["e"][3], "claim.waitlisted")
    assert [e["id"] for e in waitlisted] == [d]
    assert events(w["e"][2], "claim.waitlisted") == []  # each enterprise sees its own
    assert events(w["e"][0], "budget.threshold_reached") == []  # the programme's: finance only
    run(w)  # a re-run that changes nothing crosses nothing
    assert len(events(w["finance"], "budget.threshold_reached")) == 3
    assert len(events(w["finance"], "claim.waitlisted")) == 1
    # Rejecting b (−3_500 → 6_500) then re-running (c +1_000, d +1_000 → 8_500) crosses 80 anew.
    w["finance"].post(f"/v1/claims/{b}/reject", json={"reason": "no"})
    run(w)
    assert [e["threshold"] for e in events(w["finance"], "budget.threshold_reached")] == [50, 80, 100, 80]
    assert get(w, c)["payable"] == 3_000 and get(w, d)["payable"] == 1_000


def test_quota_threshold_events(w):
    shipped = w["app"].extensions["voucher.policy"]
    w["app"].extensions["voucher.policy"] = dataclasses.replace(shipped, quota_thresholds=(50, 100))
    cap = shipped.cap_standard
    spend(w, 0, cap)  # half the cap
    run(w)
    got = events(w["e"][0], "quota.threshold_reached")
    assert [(e["threshold"], e["cap"], e["reserved"], e["enterprise_uscc"]) for e in got] == [
        (50, cap, cap // 2, w["usccs"][0])]
    assert events(w["e"][1], "quota.threshold_reached") == []
    run(w)
    assert len(events(w["finance"], "quota.threshold_reached")) == 1


def test_no_budget_means_unlimited(w):
    spend(w, 0, 8_000)
    run(w)
    assert w["finance"].get("/v1/budget?year=2026").json | {} == {
        "object": "budget", "year": 2026, "annual": None, "reserved": 4_000, "granted": 0,
        "remaining": None, "waitlisted": 0, "waitlisted_claims": 0, "forecast_exhausted_on": None,
        "currency": "CNY"}
    assert w["finance"].get("/v1/budget?year=20x6").status_code == 400


# --- pure ----------------------------------------------------------------------------------

def test_forecast_extrapolates_the_last_90_days():
    today = date(2026, 6, 30)
    use = {today: 200, today - timedelta(days=89): 100, today - timedelta(days=90): 10_000}
    # 300 fen in 90 days; 600 left: 180 days more.
    assert forecast_exhausted_on(1_000, 400, use, today) == today + timedelta(days=180)
    assert forecast_exhausted_on(1_000, 401, use, today) == today + timedelta(days=179 + 1)  # 599·90/300 = 179.7 → 180
    assert forecast_exhausted_on(1_000, 1_000, use, today) == today
    assert forecast_exhausted_on(1_000, 0, {}, today) is None
    assert forecast_exhausted_on(1_000, 0, {today: -50}, today) is None  # releases outpace use


def test_thresholds_crossed():
    assert thresholds_crossed((80, 100), 1_000, 700, 1_000) == [80, 100]
    assert thresholds_crossed((80, 100), 1_000, 800, 900) == []  # 80 was reached before
    assert thresholds_crossed((80, 100), 1_000, 900, 700) == []
    assert thresholds_crossed((50,), 0, 0, 10) == []


def _policy(extra: str) -> dict:
    return tomllib.loads(default_policy_path().read_text(encoding="utf-8") + extra)


@pytest.mark.parametrize("extra, message", [
    ("[budget]\nannual = 0\n", "budget.annual: must be a positive integer (fen)"),
    ("[budget]\nannual = 1.5\n", "budget.annual: must be a positive integer (fen), not a float"),
    ("[budget]\nannul = 5\n", "budget.annul: unknown key"),
    ("[alerts]\nquota_thresholds = [100, 80]\n", "alerts.quota_thresholds: must be in ascending order"),
    ("[alerts]\nbudget_thresholds = [0, 50]\n", "alerts.budget_thresholds: must be a non-empty list"),
])
def test_policy_keys_are_validated_by_name(extra, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(_policy(extra))
    assert message in str(err.value)


def test_policy_budget_and_alerts_load():
    p = parse_policy(_policy("[budget]\nannual = 5_000_000_000\n[alerts]\nquota_thresholds = [90]\n"))
    assert (p.budget_annual, p.quota_thresholds, p.budget_thresholds) == (5_000_000_000, (90,), (50, 80, 100))
    shipped = parse_policy(_policy(""))
    assert (shipped.budget_annual, shipped.quota_thresholds) == (None, (80, 100))


def test_monthly_xlsx_has_the_budget_sheet(w):
    import io

    import openpyxl

    w["budget"](10_000)
    spend(w, 0, 8_000)
    spend(w, 1, 14_000)  # 7_000, cut to 6_000
    run(w)
    r = w["finance"].get("/v1/reconciliations/2026-10/report.xlsx")
    assert r.status_code == 200
    ws = openpyxl.load_workbook(io.BytesIO(r.data))["预算 Budget"]
    rows = {row[0].value: row[1].value for row in ws.iter_rows(min_row=4) if row[0].value}
    assert rows["年度预算 Annual"] == 100 and rows["已预留 Reserved"] == 100
    assert rows["剩余 Remaining"] == 0 and rows["候补金额 Waitlisted"] == 10
    assert rows["候补申领数 Waitlisted claims"] == 1
    assert all(c.data_type != "f" for row in ws.iter_rows() for c in row)  # never a formula


# --- redemption holds move the budget and cross its thresholds -------------------------------------

def _redeem(w, annual):
    shipped = w["app"].extensions["voucher.policy"]
    w["app"].extensions["voucher.policy"] = dataclasses.replace(
        shipped, budget_annual=annual, quota_thresholds=(50, 100),
        settlement_modes=("reimbursement", "redemption"))

    def authorise(n, ref, list_amount, period="2026-02"):
        return w["a"].post("/v1/redemptions", json={"enterprise_uscc": w["usccs"][n], "reference": ref,
                                                    "list_amount": list_amount, "period": period})
    return authorise


def test_holds_move_the_budget_and_raise_threshold_events(w):
    authorise = _redeem(w, 10_000)
    cap = w["app"].extensions["voucher.policy"].cap_standard
    r1 = authorise(0, "o-1", 12_000)  # holds 6_000: 60 % of the budget
    assert r1.status_code == 201 and r1.json["held"] == 6_000
    assert row(w) == (10_000, 6_000, 0)
    assert [e["threshold"] for e in events(w["finance"], "budget.threshold_reached")] == [50]
    # Capture on less releases part of the hold (40 %: back below 50), a new hold crosses 50 anew and 80.
    cap_r = w["a"].post(f"/v1/redemptions/{r1.json['id']}/capture", json={"invoice_no": "F-1", "amount": 8_000})
    assert cap_r.status_code == 200 and row(w) == (10_000, 4_000, 0)
    r2 = authorise(1, "o-2", 9_000)  # + 4_500 = 8_500
    assert r2.json["held"] == 4_500 and row(w) == (10_000, 8_500, 0)
    assert [e["threshold"] for e in events(w["finance"], "budget.threshold_reached")] == [50, 50, 80]
    # The budget cuts the hold like the quota does, and refuses one with nothing left.
    r3 = authorise(2, "o-3", 9_000)
    assert r3.status_code == 201 and r3.json["held"] == 1_500 and row(w) == (10_000, 10_000, 0)
    assert [e["threshold"] for e in events(w["finance"], "budget.threshold_reached")] == [50, 50, 80, 100]
    r4 = authorise(3, "o-4", 100)
    assert r4.status_code == 422 and r4.json["error"]["code"] == "budget_exhausted", r4.json
    # Voiding frees budget; a hold from an enterprise crossing half its cap raises its quota event.
    assert w["a"].post(f"/v1/redemptions/{r2.json['id']}/void").status_code == 200
    assert row(w) == (10_000, 5_500, 0)
    w["app"].extensions["voucher.policy"] = dataclasses.replace(
        w["app"].extensions["voucher.policy"], budget_annual=cap * 4)
    big = authorise(3, "o-5", cap)  # half the cap
    assert big.json["held"] == cap // 2
    got = events(w["e"][3], "quota.threshold_reached")
    assert [(e["threshold"], e["enterprise_uscc"]) for e in got] == [(50, w["usccs"][3])]
    verify_ok(w)


def test_waiting_claims_come_before_new_holds(w):
    authorise = _redeem(w, 10_000)
    spend(w, 0, 24_000)  # payable 12_000: cut to 10_000, 2_000 waiting
    run(w)
    assert row(w) == (10_000, 10_000, 0)
    w["app"].extensions["voucher.policy"] = dataclasses.replace(
        w["app"].extensions["voucher.policy"], budget_annual=20_000)
    r = authorise(1, "o-1", 1_000)  # budget left, but a claim waits for it: first in, first out
    assert r.status_code == 422 and r.json["error"]["code"] == "budget_exhausted"
