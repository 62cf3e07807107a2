"""The audit trail: every change on the record, in its own transaction, in an unbroken chain."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text

from kernel import audit
from kernel.audit import GENESIS, AuditEvent, verify_chain
from metering.models import Provider
from tests.conftest import Api
from tests.factories import claim, invoice, setup_programme, usage
from voucher.cli import main as cli


def events(db, **where) -> list[AuditEvent]:
    with db.session() as s:
        stmt = select(AuditEvent).order_by(AuditEvent.seq)
        for k, v in where.items():
            stmt = stmt.where(getattr(AuditEvent, k) == v)
        return list(s.scalars(stmt))


def chain_ok(db) -> audit.ChainReport:
    with db.session() as s:
        report = verify_chain(s)
    assert report.ok, [str(p) for p in report.problems]
    return report


@contextmanager
def tampering(db):
    """A connection that gets past the append-only trigger, as a database superuser would."""
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        yield conn


def test_every_change_of_a_month_is_on_the_record(client, finance, as_key, db):
    (prov,), (u, other) = setup_programme(finance, providers=("prov-a",), enterprises=2)
    assert finance.patch("/v1/providers/prov-a", json={"county": "海宁市"}).status_code == 200
    assert finance.patch(f"/v1/enterprises/{other}", json={"eligible": False}).status_code == 200
    r = finance.post(f"/v1/enterprises/{u}/model-filings",
                     json={"filing_no": "Zhejiang-Jiaxing-2026-001", "model_name": "m",
                           "obtained_on": "2026-03-01"})
    assert r.status_code == 201
    r = finance.post("/v1/api-keys", json={"role": "provider", "subject": prov},
                     headers={"X-Request-Id": "issue-key-1"})
    key_id, p = r.json["id"], Api(client, r.json["key"])
    e = as_key("enterprise", u)
    usage(p, u, 20_000, period="2026-09", rid="a")
    usage(p, u, 20_000, period="2026-09", rid="b")
    invoice(p, "INV-1", u, 40_000, period="2026-09")
    first = claim(e, [(prov, "INV-1", 40_000)], period="2026-09")
    assert finance.post("/v1/reconciliations", json={"period": "2026-09"}).status_code == 201
    assert finance.post(f"/v1/claims/{first}/approve", json={}).status_code == 200
    assert p.delete("/v1/usage-records/b", json={"reason": "double-counted"}).status_code == 200
    assert finance.post("/v1/reconciliations", json={"period": "2026-09"}).status_code == 200
    invoice(p, "INV-2", u, 1_000, period="2026-09")
    second = claim(e, [(prov, "INV-2", 1_000)], period="2026-09")
    assert finance.post(f"/v1/claims/{second}/reject", json={"reason": "late"}).status_code == 200
    assert finance.delete(f"/v1/api-keys/{key_id}").status_code == 200

    rows = finance.get("/v1/audit-events?limit=1000").json["data"]
    assert [r["action"] for r in rows] == [
        "provider.created", "enterprise.created", "enterprise.created", "provider.updated",
        "enterprise.updated", "model_filing.created", "api_key.created",
        "provider_invoice.submitted", "claim.submitted", "reconciliation.run", "claim.approved",
        "usage_record.voided", "claim.clawed_back", "reconciliation.run",
        "provider_invoice.submitted", "claim.submitted", "claim.rejected", "api_key.revoked"]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))

    by = {r["action"]: r for r in rows}  # the last of each action
    assert by["provider.updated"]["before"] == {"county": None}
    assert by["provider.updated"]["after"] == {"county": "海宁市"}
    assert by["enterprise.updated"]["object_id"] == other
    assert by["enterprise.updated"]["before"] == {"eligible": True}
    issued = by["api_key.created"]
    assert issued["request_id"] == "issue-key-1"
    assert issued["actor"]["role"] == "finance" and issued["actor"]["key_id"].startswith("key_")
    assert issued["after"] == {"role": "provider", "subject": prov}
    voided = by["usage_record.voided"]
    assert voided["actor"]["key_id"] == key_id and voided["actor"]["role"] == "provider"
    assert voided["after"]["reason"] == "double-counted" and voided["before"] == {"status": "active"}
    clawback = by["claim.clawed_back"]
    assert clawback["object_id"] == first
    assert clawback["before"]["granted"] == 20_000 > clawback["after"]["granted"]
    assert by["claim.approved"]["after"]["granted"] == 20_000
    assert by["claim.rejected"]["after"]["status"] == "rejected"
    assert by["reconciliation.run"]["after"]["run"] == 2
    assert by["reconciliation.run"]["actor"]["role"] == "finance"
    assert by["api_key.revoked"]["before"] == {"revoked_at": None}
    # Ingested records are the metering table's own record, not audit entries.
    assert "usage_record.created" not in by
    chain_ok(db)


def test_refused_and_repeated_requests_leave_no_entry(client, finance, as_key, db):
    setup_programme(finance, providers=("prov-a",), enterprises=1)
    before = len(events(db))
    # Fails after the change was applied in memory: the entry goes with the rollback.
    r = finance.patch("/v1/providers/prov-a", json={"listed_until": "2020-01-01"})
    assert r.status_code == 422
    assert finance.patch("/v1/providers/prov-a", json={"name": "PROV-A"}).status_code == 200  # no change
    key = finance.post("/v1/api-keys", json={"role": "finance"}).json["id"]
    assert finance.delete(f"/v1/api-keys/{key}").status_code == 200
    assert finance.delete(f"/v1/api-keys/{key}").status_code == 200  # idempotent
    assert [e.action for e in events(db)][before:] == ["api_key.created", "api_key.revoked"]
    with db.session() as s:
        assert s.get(Provider, "prov-a").listed_until is None


def test_filters_and_pages(finance, as_key, db):
    _, usccs = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=3)
    r = finance.get("/v1/audit-events?action=enterprise.created&limit=2")
    assert r.status_code == 200 and r.json["has_more"] is True
    page1 = r.json["data"]
    assert [e["object_id"] for e in page1] == usccs[:2]
    r = finance.get(f"/v1/audit-events?action=enterprise.created&starting_after={page1[-1]['id']}")
    assert [e["object_id"] for e in r.json["data"]] == usccs[2:] and r.json["has_more"] is False
    r = finance.get("/v1/audit-events?object_type=provider&object_id=prov-b")
    assert [e["action"] for e in r.json["data"]] == ["provider.created"]
    assert finance.get("/v1/audit-events?starting_after=nope").status_code == 400
    assert as_key("provider", "prov-a").get("/v1/audit-events").status_code == 403
    assert as_key("enterprise", usccs[0]).get("/v1/audit-events").status_code == 403


def _seed(db, n=5):
    with db.session() as s, s.begin():
        for i in range(n):
            audit.append(s, "test.changed", "thing", f"t{i}", before={"v": i}, after={"v": i + 1})


def _problems(db):
    with db.session() as s:
        return {(p.seq, p.kind) for p in verify_chain(s).problems}


def test_an_edited_entry_breaks_the_chain(db):
    _seed(db)
    chain_ok(db)
    with tampering(db) as conn:
        conn.execute(text("UPDATE audit_event SET after = :a WHERE seq = 3"), {"a": '{"v": 400}'})
    assert _problems(db) == {(3, "edited")}


def test_an_edited_actor_breaks_the_chain(db):
    _seed(db)
    with tampering(db) as conn:
        conn.execute(text("UPDATE audit_event SET actor_role = 'finance' WHERE seq = 2"))
    assert _problems(db) == {(2, "edited")}


def test_a_deleted_entry_breaks_the_chain(db):
    _seed(db)
    with tampering(db) as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    assert _problems(db) == {(3, "missing"), (3, "broken_link")}


def test_reordered_entries_break_the_chain(db):
    _seed(db)
    with tampering(db) as conn:  # swap the positions of entries 2 and 4
        conn.execute(text("UPDATE audit_event SET seq = -2 WHERE seq = 2"))
        conn.execute(text("UPDATE audit_event SET seq = 2 WHERE seq = 4"))
        conn.execute(text("UPDATE audit_event SET seq = 4 WHERE seq = -2"))
    problems = _problems(db)
    assert {(2, "edited"), (4, "edited"), (2, "broken_link")} <= problems


def test_a_rewritten_chain_still_shows_against_an_anchor(db):
    """Whoever recomputes every hash after an edit is caught by a head recorded earlier."""
    _seed(db)
    with db.session() as s:
        head = verify_chain(s)
        assert audit.verify_anchor(s, head.head_seq, head.head_hash) is None
    with tampering(db) as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 5"))
    chain_ok(db)  # a clean cut from the end is a valid shorter chain ...
    with db.session() as s:
        problem = audit.verify_anchor(s, head.head_seq, head.head_hash)
    assert problem is not None and problem.kind == "missing"  # ... but not the chain anchored


def test_postgresql_refuses_to_edit_or_delete_entries(pg):
    from sqlalchemy.exc import DBAPIError

    _seed(pg.db, 2)
    for sql in ("UPDATE audit_event SET action = 'x' WHERE seq = 1", "DELETE FROM audit_event"):
        with pytest.raises(DBAPIError, match="append-only"):
            with pg.db.engine.begin() as conn:
                conn.execute(text(sql))
    chain_ok(pg.db)


def test_concurrent_writers_extend_one_chain(pg):
    """Many transactions at once: seq stays gapless and every link holds (PostgreSQL)."""
    setup_programme(pg.finance, providers=("prov-a",), enterprises=0)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(15):
                with pg.db.session() as s, s.begin():
                    p = s.get(Provider, "prov-a", with_for_update=(i % 3 == 0))
                    audit.append(s, "test.changed", "provider", p.id, after={"t": t, "i": i})
                    if i % 2:
                        audit.append(s, "test.also", "provider", p.id, after={"t": t, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    report = chain_ok(pg.db)
    assert report.entries == 1 + 8 * (15 + 7)
    assert [e.seq for e in events(pg.db)] == list(range(1, report.entries + 1))


def test_cli_changes_are_audited_and_verify_reports_breaches(db, database_url):
    env = {"VOUCHER_DATABASE_URL": database_url}
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "create", "--role", "finance"], env=env)
    assert r.exit_code == 0, r.output
    key_id = r.output.split()[0]
    assert runner.invoke(cli, ["keys", "revoke", key_id], env=env).exit_code == 0
    rows = events(db, object_id=key_id)
    assert [(e.action, e.actor_role, e.actor_key_id) for e in rows] == [
        ("api_key.created", "cli", None), ("api_key.revoked", "cli", None)]
    assert rows[0].request_id.startswith("cli_")

    r = runner.invoke(cli, ["audit", "verify"], env=env)
    assert r.exit_code == 0 and "audit chain ok: 2 entries" in r.output, r.output
    head = r.output.strip().splitlines()[-1].split()[1]
    assert runner.invoke(cli, ["audit", "verify", "--anchor", head], env=env).exit_code == 0

    with tampering(db) as conn:
        conn.execute(text("UPDATE audit_event SET object_id = 'key_0000000000000000' WHERE seq = 1"))
    r = runner.invoke(cli, ["audit", "verify"], env=env)
    assert r.exit_code == 1 and "seq 1: edited" in r.output, r.output
    with tampering(db) as conn:
        conn.execute(text("DELETE FROM audit_event"))
    r = runner.invoke(cli, ["audit", "verify", "--anchor", head], env=env)
    assert r.exit_code == 1 and "cut back" in r.output, r.output


def test_scheduler_and_system_actors(db):
    with audit.acting_as("scheduler"), db.session() as s, s.begin():
        audit.append(s, "test.changed", "thing", "a")
    with db.session() as s, s.begin():
        audit.append(s, "test.changed", "thing", "b")
    roles = [(e.object_id, e.actor_role, e.request_id.split("_")[0]) for e in events(db)]
    assert roles == [("a", "scheduler", "scheduler"), ("b", "system", "sys")]


def test_values_are_stored_as_hashed(db):
    from datetime import UTC, date, datetime
    from decimal import Decimal

    with db.session() as s, s.begin():
        audit.append(s, "test.changed", "thing", 7, before={"on": date(2026, 1, 2), "q": Decimal("1.50")},
                     after={"at": datetime(2026, 1, 2, 3, tzinfo=UTC), "tags": {"b", "a"}, "名": "企业"})
    (e,) = events(db)
    assert e.object_id == "7"
    assert e.before == {"on": "2026-01-02", "q": "1.50"}
    assert e.after == {"at": "2026-01-02T03:00:00+00:00", "tags": ["a", "b"], "名": "企业"}
    chain_ok(db)
    with pytest.raises(TypeError):
        audit.jsonable({"amount": 1.5})


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@given(actor_key=st.none() | st.text(max_size=12), request_id=st.text(max_size=20), object_id=st.text(max_size=20),
       after=_json_values, before=_json_values, seq=st.integers(1, 10**12),
       prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_the_chain_blob_around_prev_hash_and_seq_hashes_as_the_entry_does(actor_key, request_id, object_id, after,
                                                                          before, seq, prev):
    """What a writer inside the database hashes (migration 0019: head + prev_hash + tail + seq + "}")
    is exactly entry_hash's canonical JSON, whatever the text and nesting of the entry."""
    import hashlib

    from kernel.audit import Actor, chain_blob, entry_fields, entry_hash

    fields = entry_fields(Actor("provider", actor_key, request_id or None), "redemption.authorized", "redemption",
                          object_id, before=before, after=after)
    head, tail = chain_blob(fields)
    blob = head + prev + tail + str(seq) + "}"
    assert hashlib.sha256(blob.encode()).hexdigest() == entry_hash({**fields, "seq": seq, "prev_hash": prev})
