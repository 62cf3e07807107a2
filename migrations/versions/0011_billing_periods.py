"""billing_period: a period's state (open / closed) and the row every run and decision locks first

Issue 14 (defects 6 and 7, period lifecycle): the row is created open by the first run,
decision, claim, invoice or void of a period (kernel/billing_periods.py) and closed by
finance or by the daily reconcile job after the policy's close_after_days. Periods that
already have a reconciliation get their row here, open.

Revision ID: 0011
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_period",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_billing_period")),
    )
    op.execute("INSERT INTO billing_period (period, state, created_at) "
               "SELECT period, 'open', first_run_at FROM reconciliation")


def downgrade() -> None:
    op.drop_table("billing_period")
