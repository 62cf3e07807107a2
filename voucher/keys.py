"""API keys: random, shown once, stored only as a hash, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from voucher.db import Base, UTCDateTime, utcnow

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


def authenticate(session: Session, plain: str) -> Principal | None:
    parsed = parse_key(plain)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.execute(
        select(ApiKey.secret_hash, ApiKey.role, ApiKey.subject, ApiKey.revoked_at).where(
            ApiKey.id == key_id
        )
    ).first()
    # An unknown id is compared against a fixed hash: one hash and one constant-time
    # comparison whether or not the id exists, so timing tells nothing about which ids do.
    expected = row.secret_hash if row else _NO_SUCH_KEY
    if not hmac.compare_digest(_hash(secret), expected) or row is None or row.revoked_at:
        return None
    return Principal(key_id=key_id, role=row.role, subject=row.subject)


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
