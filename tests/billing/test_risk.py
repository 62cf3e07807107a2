"""Risk review (docs/API.md#risk): each signal at its boundaries, hand-computed, pure and through
the API; the score flags a clean claim `risk_review` and never changes an amount."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from billing.policy_file import PolicyError, load_policy, parse_policy
from billing.risk import (
    RiskPolicy,
    assess,
    like_pattern,
    needs_review,
    price_above,
    resource_eligible,
    spike_signal,
)
from tests.factories import claim, invoice, record, setup_programme

RP = RiskPolicy()  # tolerance 0.2, spike factor 3, floor 1,000,000 fen


# --- pure boundaries ---------------------------------------------------------------------------

def test_price_exactly_at_the_tolerance_is_within_it_one_fen_over_is_not():
    assert not price_above(RP, 1200, Decimal("1"), 1000)  # 1000 × 1.2 = 1200
    assert price_above(RP, 1201, Decimal("1"), 1000)
    assert not price_above(RP, 3000, Decimal("2.5"), 1000)  # 2.5 × 1200
    assert price_above(RP, 3001, Decimal("2.5"), 1000)


def test_spike_needs_the_factor_and_the_floor():
    low = [100_000, 200_000, 300_000]  # median 200,000 × 3 = 600,000 < floor 1,000,000
    assert spike_signal(RP, 1_000_000, low) is None
    assert spike_signal(RP, 1_000_001, low)["limit"] == "1000000"
    high = [1_000_000, 5_000_000, 1_000_000]  # median 1,000,000 × 3 = 3,000,000
    assert spike_signal(RP, 3_000_000, high) is None
    s = spike_signal(RP, 3_000_001, high)
    assert s["code"] == "usage_spike" and s["median"] == "1000000" and s["weight"] == 20
    assert spike_signal(RP, 10**9, [0, 0, 0]) is None  # a first month is not a spike
    assert spike_signal(RP, 1_000_001, [0, 0, 1]) is not None  # median 0: the floor decides


def test_resource_patterns():
    pats = ("gpu", "gpu.*", "npu.*", "cpu")
    assert resource_eligible(pats, "gpu.h800") and resource_eligible(pats, "gpu")
    assert resource_eligible(pats, "npu.910b") and resource_eligible(pats, "cpu")
    assert not resource_eligible(pats, "npu") and not resource_eligible(pats, "cpu2")
    assert not resource_eligible(pats, "storage.ssd") and not resource_eligible(pats, "GPU.h800")
    assert resource_eligible((), "anything")
    assert like_pattern("gpu.*") == "gpu.%" and like_pattern("a_b?") == "a\\_b_"


def test_score_is_the_sum_of_weights_capped_and_review_is_strictly_above():
    sigs = [{"code": c, "weight": w} for c, w in (("usage_spike", 20), ("related_party", 60), ("no_contract", 30))]
    r = assess(RP, sigs)
    assert r["score"] == 100 and [s["code"] for s in r["signals"]] == ["no_contract", "related_party", "usage_spike"]
    assert not needs_review(RP, {"score": 50}) and needs_review(RP, {"score": 51})


def test_policy_file_reads_risk_and_names_bad_keys():
    p = load_policy()
    assert p.risk.price_tolerance == Fraction(1, 5) and p.risk.review_threshold == 50
    assert "gpu.*" in p.eligible_resources and p.require_contracts is False
    import tomllib

    from billing.policy_file import default_policy_path
    data = tomllib.loads(default_policy_path().read_text())
    bad = {**data, "risk": {**data["risk"], "price_tolerance": 0.2}}
    with pytest.raises(PolicyError, match="risk.price_tolerance"):
        parse_policy(bad)
    bad = {**data, "risk": {**data["risk"], "weights": {k: v for k, v in data["risk"]["weights"].items()
                                                          if k != "usage_spike"}}}
    with pytest.raises(PolicyError, match="risk.weights.usage_spike"):
        parse_policy(bad)
    old = {k: v for k, v in data.items() if k not in ("risk", "eligible_resources", "require_contracts")}
    assert parse_policy(old).eligible_resources == ()  # files written before keep loading


# --- through the API ---------------------------------------------------------------------------

PERIOD = "2026-10"
SH = timedelta(hours=8)


def at(y, m, d, h=12, minute=0):
    """A Shanghai wall-clock moment as UTC."""
    return datetime(y, m, d, h, minute, tzinfo=UTC) - SH


@pytest.fixture
def world(app, finance, as_key):
    _, (u0, u1) = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=2)
    return {"finance": finance, "u0": u0, "u1": u1, "prov": as_key("provider", "prov-a"),
            "ent": as_key("enterprise", u0), "app": app}


def push(prov, uscc, rid, amount, ended, quantity="1", resource="gpu.h800"):
    body = record(0, uscc, record_id=rid, amount=amount, quantity=quantity, resource=resource,
                  started_at=(ended - timedelta(minutes=30)).isoformat(), ended_at=ended.isoformat())
    return prov.post("/v1/usage-records", json={"records": [body]}).json


def contract(w, valid_from="2026-10-01", valid_until="2026-10-31", confirm=True, no="C-1"):
    r = w["prov"].post("/v1/contracts", json={"enterprise_uscc": w["u0"], "contract_no": no,
                                              "signed_on": "2026-09-20", "valid_from": valid_from,
                                              "valid_until": valid_until})
    assert r.status_code == 201, r.json
    if confirm:
        c = w["ent"].post(f"/v1/contracts/{r.json['id']}/confirm")
        assert c.status_code == 200 and c.json["confirmed_at"], c.json
    return r.json["id"]


def run(w, total, paid=None):
    invoice(w["prov"], "INV-1", w["u0"], total, period=PERIOD)
    cid = claim(w["ent"], [("prov-a", "INV-1", paid or total)], period=PERIOD)
    assert w["finance"].post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    return w["finance"].get(f"/v1/claims/{cid}").json


def signals(c):
    return {s["code"]: s for s in c["risk"]["signals"]}


def test_contract_validity_dates_are_inclusive(world):
    contract(world, valid_from="2026-10-01", valid_until="2026-10-15")
    push(world["prov"], world["u0"], "in", 1000, at(2026, 10, 15, 23, 59))
    push(world["prov"], world["u0"], "out", 700, at(2026, 10, 16, 0, 0))
    push(world["prov"], world["u0"], "first", 300, at(2026, 10, 1, 0, 0))
    c = run(world, 2000)
    s = signals(c)["no_contract"]
    assert s["amount"] == 700 and s["providers"] == {"prov-a": 700} and s["weight"] == 30
    assert "没有已确认的合同" in s["message_zh"]
    assert c["status"] == "verified" and c["payable"] == 1000  # 30 ≤ 50: not flagged; amount unchanged


def test_an_unconfirmed_contract_covers_nothing(world):
    contract(world, confirm=False)
    push(world["prov"], world["u0"], "r", 1000, at(2026, 10, 10))
    assert signals(run(world, 1000))["no_contract"]["amount"] == 1000


def test_price_at_the_tolerance_and_one_fen_over_with_effective_dates(world):
    contract(world)
    f = world["finance"]
    for price, day in ((1000, "2026-01-01"), (2000, "2026-10-16")):
        r = f.post("/v1/providers/prov-a/prices", json={"resource": "gpu.h800", "unit": "gpu_hour",
                                                        "unit_price": price, "effective_from": day})
        assert r.status_code == 201, r.json
    push(world["prov"], world["u0"], "at", 1200, at(2026, 10, 5))             # exactly 1.2 × 1000
    push(world["prov"], world["u0"], "new-price", 2400, at(2026, 10, 16, 0, 0))  # 1.2 × 2000 from the 16th
    c = run(world, 3600)
    assert "price_above_catalogue" not in signals(c)
    push(world["prov"], world["u0"], "over", 1201, at(2026, 10, 6))          # one fen over
    invoice(world["prov"], "INV-2", world["u0"], 1201, period=PERIOD)
    cid = claim(world["ent"], [("prov-a", "INV-2", 1201)], period=PERIOD)
    f.post("/v1/reconciliations", json={"period": PERIOD})
    s = signals(f.get(f"/v1/claims/{cid}").json)["price_above_catalogue"]
    assert s["lines"] == [{"provider_id": "prov-a", "resource": "gpu.h800", "unit": "gpu_hour", "unit_price": 1000,
                           "records": 1, "amount": 1201, "paid_unit_price": "1201.00"}]


def test_related_party_flags_a_clean_claim_without_changing_its_amount(world):
    contract(world)
    f = world["finance"]
    assert f.patch("/v1/enterprises/" + world["u0"], json={"legal_representative": "张 三"}).status_code == 200
    r = f.patch("/v1/providers/prov-a", json={"legal_representative": "张三", "uscc": world["u1"]})
    assert r.status_code == 200 and r.json["uscc"] == world["u1"], r.json
    push(world["prov"], world["u0"], "r", 1000, at(2026, 10, 10))
    c = run(world, 1000)
    assert signals(c)["related_party"]["providers"] == {"prov-a": ["same_legal_representative"]}
    assert c["status"] == "flagged" and c["payable"] == 500 and c["risk"]["score"] == 60
    assert [d["code"] for d in c["discrepancies"]] == ["risk_review"]


def test_related_party_link_and_same_uscc(world):
    contract(world)
    f = world["finance"]
    assert f.post("/v1/related-parties", json={"provider_id": "prov-a", "enterprise_uscc": world["u0"],
                                               "relation": "同一实际控制人"}).status_code == 201
    assert f.patch("/v1/providers/prov-a", json={"uscc": world["u0"]}).status_code == 200
    push(world["prov"], world["u0"], "r", 1000, at(2026, 10, 10))
    assert signals(run(world, 1000))["related_party"]["providers"] == {"prov-a": ["same_uscc", "link"]}


def test_ineligible_usage_is_metered_but_left_out_of_the_base(world):
    contract(world)
    push(world["prov"], world["u0"], "gpu", 1000, at(2026, 10, 10))
    push(world["prov"], world["u0"], "disk", 500, at(2026, 10, 11), resource="storage.ssd")
    c = run(world, 1500)  # the invoice matches all metered usage: clean
    assert c["items"][0]["metered"] == 1500 and c["items"][0]["base"] == 1000 and c["payable"] == 500
    s = signals(c)["ineligible_resource"]
    assert s["amount"] == 500 and s["metered"] == 1500 and c["status"] == "verified"


def test_usage_spike_over_the_previous_three_months(world):
    contract(world, valid_from="2026-07-01")
    for m in (7, 8, 9):
        push(world["prov"], world["u0"], f"m{m}", 400_000, at(2026, m, 10))
    push(world["prov"], world["u0"], "now", 1_200_001, at(2026, 10, 10))  # 3 × 400,000 = 1,200,000 > floor
    s = signals(run(world, 1_200_001))["usage_spike"]
    assert s["previous"] == [400_000, 400_000, 400_000] and s["limit"] == "1200000"


def test_require_contracts_rejects_uncovered_records_at_push(world):
    app = world["app"]
    app.extensions["voucher.policy"] = dataclasses.replace(app.extensions["voucher.policy"], require_contracts=True)
    r = push(world["prov"], world["u0"], "no", 100, at(2026, 10, 10))
    assert r["rejected"] == 1 and r["results"][0]["error"]["code"] == "no_contract"
    contract(world, valid_until="2026-10-10")
    assert push(world["prov"], world["u0"], "yes", 100, at(2026, 10, 10, 23, 59))["accepted"] == 1
    assert push(world["prov"], world["u0"], "late", 100, at(2026, 10, 11, 0, 0))["rejected"] == 1


def test_contract_registration_is_idempotent_and_confirmed_only_by_its_enterprise(world, as_key):
    cid = contract(world, confirm=False)
    again = world["prov"].post("/v1/contracts", json={"enterprise_uscc": world["u0"], "contract_no": "C-1",
                                                      "signed_on": "2026-09-20", "valid_from": "2026-10-01",
                                                      "valid_until": "2026-10-31"})
    assert again.status_code == 200 and again.json["id"] == cid
    other = as_key("enterprise", world["u1"])
    assert other.post(f"/v1/contracts/{cid}/confirm").status_code == 404
    assert world["ent"].get("/v1/contracts").json["data"][0]["id"] == cid
    assert other.get("/v1/contracts").json["data"] == []


def test_the_xlsx_report_has_a_risk_sheet_of_text_cells(world):
    import io

    import openpyxl
    contract(world, valid_until="2026-10-05")
    push(world["prov"], world["u0"], "r", 1000, at(2026, 10, 10))
    run(world, 1000)
    r = world["finance"].get(f"/v1/reconciliations/{PERIOD}/report.xlsx")
    ws = openpyxl.load_workbook(io.BytesIO(r.data))["风险 Risk"]
    rows = list(ws.iter_rows(min_row=3, values_only=True))
    assert rows[0][2] == 30 and rows[0][4] == "无已确认合同 no_contract"
    assert all(not str(v).startswith("=") for row in rows for v in row if v is not None)


def test_an_approved_claim_keeps_the_risk_of_its_last_open_run(world):
    """docs/API.md#risk-score: a re-run recomputes an approved claim's amounts, never its risk."""
    push(world["prov"], world["u0"], "r", 1000, at(2026, 10, 10))
    c = run(world, 1000)
    assert c["status"] == "verified" and c["risk"]["score"] == 30  # no contract yet
    f = world["finance"]
    assert f.post(f"/v1/claims/{c['id']}/approve", json={}).status_code == 200
    contract(world)  # now covered: an open claim would lose the signal
    assert f.post("/v1/reconciliations", json={"period": PERIOD}).status_code in (200, 201)
    after = f.get(f"/v1/claims/{c['id']}").json
    assert after["status"] == "approved" and after["risk"] == c["risk"]
