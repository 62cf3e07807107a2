"""shared token buckets for rate limits (issue 15)

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Used on PostgreSQL when no Redis is configured (api/buckets.py); empty elsewhere.
    op.create_table(
        "rate_bucket",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_bucket")),
    )
    op.create_index(op.f("ix_rate_bucket_updated_at"), "rate_bucket", ["updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_rate_bucket_updated_at"), table_name="rate_bucket")
    op.drop_table("rate_bucket")
