"""The quota hot path (api.hotread): one statement for key and balance, on PostgreSQL.

It bypasses the pool and the ORM, so these check what the pool used to give for free:
fresh figures after every write, a revoked key refused at once, and recovery when the
database drops the connection (a restart, an idle timeout).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy import event

from api.hotread import hot_reads
from kernel.keys import parse_key
from tests.conftest import new_key
from tests.factories import claim, invoice, make_uscc, setup_programme, usage


def _programme(pg):
    _providers, usccs = setup_programme(pg.finance, enterprises=2)
    provider = pg.as_key("provider", "prov-a")
    return usccs, provider


def _reserve(pg, provider, uscc: str, amount: int) -> None:
    usage(provider, uscc, amount)
    invoice(provider, f"INV-{amount}", uscc, amount)
    enterprise = pg.as_key("enterprise", uscc)
    claim(enterprise, [("prov-a", f"INV-{amount}", amount)])
    r = pg.finance.post("/v1/reconciliations", json={"period": "2026-10"})
    assert r.status_code in (200, 201), r.json


def test_quota_is_read_in_one_statement_without_the_pool(pg):
    (u0, _u1), provider = _programme(pg)
    _reserve(pg, provider, u0, 1_000_000)
    enterprise = pg.as_key("enterprise", u0)
    through_engine: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        through_engine.append(statement)

    event.listen(pg.db.engine, "before_cursor_execute", seen)
    try:
        r = enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026")
    finally:
        event.remove(pg.db.engine, "before_cursor_execute", seen)
    assert r.status_code == 200, r.json
    assert (r.json["reserved"], r.json["granted"], r.json["cap_basis"]) == (500_000, 0, "standard")
    assert r.json["remaining"] == r.json["cap"] - 500_000
    assert through_engine == []  # key and balance came from the hot read alone


def test_every_write_is_seen_by_the_next_read(pg):
    (u0, _u1), provider = _programme(pg)
    enterprise = pg.as_key("enterprise", u0)
    before = enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026")
    assert before.status_code == 200 and before.json["reserved"] == 0  # no balance row yet
    _reserve(pg, provider, u0, 400_000)
    after = enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026").json
    assert (after["reserved"], after["remaining"]) == (200_000, before.json["cap"] - 200_000)
    cid = pg.finance.get("/v1/claims?enterprise=" + u0).json["data"][0]["id"]
    assert pg.finance.post(f"/v1/claims/{cid}/approve", json={}).status_code == 200
    approved = enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026").json
    assert (approved["reserved"], approved["granted"]) == (0, 200_000)


def test_a_revoked_key_is_refused_at_once(pg):
    (u0, _u1), _provider = _programme(pg)
    plain = new_key(pg.db, "enterprise", u0)
    headers = {"Authorization": f"Bearer {plain}"}
    assert pg.client.get(f"/v1/enterprises/{u0}/quota?year=2026", headers=headers).status_code == 200
    key_id = parse_key(plain)[0]
    assert pg.finance.delete(f"/v1/api-keys/{key_id}").status_code == 200
    r = pg.client.get(f"/v1/enterprises/{u0}/quota?year=2026", headers=headers)
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthenticated"


def test_another_enterprise_and_a_bad_year_answer_as_on_every_route(pg):
    (u0, u1), _provider = _programme(pg)
    enterprise = pg.as_key("enterprise", u0)
    other = enterprise.get(f"/v1/enterprises/{u1}/quota?year=2026")
    assert other.status_code == 404
    assert enterprise.get(f"/v1/enterprises/{u0}/quota?year=20x6").json["error"]["param"] == "year"
    assert enterprise.get(f"/v1/enterprises/{u1}/quota?year=20x6").status_code == 404
    provider = pg.as_key("provider", "prov-a")
    assert provider.get(f"/v1/enterprises/{u0}/quota?year=2026").status_code == 403
    missing = pg.finance.get(f"/v1/enterprises/{make_uscc(999)}/quota?year=2026")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "resource_missing"


def test_a_dropped_connection_is_replaced_and_the_read_answers(pg):
    (u0, _u1), provider = _programme(pg)
    _reserve(pg, provider, u0, 600_000)
    enterprise = pg.as_key("enterprise", u0)
    assert enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026").status_code == 200
    reads = hot_reads(pg.db)
    conn = reads._local.conn  # this thread's hot-read connection  # noqa: SLF001
    pid = conn.info.backend_pid
    with psycopg.connect(pg.db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # as a restart would
    r = enterprise.get(f"/v1/enterprises/{u0}/quota?year=2026")
    assert r.status_code == 200 and r.json["reserved"] == 300_000
    assert reads._local.conn.info.backend_pid != pid  # noqa: SLF001


def test_a_year_without_a_balance_row_is_the_same_one_statement(pg):
    """Most enterprises have no claim yet this year: no ORM fallback, no pool (issue 14)."""
    (u0, u1), _provider = _programme(pg)
    pg.finance.post(f"/v1/enterprises/{u1}/model-filings",
                    json={"filing_no": "ZJ-1", "model_name": "m", "obtained_on": "2026-03-01"})
    through_engine: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        through_engine.append(statement)

    bodies = {}
    event.listen(pg.db.engine, "before_cursor_execute", seen)
    try:
        for uscc, year in ((u0, 2026), (u1, 2026), (u1, 2027), (u0, 2028)):
            r = pg.as_key("enterprise", uscc).get(f"/v1/enterprises/{uscc}/quota?year={year}")
            assert r.status_code == 200, r.json
            bodies[(uscc, year)] = (r.json["cap"], r.json["cap_basis"], r.json["reserved"],
                                    r.json["granted"], r.json["remaining"])
    finally:
        event.remove(pg.db.engine, "before_cursor_execute", seen)
    assert [s for s in through_engine if "quota_balance" in s] == []  # the keys' inserts only
    assert bodies == {
        (u0, 2026): (200_000_000, "standard", 0, 0, 200_000_000),
        (u1, 2026): (500_000_000, "new_model_filing", 0, 0, 500_000_000),
        (u1, 2027): (200_000_000, "standard", 0, 0, 200_000_000),
        (u0, 2028): (0, "outside_policy_window", 0, 0, 0),
    }


def test_without_year_the_quota_is_the_current_year_in_shanghai(pg):
    (u0, _u1), _provider = _programme(pg)
    r = pg.as_key("enterprise", u0).get(f"/v1/enterprises/{u0}/quota")
    assert r.status_code == 200, r.json
    assert r.json["year"] == datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).year
