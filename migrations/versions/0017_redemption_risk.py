"""redemption risk: the captured redemption's {score, signals}, as a claim's (docs/API.md#risk)

Revision ID: 0017
Revises: 0014, 0016
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = ("0014", "0016")  # the redemption table and the risk registries it is assessed against
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("redemption") as t:
        t.add_column(sa.Column("risk", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("redemption") as t:
        t.drop_column("risk")
