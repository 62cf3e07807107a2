"""API keys: random, shown once, stored only as a hash, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, String, bindparam, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base, UTCDateTime, utcnow

ROLES = ("finance", "provider", "enterprise")
KEY_PREFIX = "vch"


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    subject: str | None


def _hash(secret: str) -> str:
    # Keys carry 256 random bits, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


_NO_SUCH_KEY = _hash("no such key")


def issue_key(session: Session, role: str, subject: str | None) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned once and never stored."""
    key_id = "key_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, secret_hash=_hash(secret), role=role, subject=subject)
    session.add(row)
    return row, f"{KEY_PREFIX}_{key_id[4:]}_{secret}"


def parse_key(plain: str) -> tuple[str, str] | None:
    parts = plain.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16:
        return None
    return "key_" + parts[1], parts[2]


def key_select() -> Select:
    """The look-up of a key by id (bind parameter `key_id`): its hash, role, subject, revocation.

    A view may add columns and outer joins to it, so that its own read travels in the same
    statement as the authentication (api.auth.authenticate_and_read): one round trip.
    """
    t = ApiKey.__table__  # Core, not the ORM entity: no ORM compile and load steps
    return select(t.c.secret_hash, t.c.role, t.c.subject, t.c.revoked_at).where(
        t.c.id == bindparam("key_id"))


def check_key(key_id: str, secret: str, row) -> Principal | None:
    """The principal of a key row found by key_select(), or None; row None when not found."""
    # An unknown id is compared against a fixed hash: one hash and one constant-time
    # comparison whether or not the id exists, so timing tells nothing about which ids do.
    expected = row.secret_hash if row is not None else _NO_SUCH_KEY
    if not hmac.compare_digest(_hash(secret), expected) or row is None or row.revoked_at:
        return None
    return Principal(key_id=key_id, role=row.role, subject=row.subject)


_KEY_SELECT = key_select()


def authenticate(session: Session, plain: str) -> Principal | None:
    parsed = parse_key(plain)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.execute(_KEY_SELECT, {"key_id": key_id}).first()
    return check_key(key_id, secret, row)


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
