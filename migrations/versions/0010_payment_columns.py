"""statement: payment columns named for the concept, not the vendor

stripe_customer_id → payment_customer_id, stripe_invoice_id → payment_invoice_id,
stripe_status → payment_status (issue 13: billing owns the payments port; the Stripe-compatible
client is one back-end of it). Batch mode, so SQLite copies the table; PostgreSQL renames in place.

Revision ID: 0010
Revises: 0004
"""
from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0004"
branch_labels = None
depends_on = None

RENAMES = [
    ("stripe_customer_id", "payment_customer_id"),
    ("stripe_invoice_id", "payment_invoice_id"),
    ("stripe_status", "payment_status"),
]


def upgrade() -> None:
    with op.batch_alter_table("statement", schema=None) as batch_op:
        for old, new in RENAMES:
            batch_op.alter_column(old, new_column_name=new)


def downgrade() -> None:
    with op.batch_alter_table("statement", schema=None) as batch_op:
        for old, new in RENAMES:
            batch_op.alter_column(new, new_column_name=old)
