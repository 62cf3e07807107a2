"""Risk registries (docs/API.md#risk-registries): contracts between a provider and an enterprise,
the providers' price catalogue and the related-party links finance records.

Dates are Shanghai calendar dates, both ends inclusive; each row also keeps them as instants
(`starts_at`, `ends_at` exclusive) so the reconciliation and the ingestion compare them with a
usage record's `ended_at` in SQL without a timezone function (docs/ARCHITECTURE.md#rule-homes).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel import audit, periods
from kernel.db import Base, BigId, UTCDateTime, utcnow
from kernel.errors import Conflict, Invalid, NotFound
from kernel.uscc import canonical_uscc
from metering.models import Enterprise, Provider, ProviderEnterpriseRow


class Contract(ProviderEnterpriseRow, Base):
    """A compute purchase contract, registered by the provider and confirmed by the enterprise."""

    __tablename__ = "contract"

    contract_no: Mapped[str] = mapped_column(String(100))
    signed_on: Mapped[date] = mapped_column(Date)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_until: Mapped[date] = mapped_column(Date)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)  # valid_from 00:00 Shanghai
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the day after valid_until, 00:00 Shanghai
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("provider_id", "contract_no"),
        Index("ix_contract_provider_enterprise", "provider_id", "enterprise_uscc"),
    )


class PriceEntry(Base):
    """A provider's list price for one resource and unit from `effective_from` on (fen per unit).

    `ends_at` is the next entry's start for the same (provider, resource, unit), kept when an
    entry is added, so the price in force at a moment is the one row with starts_at <= t < ends_at.
    """

    __tablename__ = "provider_price"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("provider.id"))
    resource: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(16))
    unit_price: Mapped[int] = mapped_column(BigInteger)  # fen per unit
    effective_from: Mapped[date] = mapped_column(Date)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("provider_id", "resource", "unit", "effective_from"),)


class RelatedParty(ProviderEnterpriseRow, Base):
    """A related-party link between a provider and an enterprise, recorded by finance."""

    __tablename__ = "related_party"

    relation: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("provider_id", "enterprise_uscc"),)


def day_start(d: date) -> datetime:
    """00:00 of a Shanghai calendar date, as an instant."""
    return datetime.combine(d, time.min, periods.zone())


def _provider(session: Session, provider_id: str) -> Provider:
    p = session.get(Provider, provider_id)
    if p is None:
        raise NotFound("unknown_provider", f"Provider {provider_id!r} is not registered", "provider_id")
    return p


def _enterprise(session: Session, uscc: str, param: str = "enterprise_uscc") -> Enterprise:
    e = session.get(Enterprise, canonical_uscc(uscc))
    if e is None:
        raise NotFound("unknown_enterprise", f"Enterprise {uscc} is not registered", param)
    return e


# --- contracts -------------------------------------------------------------------------------

def register_contract(session: Session, provider_id: str, values: dict[str, Any]) -> tuple[Contract, bool]:
    """Register a contract (unconfirmed). The same contract again returns (it, False); the same
    number with other content is Conflict `conflict`. Validity dates inclusive, ≤ the signing
    date's order is not checked: a contract may be signed after it takes effect."""
    _provider(session, provider_id)
    ent = _enterprise(session, values["enterprise_uscc"])
    if values["valid_until"] < values["valid_from"]:
        raise Invalid("invalid_date_range", "valid_until is before valid_from", "valid_until")
    fields = {"enterprise_uscc": ent.uscc, "contract_no": values["contract_no"], "signed_on": values["signed_on"],
              "valid_from": values["valid_from"], "valid_until": values["valid_until"]}
    existing = session.scalars(select(Contract).where(Contract.provider_id == provider_id,
                                                      Contract.contract_no == fields["contract_no"])).first()
    if existing is not None:
        if all(getattr(existing, k) == v for k, v in fields.items()):
            return existing, False
        raise Conflict("conflict", f"Contract {fields['contract_no']!r} is registered with different content",
                       "contract_no")
    c = Contract(provider_id=provider_id, **fields, starts_at=day_start(fields["valid_from"]),
                 ends_at=day_start(fields["valid_until"] + timedelta(days=1)))
    session.add(c)
    session.flush()
    audit.append(session, "contract.registered", "contract", f"ctr_{c.id}",
                 after={"provider_id": provider_id, **fields})
    return c, True


def confirm_contract(session: Session, contract_id: int, uscc: str | None, now: datetime) -> Contract:
    """The enterprise confirms a contract registered with it (again: no change). `uscc`: the
    confirming enterprise (None for finance); another enterprise's contract is NotFound."""
    c = session.get(Contract, contract_id)
    if c is None or (uscc is not None and c.enterprise_uscc != uscc):
        raise NotFound("resource_missing", f"No contract ctr_{contract_id}", "id")
    if c.confirmed_at is None:
        c.confirmed_at = now
        audit.append(session, "contract.confirmed", "contract", f"ctr_{c.id}",
                     after={"confirmed_at": now.isoformat()})
    return c


def confirmed_intervals(session: Session, provider_id: str, usccs: Iterable[str]
                        ) -> dict[str, list[tuple[datetime, datetime]]]:
    """The confirmed contracts' [starts_at, ends_at) per enterprise, for one batch (one query)."""
    usccs = sorted(set(usccs))
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for i in range(0, len(usccs), 900):
        rows = session.execute(select(Contract.enterprise_uscc, Contract.starts_at, Contract.ends_at).where(
            Contract.provider_id == provider_id, Contract.enterprise_uscc.in_(usccs[i:i + 900]),
            Contract.confirmed_at.is_not(None)))
        for u, start, end in rows:
            out.setdefault(u, []).append((start, end))
    return out


def covered(intervals: list[tuple[datetime, datetime]], moment: datetime) -> bool:
    return any(start <= moment < end for start, end in intervals)


def covered_clause(usage_table):
    """SQL: a confirmed contract between the usage's provider and enterprise covers its ended_at."""
    return (select(Contract.id).where(
        Contract.provider_id == usage_table.provider_id, Contract.enterprise_uscc == usage_table.enterprise_uscc,
        Contract.confirmed_at.is_not(None), Contract.starts_at <= usage_table.ended_at,
        Contract.ends_at > usage_table.ended_at).exists())


# --- price catalogue -------------------------------------------------------------------------

def add_price(session: Session, provider_id: str, values: dict[str, Any]) -> tuple[PriceEntry, bool]:
    """Record a list price from `effective_from` on; the same entry again returns (it, False),
    another price for the same day is Conflict `conflict`. Re-chains the key's `ends_at`."""
    _provider(session, provider_id)
    key = (PriceEntry.provider_id == provider_id, PriceEntry.resource == values["resource"],
           PriceEntry.unit == values["unit"])
    rows = list(session.scalars(select(PriceEntry).where(*key).order_by(PriceEntry.effective_from)))
    for r in rows:
        if r.effective_from == values["effective_from"]:
            if r.unit_price == values["unit_price"]:
                return r, False
            raise Conflict("conflict", f"A price for {values['resource']} from {values['effective_from']} "
                                       "is already recorded", "effective_from")
    entry = PriceEntry(provider_id=provider_id, resource=values["resource"], unit=values["unit"],
                       unit_price=values["unit_price"], effective_from=values["effective_from"],
                       starts_at=day_start(values["effective_from"]))
    session.add(entry)
    chain = sorted([*rows, entry], key=lambda r: r.effective_from)
    for a, b in zip(chain, [*chain[1:], None], strict=True):
        a.ends_at = b.starts_at if b is not None else None
    session.flush()
    audit.append(session, "price.recorded", "provider_price", f"prc_{entry.id}",
                 after={"provider_id": provider_id, **values})
    return entry, True


def price_in_force_clause(usage_table):
    """SQL join condition: the catalogue entry in force when the usage ended."""
    return and_(PriceEntry.provider_id == usage_table.provider_id, PriceEntry.resource == usage_table.resource,
                PriceEntry.unit == usage_table.unit, PriceEntry.starts_at <= usage_table.ended_at,
                or_(PriceEntry.ends_at.is_(None), PriceEntry.ends_at > usage_table.ended_at))


# --- related parties -------------------------------------------------------------------------

def add_related_party(session: Session, values: dict[str, Any]) -> tuple[RelatedParty, bool]:
    """Record a related-party link; the same pair again returns (it, False)."""
    _provider(session, values["provider_id"])
    ent = _enterprise(session, values["enterprise_uscc"])
    existing = session.scalars(select(RelatedParty).where(RelatedParty.provider_id == values["provider_id"],
                                                          RelatedParty.enterprise_uscc == ent.uscc)).first()
    if existing is not None:
        return existing, False
    link = RelatedParty(provider_id=values["provider_id"], enterprise_uscc=ent.uscc, relation=values["relation"])
    session.add(link)
    session.flush()
    audit.append(session, "related_party.recorded", "related_party", f"rel_{link.id}",
                 after={"provider_id": link.provider_id, "enterprise_uscc": ent.uscc, "relation": link.relation})
    return link, True
