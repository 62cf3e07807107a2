"""canonical USCC: find rows that spell a USCC otherwise, report them, refuse on a collision

Before v2 a USCC was stored as written, so `91330402-MA2B7K3X13` and `91330402MA2B7K3X13`
could be two enterprises with two caps (SQLite; PostgreSQL's 18-character columns refused
the longer spellings). This migration looks at every column that holds a USCC and reports
each value that is not canonical (kernel.uscc.canonical_uscc: separators removed, upper case).

- If two stored values would become one — two enterprises, two balance rows of one year, two
  statements of one month — it changes nothing, prints every such group with what to do, and
  fails, so `voucher db upgrade` stops before anything is merged behind anyone's back.
- Otherwise it rewrites each reported value to its canonical form (docs/API.md#uscc): a
  non-canonical enterprise row is copied under its canonical code, its rows in other tables
  are moved to it, and the old row is deleted. The audit trail is never rewritten (it is
  hash-chained); it keeps the spelling it recorded.

Revision ID: 0012
Revises: 0002, 0010
"""
from __future__ import annotations

import sys
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from kernel.uscc import canonical_uscc

revision = "0012"
down_revision = ("0002", "0010")  # billing tables (0002) and statements as renamed in 0010
branch_labels = None
depends_on = None

# (table, USCC column, the other columns that make a row unique with it)
COLUMNS = [
    ("enterprise", "uscc", ()),
    ("model_filing", "enterprise_uscc", ()),
    ("usage_record", "enterprise_uscc", ()),
    ("provider_invoice", "enterprise_uscc", ()),
    ("claim", "enterprise_uscc", ()),
    ("quota_balance", "enterprise_uscc", ("year",)),
    ("ledger_posting", "enterprise_uscc", ()),
    ("statement", "enterprise_uscc", ("period",)),
    ("api_key", "subject", ()),  # enterprise keys only; provider ids are lower-case already
]

WHAT_TO_DO = """\
Nothing was changed. Each group above is one legal entity stored more than once. For each:
decide which row is the entity's (usually the one holding its claims and grants), move the
other rows' usage records, invoices, claims, filings and keys to it or void them, delete the
duplicate enterprise (finance: the ledger must verify clean afterwards: `voucher ledger verify`),
then run `voucher db upgrade` again. Report the case to the finance bureau: one entity may
have been paid more than one year's cap."""


def _report(lines: list[str]) -> None:
    for line in lines:
        print(f"[0012 canonical USCC] {line}", file=sys.stderr)


def _values(conn, table: str, column: str, keys: tuple[str, ...]) -> list[tuple]:
    t = sa.table(table, sa.column(column), sa.column("role"), *(sa.column(k) for k in keys))
    where = [t.c[column].is_not(None)]
    if table == "api_key":
        where.append(t.c.role == "enterprise")
    stmt = sa.select(t.c[column], *(t.c[k] for k in keys)).where(*where).distinct()
    return [tuple(r) for r in conn.execute(stmt)]


def find(conn) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(report lines for non-canonical values, collision lines, {table: [values to rewrite]})."""
    noncanonical: list[str] = []
    collisions: list[str] = []
    rewrite: dict[str, list[str]] = {}
    for table, column, keys in COLUMNS:
        groups: dict[tuple, list[str]] = defaultdict(list)
        for value, *rest in _values(conn, table, column, keys):
            groups[(canonical_uscc(value), *rest)].append(value)
        odd = sorted({v for vs in groups.values() for v in vs if v != canonical_uscc(v)})
        if odd:
            rewrite[table] = odd
            noncanonical += [f"{table}.{column} {v!r} -> {canonical_uscc(v)!r}" for v in odd]
        for key, values in sorted(groups.items()):
            if len(values) > 1:
                where = ", ".join(f"{k}={v}" for k, v in zip(keys, key[1:], strict=True))
                collisions.append(f"{table}: {sorted(values)!r} are all {key[0]!r}"
                                  + (f" ({where})" if where else ""))
    return noncanonical, collisions, rewrite


def upgrade() -> None:
    conn = op.get_bind()
    noncanonical, collisions, rewrite = find(conn)
    if not noncanonical:
        return
    _report([f"{len(noncanonical)} stored USCC value(s) are not canonical:", *noncanonical])
    if collisions:
        _report(["they would collide:", *collisions, *WHAT_TO_DO.splitlines()])
        raise RuntimeError(
            f"0012: {len(collisions)} USCC collision(s) need a decision; nothing was changed "
            "(see the lines above)")
    # Enterprises first: a copy under the canonical code, so the other tables' foreign keys
    # always point at an existing row; the old row goes once nothing refers to it.
    ent = sa.table("enterprise", sa.column("uscc"))
    old_rows = rewrite.get("enterprise", [])
    if old_rows:
        cols = [c["name"] for c in sa.inspect(conn).get_columns("enterprise")]
        full = sa.table("enterprise", *(sa.column(c) for c in cols))
        for old in old_rows:
            row = conn.execute(sa.select(full).where(full.c.uscc == old)).mappings().one()
            conn.execute(sa.insert(full).values({**row, "uscc": canonical_uscc(old)}))
    for table, column, _keys in COLUMNS[1:]:
        t = sa.table(table, sa.column(column), sa.column("role"))
        for old in rewrite.get(table, []):
            where = [t.c[column] == old] + ([t.c.role == "enterprise"] if table == "api_key" else [])
            conn.execute(sa.update(t).where(*where).values({column: canonical_uscc(old)}))
    for old in old_rows:
        conn.execute(sa.delete(ent).where(ent.c.uscc == old))
    _report([f"rewritten to the canonical form: {len(noncanonical)} value(s); no rows merged"])


def downgrade() -> None:
    pass  # canonical codes are valid under every earlier revision; the old spellings are gone
