"""risk review: contracts, price catalogue, related parties, provider USCC and legal
representative, enterprise legal representative, claim risk (docs/API.md#risk)

Revision ID: 0016
Revises: 0012
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = "0016"
down_revision = "0012"  # providers, enterprises and claims as the canonical-USCC migration left them
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, kernel.db.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("provider") as t:
        t.add_column(sa.Column("uscc", sa.String(length=18), nullable=True))
        t.add_column(sa.Column("legal_representative", sa.String(length=100), nullable=True))
    with op.batch_alter_table("enterprise") as t:
        t.add_column(sa.Column("legal_representative", sa.String(length=100), nullable=True))
    with op.batch_alter_table("claim") as t:
        t.add_column(sa.Column("risk", sa.JSON(), nullable=True))
    op.create_table(
        "contract",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("provider_id", sa.String(length=63), nullable=False),
        sa.Column("enterprise_uscc", sa.String(length=18), nullable=False),
        sa.Column("contract_no", sa.String(length=100), nullable=False),
        sa.Column("signed_on", sa.Date(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=False),
        _when("starts_at"), _when("ends_at"), _when("confirmed_at", True), _when("created_at"),
        sa.ForeignKeyConstraint(["provider_id"], ["provider.id"], name=op.f("fk_contract_provider_id_provider")),
        sa.ForeignKeyConstraint(["enterprise_uscc"], ["enterprise.uscc"],
                                name=op.f("fk_contract_enterprise_uscc_enterprise")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract")),
        sa.UniqueConstraint("provider_id", "contract_no", name=op.f("uq_contract_provider_id")),
    )
    op.create_index("ix_contract_provider_enterprise", "contract", ["provider_id", "enterprise_uscc"])
    op.create_table(
        "provider_price",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("provider_id", sa.String(length=63), nullable=False),
        sa.Column("resource", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        _when("starts_at"), _when("ends_at", True), _when("created_at"),
        sa.ForeignKeyConstraint(["provider_id"], ["provider.id"],
                                name=op.f("fk_provider_price_provider_id_provider")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_price")),
        sa.UniqueConstraint("provider_id", "resource", "unit", "effective_from",
                            name=op.f("uq_provider_price_provider_id")),
    )
    op.create_table(
        "related_party",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("provider_id", sa.String(length=63), nullable=False),
        sa.Column("enterprise_uscc", sa.String(length=18), nullable=False),
        sa.Column("relation", sa.String(length=200), nullable=False),
        _when("created_at"),
        sa.ForeignKeyConstraint(["provider_id"], ["provider.id"],
                                name=op.f("fk_related_party_provider_id_provider")),
        sa.ForeignKeyConstraint(["enterprise_uscc"], ["enterprise.uscc"],
                                name=op.f("fk_related_party_enterprise_uscc_enterprise")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_related_party")),
        sa.UniqueConstraint("provider_id", "enterprise_uscc", name=op.f("uq_related_party_provider_id")),
    )


def downgrade() -> None:
    op.drop_table("related_party")
    op.drop_table("provider_price")
    op.drop_index("ix_contract_provider_enterprise", table_name="contract")
    op.drop_table("contract")
    with op.batch_alter_table("claim") as t:
        t.drop_column("risk")
    with op.batch_alter_table("enterprise") as t:
        t.drop_column("legal_representative")
    with op.batch_alter_table("provider") as t:
        t.drop_column("uscc")
        t.drop_column("legal_representative")
