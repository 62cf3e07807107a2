"""redemptions at the provider (核销): holds, captures, quarterly settlement batches

Issue 16. `redemption` (a hold on the quota, captured, voided or expired, then settled),
`settlement_batch` (one provider's quarter) and `ledger_posting.redemption_id` (the hold's
postings: hold / hold_void / hold_post, docs/ARCHITECTURE.md#rule-homes).

Revision ID: 0014
Revises: 0012
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = "0014"
down_revision = "0012"  # the billing tables with canonical USCCs
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = kernel.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "settlement_batch",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("provider_id", sa.String(length=64), sa.ForeignKey("provider.id", name=op.f("fk_settlement_batch_provider_id_provider")), nullable=False),
        sa.Column("quarter", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("redemptions", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("subsidy", sa.BigInteger(), nullable=False),
        sa.Column("policy_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("approved_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_batch")),
        sa.UniqueConstraint("provider_id", "quarter", name=op.f("uq_settlement_batch_provider_id")),
    )
    op.create_table(
        "redemption",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("provider_id", sa.String(length=64), sa.ForeignKey("provider.id", name=op.f("fk_redemption_provider_id_provider")), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=False),
        sa.Column("enterprise_uscc", sa.String(length=18), sa.ForeignKey("enterprise.uscc", name=op.f("fk_redemption_enterprise_uscc_enterprise")), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("year", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("list_amount", sa.BigInteger(), nullable=False),
        sa.Column("requested", sa.BigInteger(), nullable=False),
        sa.Column("subsidy", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("invoice_no", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("discrepancies", sa.JSON(), nullable=False),
        sa.Column("policy_id", sa.String(length=64), nullable=False),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("settlement_id", BIGID, sa.ForeignKey("settlement_batch.id", name=op.f("fk_redemption_settlement_id_settlement_batch")), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("captured_at", TS, nullable=True),
        sa.Column("reconciled_at", TS, nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("released_at", TS, nullable=True),
        sa.Column("settled_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redemption")),
        sa.UniqueConstraint("provider_id", "reference", name=op.f("uq_redemption_provider_id")),
        sa.CheckConstraint("held >= 0 AND held <= subsidy", name=op.f("ck_redemption_held_within_subsidy")),
        sa.CheckConstraint("amount IS NULL OR amount <= list_amount", name=op.f("ck_redemption_amount_within_list")),
    )
    op.create_index("ix_redemption_enterprise_year", "redemption", ["enterprise_uscc", "year"])
    op.create_index("ix_redemption_period_status", "redemption", ["period", "status"])
    op.create_index("ix_redemption_status_expires", "redemption", ["status", "expires_at"])
    op.create_index("ix_redemption_invoice", "redemption", ["provider_id", "invoice_no"])
    with op.batch_alter_table("ledger_posting") as batch:
        batch.add_column(sa.Column("redemption_id", sa.BigInteger(), nullable=True))
        batch.create_index("ix_ledger_posting_redemption_id", ["redemption_id"])


def downgrade() -> None:
    with op.batch_alter_table("ledger_posting") as batch:
        batch.drop_index("ix_ledger_posting_redemption_id")
        batch.drop_column("redemption_id")
    op.drop_table("redemption")
    op.drop_table("settlement_batch")
