"""Migration 0018 (docs/POLICY.md#programmes): quota rows and postings written before belong to the
default programme, and go back to one row per enterprise-year on downgrade (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from voucher.migrate import downgrade, upgrade

U = "91330402MA2B7K3X13"


def _sql(url: str, *statements: str) -> list:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            return [conn.execute(text(s)).all() if s.startswith("SELECT") else conn.execute(text(s))
                    for s in statements]
    finally:
        engine.dispose()


def test_existing_rows_become_the_default_programmes_and_come_back(fresh_url):
    upgrade(fresh_url)
    downgrade(fresh_url, "0017")
    _sql(fresh_url,
         f"INSERT INTO enterprise (uscc, name, eligible, created_at, updated_at) "
         f"VALUES ('{U}', 'x', true, '2026-01-01', '2026-01-01')",
         f"INSERT INTO quota_balance (enterprise_uscc, year, cap, cap_basis, reserved, granted, policy_id, updated_at) "
         f"VALUES ('{U}', 2026, 100, 'standard', 10, 5, 'jiaxing-ai-plus-2025', '2026-01-01')",
         f"INSERT INTO ledger_posting (entry_id, enterprise_uscc, year, account, amount, kind, policy_id, reason, "
         f"created_at) VALUES ('e', '{U}', 2026, 'reserved', 10, 'reserve', 'jiaxing-ai-plus-2025', 'r', '2026-01-01')")
    upgrade(fresh_url)
    balances, postings = _sql(fresh_url, "SELECT programme_id, reserved, granted FROM quota_balance",
                              "SELECT programme_id FROM ledger_posting")
    assert [tuple(r) for r in balances] == [("default", 10, 5)] and [tuple(r) for r in postings] == [("default",)]
    # Another programme's row for the same enterprise-year sits beside it, and goes on downgrade.
    _sql(fresh_url, f"INSERT INTO quota_balance (enterprise_uscc, year, programme_id, cap, cap_basis, reserved, "
                    f"granted, policy_id, updated_at) VALUES ('{U}', 2026, 'tongxiang-compute-2026', 50, "
                    f"'standard', 0, 0, 'tongxiang-compute-2026', '2026-01-01')")
    downgrade(fresh_url, "0017")
    (rows,) = _sql(fresh_url, "SELECT enterprise_uscc, year, reserved FROM quota_balance")
    assert [tuple(r) for r in rows] == [(U, 2026, 10)]
