"""Authorisations racing on a multi-worker server (PostgreSQL): a hold never over-reserves
(docs/API.md#redemptions; docs/ARCHITECTURE.md#lock-order)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select

from billing.ledger import verify
from billing.redemption_models import Redemption
from tests.conftest import new_key
from tests.factories import setup_programme
from tests.server import Server

P = "2026-02"


def _authorise(server, key, uscc, ref, amount):
    r = requests.post(f"{server.url}/v1/redemptions", json={"enterprise_uscc": uscc, "reference": ref,
                                                            "list_amount": amount, "period": P},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return ref, r.status_code, (r.json() if r.headers.get("Content-Type", "").startswith("application/json") else r.text)


@pytest.mark.parametrize("enterprises", [1, 8])
def test_32_clients_authorising_near_the_cap_never_pass_it(pg, enterprises):
    _, usccs = setup_programme(pg.finance, providers=("prov-a",), enterprises=enterprises)
    prov = pg.as_key("provider", "prov-a")
    cap = pg.finance.get(f"/v1/enterprises/{usccs[0]}/quota?year=2026").json["cap"]
    for i, u in enumerate(usccs):  # each enterprise is left 52,500 fen below its cap
        r = prov.post("/v1/redemptions", json={"enterprise_uscc": u, "reference": f"fill-{i}",
                                               "list_amount": 2 * (cap - 52_500), "period": P})
        assert r.status_code == 201 and r.json["subsidy"] == cap - 52_500, r.json
    key = new_key(pg.db, "provider", "prov-a")
    # 32 clients, 4 requests each: 8 references per enterprise asked twice (a retried request).
    calls = [(usccs[n % enterprises], f"r-{n % 64}") for n in range(128)]
    with Server(pg.url, workers=4) as server, ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda c: _authorise(server, key, c[0], c[1], 10_000), calls))
    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) <= {200, 201, 422}, statuses
    by_ref: dict[str, set] = {}
    for ref, status, body in answers:
        if status in (200, 201):
            by_ref.setdefault(ref, set()).add(body["id"])
        else:
            assert body["error"]["code"] == "quota_exhausted", body
    assert all(len(ids) == 1 for ids in by_ref.values()), by_ref  # every hold answered exactly once
    assert statuses[201] == len(by_ref)
    with pg.db.session() as s:
        held = dict(s.execute(select(Redemption.enterprise_uscc, func.sum(Redemption.held))
                              .group_by(Redemption.enterprise_uscc)).all())
        per_ref = s.execute(select(Redemption.reference, func.count()).group_by(Redemption.reference)).all()
        assert all(n == 1 for _, n in per_ref)
        report = verify(s)
    assert report.ok, report.breaches
    for u in usccs:
        q = pg.finance.get(f"/v1/enterprises/{u}/quota?year=2026").json
        assert q["reserved"] + q["granted"] <= cap and q["reserved"] == held[u]
        asked = len({ref for uscc, ref in calls if uscc == u}) * 5_000
        assert q["remaining"] == max(52_500 - asked, 0)  # one enterprise: 10 full holds, a partial, then 422
