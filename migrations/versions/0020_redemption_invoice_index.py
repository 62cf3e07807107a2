"""redemption invoice index: captured redemptions only

The index on (provider_id, invoice_no) covered every redemption, and an authorised one has no
invoice yet, so a generic plan made while the table was empty could take it for the
authorisation's (provider_id, reference) look-up and filter every uncaptured hold of the
provider by reference — each hold slower than the one before (docs/BENCHMARKS.md, redemption
authorisations). Partial now: only rows with an invoice, which are all the invoice look-up
(capture's invoice_already_redeemed check) ever finds.

On PostgreSQL the new index is built CONCURRENTLY beside the old one, the old one dropped the
same way and the new one renamed, so a live deployment keeps authorising while it upgrades
(docs/OPERATIONS.md#upgrades); that part runs outside the upgrade's transaction.

Revision ID: 0020
Revises: 0019
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

NAME, TABLE, COLUMNS = "ix_redemption_invoice", "redemption", ["provider_id", "invoice_no"]
HAS_INVOICE = sa.text("invoice_no IS NOT NULL")


def _swap(where: sa.TextClause | None) -> None:
    """Replace the index by one with `where` (None: every row)."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(NAME, table_name=TABLE)
        op.create_index(NAME, TABLE, COLUMNS, sqlite_where=where)
        return
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}_new")  # left by an interrupted run
        op.create_index(f"{NAME}_new", TABLE, COLUMNS, postgresql_where=where, postgresql_concurrently=True)
        op.drop_index(NAME, table_name=TABLE, postgresql_concurrently=True)
        op.execute(f"ALTER INDEX {NAME}_new RENAME TO {NAME}")


def upgrade() -> None:
    _swap(HAS_INVOICE)


def downgrade() -> None:
    _swap(None)
