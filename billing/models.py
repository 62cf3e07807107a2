"""Invoices, claims, the quota ledger and reconciliation runs."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.policy import DEFAULT_PROGRAMME
from kernel.db import Base, BigId, Month, UTCDateTime, utcnow
from kernel.vocabulary import ClaimStatus
from metering.models import KEY_BETWEEN_PARTIES, ProviderEnterpriseRow

CLAIM_STATUSES = tuple(s.value for s in ClaimStatus)  # kernel/vocabulary.py


def reserved_granted_checks(limit: str, name: str) -> tuple[CheckConstraint, ...]:
    """The constraints of an account that reserves then grants against a `limit` column (a
    quota's cap, the programme's annual budget): neither negative, together within it (`name`)."""
    return (CheckConstraint("reserved >= 0", name="reserved_not_negative"),
            CheckConstraint("granted >= 0", name="granted_not_negative"),
            CheckConstraint(f"reserved + granted <= {limit}", name=name))


class ProviderInvoice(ProviderEnterpriseRow, Base):
    """A provider's monthly invoice (发票) to one enterprise. Immutable once stored."""

    __tablename__ = "provider_invoice"

    invoice_no: Mapped[str] = mapped_column(String(64), sort_order=KEY_BETWEEN_PARTIES)
    period: Mapped[str] = mapped_column(Month)
    amount: Mapped[int] = mapped_column(BigInteger)
    tax_amount: Mapped[int | None] = mapped_column(BigInteger)
    issued_on: Mapped[date] = mapped_column(Date)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("provider_id", "invoice_no"),
        Index("ix_provider_invoice_enterprise_period", "enterprise_uscc", "period"),
    )


class Claim(Base):
    """An enterprise's monthly claim (申领). `payable` is what it reserves or was granted."""

    __tablename__ = "claim"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"))
    period: Mapped[str] = mapped_column(Month)
    status: Mapped[str] = mapped_column(String(16), default=ClaimStatus.SUBMITTED.value)
    other_subsidies: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    base: Mapped[int] = mapped_column(BigInteger, default=0)
    computed: Mapped[int] = mapped_column(BigInteger, default=0)
    payable_before_cap: Mapped[int] = mapped_column(BigInteger, default=0)
    payable: Mapped[int] = mapped_column(BigInteger, default=0)
    clawed_back: Mapped[int] = mapped_column(BigInteger, default=0)
    cap_reached: Mapped[bool] = mapped_column(Boolean, default=False)
    discrepancies: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    risk: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {score, signals} (docs/API.md#risk)
    policy_id: Mapped[str | None] = mapped_column(String(64))
    # The other programmes' figures when several run (docs/POLICY.md#programmes): a list of
    # {programme_id, base, computed, alone, payable, cap_reached}; None with the default alone.
    programmes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    items: Mapped[list[ClaimItem]] = relationship(
        back_populates="claim", order_by="ClaimItem.position", cascade="all, delete-orphan",
        lazy="selectin",
    )

    __table_args__ = (
        Index("ix_claim_period_status", "period", "status"),
        Index("ix_claim_enterprise_period", "enterprise_uscc", "period"),
        CheckConstraint("payable >= 0", name="payable_not_negative"),
    )


class ClaimItem(Base):
    __tablename__ = "claim_item"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    claim_id: Mapped[int] = mapped_column(ForeignKey("claim.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    provider_id: Mapped[str] = mapped_column(ForeignKey("provider.id"))
    invoice_no: Mapped[str] = mapped_column(String(64))
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    invoice_amount: Mapped[int | None] = mapped_column(BigInteger)
    metered: Mapped[int | None] = mapped_column(BigInteger)
    base: Mapped[int] = mapped_column(BigInteger, default=0)
    discrepancies: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)

    claim: Mapped[Claim] = relationship(back_populates="items")

    __table_args__ = (Index("ix_claim_item_invoice", "provider_id", "invoice_no"),)


class QuotaBalance(Base):
    """Derived balance of one programme-enterprise-year, kept in step with the postings.

    The CHECK constraints make the database itself refuse a write that would push
    reserved + granted past the cap, whatever the application computed.
    """

    __tablename__ = "quota_balance"

    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Whose quota this is (docs/POLICY.md#programmes): DEFAULT_PROGRAMME, or another programme's id.
    programme_id: Mapped[str] = mapped_column(String(64), primary_key=True, default=DEFAULT_PROGRAMME)
    cap: Mapped[int] = mapped_column(BigInteger)
    cap_basis: Mapped[str] = mapped_column(String(32))
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    granted: Mapped[int] = mapped_column(BigInteger, default=0)
    policy_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = reserved_granted_checks("cap", "within_cap")


class LedgerPosting(Base):
    """One leg of a double-entry transfer; the legs of an `entry_id` sum to zero. Append-only."""

    __tablename__ = "ledger_posting"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(40), index=True)
    enterprise_uscc: Mapped[str] = mapped_column(ForeignKey("enterprise.uscc"))
    year: Mapped[int] = mapped_column(Integer)
    account: Mapped[str] = mapped_column(String(16))  # cap_source | available | reserved | granted
    amount: Mapped[int] = mapped_column(BigInteger)  # signed fen
    kind: Mapped[str] = mapped_column(String(16))  # open | cap_change | reserve | release | grant | clawback
    claim_id: Mapped[int | None] = mapped_column(ForeignKey("claim.id"))
    # The redemption whose hold this moves (hold / hold_void / hold_post; docs/ARCHITECTURE.md#rule-homes).
    redemption_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    policy_id: Mapped[str] = mapped_column(String(64))
    programme_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_PROGRAMME)  # whose quota it moves
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_ledger_posting_enterprise_year", "enterprise_uscc", "year"),)


class Reconciliation(Base):
    __tablename__ = "reconciliation"

    period: Mapped[str] = mapped_column(Month, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    runs: Mapped[int] = mapped_column(Integer, default=0)
    policy_id: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ClaimAdjustment(Base):
    """A change to an approved claim after the fact (a clawback), shown in the report."""

    __tablename__ = "claim_adjustment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    claim_id: Mapped[int] = mapped_column(ForeignKey("claim.id"), index=True)
    period: Mapped[str] = mapped_column(Month, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)  # fen, negative for a clawback
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
