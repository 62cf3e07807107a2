"""events and webhooks: the event outbox, webhook endpoints and their deliveries

Revision ID: 0013
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = "0013"
down_revision = "0006"  # the audit chain the events are derived from
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=128), nullable=False),
        sa.Column("enterprise_uscc", sa.String(length=18), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
    )
    op.create_index("ix_event_type", "event", ["type"])
    op.create_index("ix_event_object", "event", ["object_type", "object_id"])
    op.create_index("ix_event_enterprise_uscc", "event", ["enterprise_uscc"])
    op.create_index("ix_event_provider_id", "event", ["provider_id"])
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=255), nullable=True),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoint")),
    )
    op.create_index("ix_webhook_endpoint_owner", "webhook_endpoint", ["role", "subject"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("endpoint_id", BIGID, nullable=False),
        sa.Column("event_id", BIGID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("give_up_at", kernel.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("leased_by", sa.String(length=128), nullable=True),
        sa.Column("last_attempt_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", kernel.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoint.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_delivery_endpoint_id_webhook_endpoint")),
        sa.ForeignKeyConstraint(["event_id"], ["event.id"],
                                name=op.f("fk_webhook_delivery_event_id_event")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
        sa.UniqueConstraint("endpoint_id", "event_id", name=op.f("uq_webhook_delivery_endpoint_id")),
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("webhook_endpoint")
    op.drop_table("event")
