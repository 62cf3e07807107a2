"""programme budget: reserved and granted of every enterprise in a year, against the annual budget

Revision ID: 0015
Revises: 0011
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = "0015"
down_revision = "0011"  # the billing periods, first in the lock order the budget row joins
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "programme_budget",
        sa.Column("programme_id", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("annual", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("granted", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_programme_budget_reserved_not_negative")),
        sa.CheckConstraint("granted >= 0", name=op.f("ck_programme_budget_granted_not_negative")),
        sa.CheckConstraint("reserved + granted <= annual", name=op.f("ck_programme_budget_within_budget")),
        sa.PrimaryKeyConstraint("programme_id", "year", name=op.f("pk_programme_budget")),
    )


def downgrade() -> None:
    op.drop_table("programme_budget")
