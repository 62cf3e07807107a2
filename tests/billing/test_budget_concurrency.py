"""The budget holds under parallel reconciliations and approvals on a multi-worker server
(PostgreSQL), and the waitlist is funded in submission order (docs/API.md#budget)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from billing.budget import ProgrammeBudget
from billing.ledger import verify
from billing.models import LedgerPosting
from tests.billing.test_concurrency import YEAR, whole_year_policy
from tests.conftest import new_key
from tests.factories import claim, invoice, setup_programme, usage
from tests.server import Server

MONTHS = [f"{YEAR}-{m:02d}" for m in range(1, 7)]
ANNUAL = 7_500  # ¥75: seven claims and a half of the twenty-four


def _short(c):
    return sum(d.get("waitlisted", 0) for d in c["discrepancies"] if d["code"] == "budget_exhausted")


def test_parallel_runs_and_approvals_never_pass_the_budget_and_fund_the_waitlist_in_order(pg, tmp_path):
    path, policy = whole_year_policy(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + f"\n[budget]\nannual = {ANNUAL}\n", encoding="utf-8")
    finance = pg.finance
    finance.post("/v1/providers", json={"id": "prov-a", "name": "A", "kind": "intelligent_computing",
                                        "listed_from": f"{YEAR}-01-01"})
    _, usccs = setup_programme(finance, providers=(), enterprises=4)
    prov = pg.as_key("provider", "prov-a")
    for period in MONTHS:
        for n, u in enumerate(usccs):
            usage(prov, u, 2_000, period=period)
            invoice(prov, f"INV-{n}-{period}", u, 2_000, period=period)
            claim(pg.as_key("enterprise", u), [("prov-a", f"INV-{n}-{period}", 2_000)], period=period)
    ids = sorted(int(c["id"].removeprefix("clm_")) for c in finance.get("/v1/claims?limit=100").json["data"])
    key = new_key(pg.db, "finance")
    auth = {"Authorization": f"Bearer {key}"}

    with ThreadPoolExecutor(max_workers=10) as pool, \
            Server(pg.url, workers=4, env={"VOUCHER_POLICY": str(path)}) as server:
        def post(url, body=None):
            return requests.post(f"{server.url}{url}", json=body or {}, headers=auth, timeout=60)

        def reconcile(period):
            return post("/v1/reconciliations", {"period": period}).status_code

        def approve(i):
            return post(f"/v1/claims/clm_{i}/approve", {"reason": "race"}).status_code

        # Runs of six months and approvals of every other claim, all at once, twice over. A run
        # funds whole months of four claims in id order, so funded claims never approved remain.
        for _ in range(2):
            jobs = [pool.submit(reconcile, p) for p in MONTHS] + [pool.submit(approve, i) for i in ids[::2]]
            codes = [j.result() for j in jobs]
            assert set(codes) <= {200, 201, 409}, codes
        claims = {int(c["id"].removeprefix("clm_")): c for c in finance.get("/v1/claims?limit=100").json["data"]}
        assert sum(c["payable"] for c in claims.values()) == ANNUAL
        assert sorted(c["payable"] for c in claims.values()) == [0] * 16 + [500] + [1_000] * 7
        assert_row_agrees(pg, policy.id, ANNUAL)

        # Free 2_000 fen: reject two claims still holding a reservation (not approved).
        holding = [i for i, c in claims.items() if c["status"] == "verified" and c["payable"] == 1_000]
        assert len(holding) >= 2, claims
        for i in holding[:2]:
            assert post(f"/v1/claims/clm_{i}/reject", {"reason": "freed"}).status_code == 200
        freed = 2_000
        queue = [(i, _short(claims[i])) for i in ids if _short(claims[i]) and i not in holding[:2]]
        # Parallel runs until nothing changes: the gate makes a later claim wait for an earlier one.
        for _ in range(len(MONTHS) + 2):
            assert set(pool.map(reconcile, MONTHS)) <= {200, 201}
        after = {int(c["id"].removeprefix("clm_")): c for c in finance.get("/v1/claims?limit=100").json["data"]}
        left = freed
        for i, short in queue:  # first in, first out: each in turn gets what it lacks
            got = min(short, left)
            assert after[i]["payable"] - claims[i]["payable"] == got, (i, queue, after[i])
            left -= got
        assert left == 0
        b = requests.get(f"{server.url}/v1/budget?year={YEAR}", headers=auth, timeout=30).json()
        assert b["reserved"] + b["granted"] == ANNUAL and b["remaining"] == 0
    assert_row_agrees(pg, policy.id, ANNUAL)


def assert_row_agrees(pg, programme, annual):
    with pg.db.session() as s:
        row = s.get(ProgrammeBudget, (programme, YEAR))
        posted = dict(s.execute(select(LedgerPosting.account, func.sum(LedgerPosting.amount))
                                .where(LedgerPosting.account.in_(["reserved", "granted"]))
                                .group_by(LedgerPosting.account)).all())
        assert (row.reserved, row.granted) == (posted.get("reserved", 0), posted.get("granted", 0))
        assert row.reserved + row.granted <= annual == row.annual
        report = verify(s)
    assert report.ok, report.breaches
