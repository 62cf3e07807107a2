"""redemption invoice index: captured redemptions only

The index on (provider_id, invoice_no) covered every redemption, and an authorised one has no
invoice yet, so a generic plan made while the table was empty could take it for the
authorisation's (provider_id, reference) look-up and filter every uncaptured hold of the
provider by reference — each hold slower than the one before (docs/BENCHMARKS.md, redemption
authorisations). Partial now: only rows with an invoice, which are all the invoice look-ups
(capture's invoice_already_redeemed, reconciliation) ever find.

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

HAS_INVOICE = sa.text("invoice_no IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_redemption_invoice", table_name="redemption")
    op.create_index("ix_redemption_invoice", "redemption", ["provider_id", "invoice_no"],
                    postgresql_where=HAS_INVOICE, sqlite_where=HAS_INVOICE)


def downgrade() -> None:
    op.drop_index("ix_redemption_invoice", table_name="redemption")
    op.create_index("ix_redemption_invoice", "redemption", ["provider_id", "invoice_no"])
