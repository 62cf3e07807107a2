"""console sessions kept server-side (issue 15)

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("signed_in_at", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_key.id"], ondelete="CASCADE",
                                name=op.f("fk_console_session_api_key_id_api_key")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_session")),
    )
    op.create_index(op.f("ix_console_session_api_key_id"), "console_session", ["api_key_id"])
    op.create_index(op.f("ix_console_session_seen_at"), "console_session", ["seen_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_session_seen_at"), table_name="console_session")
    op.drop_index(op.f("ix_console_session_api_key_id"), table_name="console_session")
    op.drop_table("console_session")
