"""`voucher reconcile` and `voucher ledger verify` on the configured database."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tests.factories import claim, invoice, setup_programme, usage
from voucher.cli import main


@pytest.fixture
def scenario(finance, as_key):
    _, usccs = setup_programme(finance, providers=("prov-a",), enterprises=1)
    u = usccs[0]
    usage(as_key("provider", "prov-a"), u, 40_000)
    invoice(as_key("provider", "prov-a"), "A-1", u, 40_000)
    claim(as_key("enterprise", u), [("prov-a", "A-1", 40_000)])
    claim(as_key("enterprise", u), [("prov-a", "A-404", 5)])
    return u


def run(database_url, *args):
    return CliRunner().invoke(main, list(args), env={"VOUCHER_DATABASE_URL": database_url})


def test_reconcile_prints_the_month_and_is_idempotent(scenario, database_url, finance):
    r = run(database_url, "reconcile", "--period", "2026-10")
    assert r.exit_code == 0, r.output
    assert "verified 1" in r.output and "flagged 1" in r.output
    assert "invoice_not_found: 1" in r.output and "¥20,000.00" not in r.output
    assert "reserved ¥200.00" in r.output
    again = run(database_url, "reconcile", "--period", "2026-10", "--json")
    assert '"reserved": 20000' in again.output
    assert finance.get("/v1/reconciliations/2026-10").json["runs"] == 2


def test_reconcile_refuses_a_bad_period(database_url):
    r = run(database_url, "reconcile", "--period", "2026-13")
    assert r.exit_code == 2 and "--period" in r.output


@pytest.mark.tampers_with_ledger
def test_ledger_verify_exit_code(scenario, database_url, db):
    assert run(database_url, "reconcile", "--period", "2026-10").exit_code == 0
    ok = run(database_url, "ledger", "verify")
    assert ok.exit_code == 0 and "ledger ok" in ok.output
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE quota_balance SET reserved = reserved - 1"))
    bad = run(database_url, "ledger", "verify")
    assert bad.exit_code == 1 and "balance_mismatch" in bad.output


@pytest.mark.tampers_with_ledger
def test_ledger_verify_names_an_edited_posting(scenario, database_url, db):
    assert run(database_url, "reconcile", "--period", "2026-10").exit_code == 0
    assert run(database_url, "ledger", "verify").exit_code == 0
    with db.engine.begin() as conn:
        entry_id, posting_id = conn.execute(text(
            "SELECT entry_id, id FROM ledger_posting WHERE kind = 'reserve' AND account = 'reserved'"
        )).one()
        # One leg of the reservation, edited in place: the balance row is left as it was.
        conn.execute(text("UPDATE ledger_posting SET amount = amount + 1 WHERE id = :id"), {"id": posting_id})
    bad = run(database_url, "ledger", "verify")
    assert bad.exit_code == 1, bad.output
    assert f"BREACH unbalanced_entry: entry {entry_id}: 2 legs sum to 1" in bad.output
    assert "BREACH postings_do_not_balance: all postings sum to 1" in bad.output
    assert "balance_mismatch" in bad.output and "reserved: row 20000 != postings 20001" in bad.output
    assert "ledger ok" not in bad.output
