"""The authorisation's look-ups stay index look-ups however many redemptions a provider holds.

A long-lived prepared statement ends up with a generic plan, made whatever the table held when
it was planned — at a fresh start, nothing. The authorisation's read (api/hotread.py
hold_with_key) asks whether the provider used the reference; with the invoice index covering
every redemption, such a plan walked all the provider's uncaptured redemptions (none has an
invoice yet) and filtered them by reference: the hold slowed down with every hold before it.
Migration 0020 made the invoice index partial; its upgrade and downgrade are checked here on
both databases.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from api.hotread import _Plan, hold_with_key, quota_params
from bench.common import libpq
from billing.policy_file import load_policy
from kernel.keys import key_select


def _index_scans(node: dict, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if "Index Name" in node:
        found.append((node.get("Relation Name", ""), node["Index Name"]))
    for child in node.get("Plans", []):
        _index_scans(child, found)
    return found


def _generic_plan(url: str, query: str, params: list[object]) -> list[tuple[str, str]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE probe AS {query}")
        try:
            args = sql.SQL(", ").join(sql.Literal(None if p is None else str(p)) for p in params)
            (plan,) = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE probe({})").format(args)).fetchone()
        finally:
            conn.execute("DEALLOCATE probe")
    plan = plan if isinstance(plan, list) else json.loads(plan)
    return _index_scans(plan[0]["Plan"], [])


def test_the_authorisations_read_finds_a_reference_by_the_unique_index(pg):
    from sqlalchemy.dialects import postgresql

    plan = _Plan.of(hold_with_key(key_select()), postgresql.dialect(), 0)
    values = {**quota_params(load_policy(), "91330400MA2B00001X", 2026), "key_id": "k",
              "period": "2026-03", "reference": "order-1"}
    scans = _generic_plan(pg.url, plan.sql.decode(), [values[name] for name in plan.names])
    on_redemption = {index for table, index in scans if table == "redemption"}
    assert on_redemption == {"uq_redemption_provider_id"}, scans


def test_an_invoice_is_still_found_by_its_index(pg):
    scans = _generic_plan(pg.url, "SELECT id FROM redemption WHERE provider_id = $1 AND invoice_no = $2",
                          ["prov-a", "INV-1"])
    assert scans == [("redemption", "ix_redemption_invoice")]


def _invoice_index_where(url: str) -> str:
    """The invoice index's WHERE clause as the database shows it ("" for a full index)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                query = "SELECT sql FROM sqlite_master WHERE name LIKE 'ix_redemption_invoice%'"
            else:
                query = "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'ix_redemption_invoice%'"
            (definition,) = conn.execute(text(query)).scalars().all()  # one index, never two
    finally:
        engine.dispose()
    return definition.partition(" WHERE ")[2].strip("() ")


def test_migration_0020_swaps_the_invoice_index_both_ways_on_both_databases(fresh_url):
    from alembic import command

    from voucher.migrate import alembic_config

    cfg = alembic_config(fresh_url)
    command.upgrade(cfg, "heads")
    assert _invoice_index_where(fresh_url) == "invoice_no IS NOT NULL"
    command.downgrade(cfg, "0019")
    assert _invoice_index_where(fresh_url) == ""
    command.upgrade(cfg, "heads")
    assert _invoice_index_where(fresh_url) == "invoice_no IS NOT NULL"
