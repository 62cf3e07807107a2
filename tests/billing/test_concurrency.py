"""The cap holds under parallel reconciliations on a multi-worker server (PostgreSQL)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import requests

from billing.ledger import verify
from billing.policy_file import default_policy_path, load_policy
from tests.conftest import new_key
from tests.factories import claim, invoice, setup_programme, usage
from tests.server import Server

YEAR = 2025


def whole_year_policy(tmp_path):
    """The shipped policy, in force from 1 January of YEAR, under its own id.

    Only the window changes: the twelve months of one calendar year (the cap's unit) must all
    be in it, and months of the real window's only full year (2026) reach into the future.
    """
    text = default_policy_path().read_text(encoding="utf-8")
    shipped = load_policy(default_policy_path())
    for old, new in ((f"effective_from = {shipped.effective_from.isoformat()}", f"effective_from = {YEAR}-01-01"),
                     (f'id = "{shipped.id}"', f'id = "{shipped.id}-test-whole-{YEAR}"')):
        assert text.count(old) == 1, f"{old!r} not found once in the shipped policy"
        text = text.replace(old, new)
    path = tmp_path / "whole-year.toml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert dataclasses.replace(policy, id=shipped.id, effective_from=shipped.effective_from) == shipped
    return path, policy


def test_twelve_months_reconciled_at_once_pay_exactly_the_cap(pg, tmp_path):
    policy_path, policy = whole_year_policy(tmp_path)
    finance = pg.finance
    # The provider is in the catalogue for the whole year too (else provider_not_listed).
    r = finance.post("/v1/providers", json={"id": "prov-a", "name": "PROV-A", "kind": "intelligent_computing",
                                            "listed_from": f"{YEAR}-01-01"})
    assert r.status_code == 201, r.json
    _, usccs = setup_programme(finance, providers=(), enterprises=1)
    u = usccs[0]
    ent, prov = pg.as_key("enterprise", u), pg.as_key("provider", "prov-a")
    cap = finance.get(f"/v1/enterprises/{u}/quota?year={YEAR}").json["cap"]
    # Each month is worth a sixth of the cap (plus a fen), so the twelve together ask for about
    # twice the cap: every claim competes for the same quota row.
    spend = cap // 3 + 2
    months = [f"{YEAR}-{m:02d}" for m in range(1, 13)]
    for period in months:
        usage(prov, u, spend, period=period)
        invoice(prov, f"INV-{period}", u, spend, period=period)
        claim(ent, [("prov-a", f"INV-{period}", spend)], period=period)
    key = new_key(pg.db, "finance")
    with Server(pg.url, workers=4, env={"VOUCHER_POLICY": str(policy_path)}) as server:
        def run(period):
            return requests.post(f"{server.url}/v1/reconciliations", json={"period": period},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=60)

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(run, months))
    assert [r.status_code for r in responses] == [201] * 12, [r.text for r in responses]
    claims = finance.get("/v1/claims?limit=100").json["data"]
    assert sorted(c["period"] for c in claims) == months
    # Every claim reached the ledger: clean, evaluated under the whole-year policy, asking
    # for its full half of the spend, and either paid in full or cut by the cap.
    asked = (spend + 1) // 2
    for c in claims:
        assert c["policy_id"] == policy.id, c
        assert c["status"] == "verified", c
        assert c["discrepancy_codes"] in ([], ["cap_reached"]), c
        assert c["payable_before_cap"] == asked, c
        assert c["payable"] == asked or (c["cap_reached"] and c["payable"] < asked), c
    assert 12 * asked > cap
    assert sum(c["payable"] for c in claims) == cap
    full, cut = cap // asked, cap % asked
    assert sorted(c["payable"] for c in claims) == [0] * (12 - full - 1) + [cut] + [asked] * full
    assert sum(c["cap_reached"] for c in claims) == 12 - full
    q = finance.get(f"/v1/enterprises/{u}/quota?year={YEAR}").json
    assert q["remaining"] == 0 and q["reserved"] == cap and q["granted"] == 0
    with pg.db.session() as s:
        report = verify(s)
    assert report.ok, report.breaches


# --- runs, decisions and claims racing (docs/ARCHITECTURE.md#lock-order) ------------------------

def test_first_runs_of_one_month_at_once_never_answer_500(pg, tmp_path):
    """Defect 6: eight first runs of a month at once, eight months (five with a claim, three
    without): one 201 each, the rest 200."""
    policy_path, _ = whole_year_policy(tmp_path)
    finance = pg.finance
    finance.post("/v1/providers", json={"id": "prov-a", "name": "A", "kind": "intelligent_computing",
                                        "listed_from": f"{YEAR}-01-01"})
    _, (u,) = setup_programme(finance, providers=(), enterprises=1)
    ent, prov = pg.as_key("enterprise", u), pg.as_key("provider", "prov-a")
    months = [f"{YEAR}-{m:02d}" for m in range(1, 9)]
    for period in months[:5]:  # the last three months have no claim: no balance row to queue on
        usage(prov, u, 10_000, period=period)
        invoice(prov, f"INV-{period}", u, 10_000, period=period)
        claim(ent, [("prov-a", f"INV-{period}", 10_000)], period=period)
    key = new_key(pg.db, "finance")
    with Server(pg.url, workers=4, env={"VOUCHER_POLICY": str(policy_path)}) as server:
        for period in months:
            def run(month):
                return requests.post(f"{server.url}/v1/reconciliations", json={"period": month},
                                     headers={"Authorization": f"Bearer {key}"}, timeout=60)

            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = sorted(r.status_code for r in pool.map(run, [period] * 8))
            assert statuses == [200] * 7 + [201], (period, statuses)
            assert finance.get(f"/v1/reconciliations/{period}").json["runs"] == 8
    q = finance.get(f"/v1/enterprises/{u}/quota?year={YEAR}").json
    assert q["reserved"] == 5 * 5_000  # each month's claim reserved once, however many runs
    with pg.db.session() as s:
        assert verify(s).ok


ROUNDS = 30


def test_runs_approvals_rejections_and_claims_racing_never_deadlock_nor_lose_a_decision(pg, tmp_path):
    """Defect 7, over HTTP against four gunicorn workers, ROUNDS rounds: in each, re-runs of the
    month race approvals, rejections and new claims of the same month. No 5xx, every approval
    answered 200 ends approved, every rejection answered 200 ends rejected, ledger clean."""
    policy_path, _ = whole_year_policy(tmp_path)
    finance = pg.finance
    finance.post("/v1/providers", json={"id": "prov-a", "name": "A", "kind": "intelligent_computing",
                                        "listed_from": f"{YEAR}-01-01"})
    per_round = 6  # 3 approved, 2 rejected, 1 submitted during the round
    _, usccs = setup_programme(finance, providers=(), enterprises=per_round * ROUNDS)
    prov = pg.as_key("provider", "prov-a")
    period = f"{YEAR}-03"
    ents = {u: new_key(pg.db, "enterprise", u) for u in usccs}
    for u in usccs:
        usage(prov, u, 20_000, period=period)
        invoice(prov, f"INV-{u}", u, 20_000, period=period)
    key = new_key(pg.db, "finance")
    outcomes: list[tuple[str, str, int]] = []  # (action, claim id, status)
    statuses: list[int] = []
    with Server(pg.url, workers=4, env={"VOUCHER_POLICY": str(policy_path)}) as server:
        def call(method, path, api_key, body):
            return requests.request(method, f"{server.url}{path}", json=body, timeout=60,
                                    headers={"Authorization": f"Bearer {api_key}"})

        def submit(u):
            return call("POST", "/v1/claims", ents[u], {"period": period, "items": [
                {"provider_id": "prov-a", "invoice_no": f"INV-{u}", "amount_paid": 20_000}]})

        for n in range(ROUNDS):
            group = usccs[n * per_round:(n + 1) * per_round]
            ids = [submit(u).json()["id"] for u in group[:5]]
            assert call("POST", "/v1/reconciliations", key, {"period": period}).status_code in (200, 201)
            work = ([("run", None)] * 3 + [("approve", c) for c in ids[:3]]
                    + [("reject", c) for c in ids[3:]] + [("submit", group[5])])

            def act(item):
                what, target = item
                if what == "run":
                    r = call("POST", "/v1/reconciliations", key, {"period": period})
                elif what == "approve":
                    r = call("POST", f"/v1/claims/{target}/approve", key, {})
                elif what == "reject":
                    r = call("POST", f"/v1/claims/{target}/reject", key, {"reason": "race"})
                else:
                    r = submit(target)
                return what, target, r.status_code

            with ThreadPoolExecutor(max_workers=len(work)) as pool:
                done = list(pool.map(act, work))
            statuses.extend(s for _, _, s in done)
            outcomes.extend(done)
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert {(w, s) for w, _, s in outcomes} == {("run", 200), ("approve", 200), ("reject", 200),
                                                ("submit", 201)}
    claims = {c["id"]: c for c in finance.get("/v1/claims?limit=500").json["data"]}
    assert len(claims) == per_round * ROUNDS
    for what, cid, _ in outcomes:
        if what in ("approve", "reject"):
            assert claims[cid]["status"] == {"approve": "approved", "reject": "rejected"}[what], claims[cid]
    approved = [c for c in claims.values() if c["status"] == "approved"]
    assert len(approved) == 3 * ROUNDS and all(c["payable"] == 10_000 for c in approved)
    with pg.db.session() as s:
        report = verify(s)
    assert report.ok, report.breaches
