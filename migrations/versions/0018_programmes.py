"""programmes: quota balances and postings per programme, per-programme claim figures

Several programmes may run at once (docs/POLICY.md#programmes): the quota balance's key becomes
(enterprise, year, programme), every posting names the programme whose quota it moves, and a
claim keeps the other programmes' figures beside its own. Rows written before belong to the
default programme (the Jiaxing one, `jiaxing-ai-plus-2025`, in the shipped configuration), whose
rows are kept under the key `default` whatever its policy file's id, so that a new version of it
keeps the year's quota (docs/POLICY.md#programmes). Merges the heads left by earlier branches.

Revision ID: 0018
Revises: 0003, 0005, 0009, 0013, 0015, 0017
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = ("0003", "0005", "0009", "0013", "0015", "0017")
branch_labels = None
depends_on = None

DEFAULT_PROGRAMME = "default"  # billing/policy.py DEFAULT_PROGRAMME, as of this revision


def upgrade() -> None:
    with op.batch_alter_table("quota_balance") as t:
        t.add_column(sa.Column("programme_id", sa.String(length=64), nullable=False,
                               server_default=DEFAULT_PROGRAMME))
        t.drop_constraint("pk_quota_balance", type_="primary")
        t.create_primary_key("pk_quota_balance", ["enterprise_uscc", "year", "programme_id"])
    with op.batch_alter_table("quota_balance") as t:
        t.alter_column("programme_id", server_default=None)
    with op.batch_alter_table("ledger_posting") as t:
        t.add_column(sa.Column("programme_id", sa.String(length=64), nullable=False,
                               server_default=DEFAULT_PROGRAMME))
    with op.batch_alter_table("ledger_posting") as t:
        t.alter_column("programme_id", server_default=None)
    with op.batch_alter_table("claim") as t:
        t.add_column(sa.Column("programmes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("claim") as t:
        t.drop_column("programmes")
    with op.batch_alter_table("ledger_posting") as t:
        t.drop_column("programme_id")
    op.execute(sa.text("DELETE FROM quota_balance WHERE programme_id <> :p").bindparams(p=DEFAULT_PROGRAMME))
    with op.batch_alter_table("quota_balance") as t:
        t.drop_constraint("pk_quota_balance", type_="primary")
        t.create_primary_key("pk_quota_balance", ["enterprise_uscc", "year"])
        t.drop_column("programme_id")
