"""Registry (providers, enterprises, model filings) and usage records."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base, BigId, MicroDecimal, Month, Timestamps, UTCDateTime, utcnow

PROVIDER_KINDS = ("intelligent_computing", "supercomputing")


class Provider(Timestamps, Base):
    __tablename__ = "provider"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    county: Mapped[str | None] = mapped_column(String(64))
    listed_from: Mapped[date | None] = mapped_column(Date)
    listed_until: Mapped[date | None] = mapped_column(Date)
    # Risk review (docs/API.md#risk): who the provider is, to tell related-party purchases.
    uscc: Mapped[str | None] = mapped_column(String(18))
    legal_representative: Mapped[str | None] = mapped_column(String(100))


class Enterprise(Timestamps, Base):
    __tablename__ = "enterprise"

    uscc: Mapped[str] = mapped_column(String(18), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    county: Mapped[str | None] = mapped_column(String(64))
    eligible: Mapped[bool] = mapped_column(Boolean, default=True)
    legal_representative: Mapped[str | None] = mapped_column(String(100))


class ModelFiling(Base):
    """A generative-AI model filing (生成式人工智能模型备案): raises the cap in its year."""

    __tablename__ = "model_filing"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"), index=True)
    filing_no: Mapped[str] = mapped_column(String(100), unique=True)
    model_name: Mapped[str] = mapped_column(String(200))
    obtained_on: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


KEY_BETWEEN_PARTIES = -15  # sort_order of a table's own key between provider_id and enterprise_uscc


class ProviderEnterpriseRow:
    """Mixin: a row between a provider and an enterprise, its first columns `id`, `provider_id`
    and `enterprise_uscc` in that order. A table whose own key stands between the two parties
    (an invoice_no, a record_id) declares it with `sort_order=KEY_BETWEEN_PARTIES`."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, sort_order=-30)
    provider_id: Mapped[str] = mapped_column(ForeignKey("provider.id"), sort_order=-20)
    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"), sort_order=-10)


class UsageRecord(ProviderEnterpriseRow, Base):
    """One metered usage record. Never updated except to void it (status, voided_*)."""

    __tablename__ = "usage_record"

    record_id: Mapped[str] = mapped_column(String(200), sort_order=KEY_BETWEEN_PARTIES)
    resource: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[Decimal] = mapped_column(MicroDecimal)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    period: Mapped[str] = mapped_column(Month)  # YYYY-MM of ended_at in Asia/Shanghai
    amount: Mapped[int] = mapped_column(BigInteger)  # fen
    currency: Mapped[str] = mapped_column(String(3))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8), default="active")
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    void_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("provider_id", "record_id"),
        # Reconciliation sums by (period, provider, enterprise); listings filter the same way.
        Index("ix_usage_record_period_provider_enterprise", "period", "provider_id", "enterprise_uscc"),
        Index("ix_usage_record_enterprise_period", "enterprise_uscc", "period"),
    )
