"""The cap holds under parallel reconciliations on a multi-worker server (PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from billing.ledger import verify
from tests.conftest import new_key
from tests.factories import claim, invoice, setup_programme, usage
from tests.server import Server


def test_twelve_months_reconciled_at_once_pay_exactly_the_cap(pg):
    finance = pg.finance
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=1)
    u = usccs[0]
    ent, prov = pg.as_key("enterprise", u), pg.as_key("provider", "prov-a")
    year = 2025
    cap = finance.get(f"/v1/enterprises/{u}/quota?year={year}").json["cap"]
    # 2025-01..04 lie before the policy window (they pay 0); each month of the window is
    # worth a sixth of the cap, so the twelve months together ask for more than the cap.
    spend = cap // 3 + 2
    months = [f"{year}-{m:02d}" for m in range(1, 13)]
    for period in months:
        usage(prov, u, spend, period=period)
        invoice(prov, f"INV-{period}", u, spend, period=period)
        claim(ent, [("prov-a", f"INV-{period}", spend)], period=period)
    key = new_key(pg.db, "finance")
    with Server(pg.url, workers=4) as server:
        def run(period):
            return requests.post(f"{server.url}/v1/reconciliations", json={"period": period},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=60)

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(run, months))
    assert [r.status_code for r in responses] == [201] * 12, [r.text for r in responses]
    claims = finance.get("/v1/claims?limit=100").json["data"]
    assert len(claims) == 12
    assert sum(c["payable"] for c in claims) == cap
    assert sum(c["cap_reached"] for c in claims) >= 1
    q = finance.get(f"/v1/enterprises/{u}/quota?year={year}").json
    assert q["remaining"] == 0 and q["reserved"] == cap
    with pg.db.session() as s:
        assert verify(s).ok
