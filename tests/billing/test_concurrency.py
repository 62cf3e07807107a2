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
