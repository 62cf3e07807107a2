"""Migration 0010: the statement's payment columns renamed from the vendor (`stripe_*`) to the
concept (`payment_*`), with the data kept, and back again on downgrade (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from voucher.migrate import downgrade, upgrade

OLD = ["stripe_customer_id", "stripe_invoice_id", "stripe_status"]
NEW = ["payment_customer_id", "payment_invoice_id", "payment_status"]




def _columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("statement")}
    finally:
        engine.dispose()


def _row(url: str, cols: list[str]) -> tuple:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text(f"SELECT {', '.join(cols)} FROM statement")).one())
    finally:
        engine.dispose()


def test_0010_renames_the_payment_columns_and_keeps_their_values(fresh_url):
    upgrade(fresh_url, "0004")
    engine = create_engine(fresh_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO enterprise (uscc, name, eligible, created_at, updated_at) "
                          "VALUES ('91330402MA2B7K3X1X', 'E', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO statement (enterprise_uscc, period, status, spend, subsidy, currency, "
            "stripe_customer_id, stripe_invoice_id, stripe_status, attempts, created_at, updated_at) "
            "VALUES ('91330402MA2B7K3X1X', '2026-10', 'finalized', 100, 50, 'CNY', 'cus_1', 'in_1', "
            "'open', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    engine.dispose()
    upgrade(fresh_url, "0010")
    cols = _columns(fresh_url)
    assert set(NEW) <= cols and not set(OLD) & cols
    assert _row(fresh_url, NEW) == ("cus_1", "in_1", "open")
    downgrade(fresh_url, "0004")
    cols = _columns(fresh_url)
    assert set(OLD) <= cols and not set(NEW) & cols
    assert _row(fresh_url, OLD) == ("cus_1", "in_1", "open")
    upgrade(fresh_url)  # every head, as `voucher db upgrade` does
    assert set(NEW) <= _columns(fresh_url)
