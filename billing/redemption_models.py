"""Redemptions at the provider (核销) and the quarterly settlement batches (docs/API.md#redemptions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import text

from kernel.db import Base, BigId, Month, UTCDateTime, utcnow
from kernel.vocabulary import RedemptionStatus, SettlementStatus
from metering.models import KEY_BETWEEN_PARTIES, ProviderEnterpriseRow

_HAS_INVOICE = text("invoice_no IS NOT NULL")


class Redemption(ProviderEnterpriseRow, Base):
    """A provider's redemption of an enterprise's subsidy: a hold on the quota (`held`, the
    pending leg of a two-phase transfer in the ledger) that is captured, voided or expires,
    then settled in a quarterly batch (posted to granted)."""

    __tablename__ = "redemption"

    reference: Mapped[str] = mapped_column(String(128), sort_order=KEY_BETWEEN_PARTIES)
    period: Mapped[str] = mapped_column(Month)
    year: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=RedemptionStatus.AUTHORIZED.value)
    list_amount: Mapped[int] = mapped_column(BigInteger)
    requested: Mapped[int] = mapped_column(BigInteger)  # round_half_up(list_amount × rate), before the quota cut
    subsidy: Mapped[int] = mapped_column(BigInteger)  # what it holds (authorised / captured) or was granted
    held: Mapped[int] = mapped_column(BigInteger)  # what it holds on the quota now (0 once released or settled)
    invoice_no: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[int | None] = mapped_column(BigInteger)  # the captured amount (the invoice's, in full)
    discrepancies: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    risk: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {score, signals} (docs/API.md#risk)
    policy_id: Mapped[str] = mapped_column(String(64))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    settlement_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_batch.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("provider_id", "reference"),
        Index("ix_redemption_enterprise_year", "enterprise_uscc", "year"),
        Index("ix_redemption_period_status", "period", "status"),
        Index("ix_redemption_status_expires", "status", "expires_at"),
        # Only captured redemptions carry an invoice: the index holds those alone, so no plan can
        # take it for the (provider, reference) look-up and walk every uncaptured hold
        # (migration 0020).
        Index("ix_redemption_invoice", "provider_id", "invoice_no", postgresql_where=_HAS_INVOICE,
              sqlite_where=_HAS_INVOICE),
        CheckConstraint("held >= 0 AND held <= subsidy", name="held_within_subsidy"),
        CheckConstraint("amount IS NULL OR amount <= list_amount", name="amount_within_list"),
    )


class SettlementBatch(Base):
    """One provider's quarter of captured, clean redemptions, approved by finance."""

    __tablename__ = "settlement_batch"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("provider.id"))
    quarter: Mapped[str] = mapped_column(String(6))  # 2026Q1
    status: Mapped[str] = mapped_column(String(16), default=SettlementStatus.PENDING.value)
    redemptions: Mapped[int] = mapped_column(BigInteger, default=0)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)  # Σ captured amounts, fen
    subsidy: Mapped[int] = mapped_column(BigInteger, default=0)  # Σ subsidies: what the treasury pays
    policy_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (UniqueConstraint("provider_id", "quarter"),)
