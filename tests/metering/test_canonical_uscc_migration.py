"""Migration 0012 (docs/API.md#uscc): rows that spell a USCC otherwise are reported; without a
collision they are rewritten to the canonical form, with one it refuses and changes nothing
(SQLite and PostgreSQL; PostgreSQL's 18-character columns only ever held other cases)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.factories import make_uscc
from voucher.migrate import upgrade

A, B = make_uscc(501), make_uscc(502)




def _before_0012(url: str) -> None:
    for head in ("0002", "0003", "0005", "0006", "0009", "0010"):
        upgrade(url, head)


def _plant(url: str, enterprises: list[str], filings=(), keys=(), balances=()) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for code in enterprises:
            conn.execute(text("INSERT INTO enterprise (uscc, name, eligible, created_at, updated_at) "
                              "VALUES (:u, 'E', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"u": code})
        for n, code in enumerate(filings):
            conn.execute(text("INSERT INTO model_filing (enterprise_uscc, filing_no, model_name, "
                              "obtained_on, created_at) VALUES (:u, :f, 'm', '2026-03-01', "
                              "CURRENT_TIMESTAMP)"), {"u": code, "f": f"ZJ-{n}"})
        for n, (role, subject) in enumerate(keys):
            conn.execute(text("INSERT INTO api_key (id, secret_hash, role, subject, created_at) "
                              "VALUES (:i, 'h', :r, :s, CURRENT_TIMESTAMP)"),
                         {"i": f"key{n}", "r": role, "s": subject})
        for code in balances:
            conn.execute(text("INSERT INTO quota_balance (enterprise_uscc, year, cap, cap_basis, "
                              "reserved, granted, policy_id, updated_at) VALUES (:u, 2026, 100, "
                              "'standard', 10, 0, 'p', CURRENT_TIMESTAMP)"), {"u": code})
    engine.dispose()


def _column(url: str, sql: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(text(sql)))
    finally:
        engine.dispose()


def test_non_canonical_rows_without_a_collision_are_reported_and_rewritten(fresh_url, capsys):
    _before_0012(fresh_url)
    sqlite = fresh_url.startswith("sqlite")
    b_written = f"{B[:8]}-{B[8:]}".lower() if sqlite else B.lower()  # PG held 18 characters
    _plant(fresh_url, [A, b_written], filings=[b_written],
           keys=[("enterprise", b_written), ("provider", "prov-a"), ("enterprise", A)],
           balances=[b_written])
    upgrade(fresh_url)
    err = capsys.readouterr().err
    assert f"enterprise.uscc {b_written!r} -> {B!r}" in err
    assert f"api_key.subject {b_written!r} -> {B!r}" in err and "no rows merged" in err
    assert _column(fresh_url, "SELECT uscc FROM enterprise") == sorted([A, B])
    assert _column(fresh_url, "SELECT enterprise_uscc FROM model_filing") == [B]
    assert _column(fresh_url, "SELECT enterprise_uscc FROM quota_balance") == [B]
    assert _column(fresh_url, "SELECT subject FROM api_key") == sorted([A, B, "prov-a"])


def test_two_spellings_of_one_code_stop_the_migration_and_change_nothing(fresh_url, capsys):
    _before_0012(fresh_url)
    other = A.lower()
    _plant(fresh_url, [A, other, B], balances=[A, other])
    with pytest.raises(RuntimeError, match="1 USCC collision|2 USCC collision"):
        upgrade(fresh_url)
    err = capsys.readouterr().err
    assert f"enterprise: {sorted([A, other])!r} are all {A!r}" in err
    assert f"quota_balance: {sorted([A, other])!r} are all {A!r} (year=2026)" in err
    assert "Nothing was changed" in err and "voucher db upgrade" in err
    assert _column(fresh_url, "SELECT uscc FROM enterprise") == sorted([A, other, B])
    # 0012 did not run (migrations on other branches of the history may have run beside it).
    versions = _column(fresh_url, "SELECT version_num FROM alembic_version")
    assert "0012" not in versions and "0010" in versions


def test_a_canonical_database_passes_silently(fresh_url, capsys):
    _before_0012(fresh_url)
    _plant(fresh_url, [A, B], keys=[("enterprise", A)])
    upgrade(fresh_url)
    assert "[0012 canonical USCC]" not in capsys.readouterr().err  # its report lines, none
    assert _column(fresh_url, "SELECT uscc FROM enterprise") == sorted([A, B])
