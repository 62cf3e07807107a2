"""Console sessions kept server-side, so that ending one takes effect at once (issue 15, item 3).

The signed cookie carries only a random session token (256 bits); the `console_session` table
keeps its SHA-256, never the token, with the key it was opened with and two times: when it was
opened and when it was last used. Every console request looks the row up joined to its key:
no row (signed out, or ended by `end_sessions_of_key`), a revoked key, an idle or an absolute
timeout all end the session there and then — a cookie copied earlier opens nothing.

Times are Unix seconds from the app's console clock (`app.extensions["console.clock"]`,
`time.time` unless a test sets another).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app
from sqlalchemy import BigInteger, ForeignKey, String, delete, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from kernel.db import Base
from kernel.keys import ApiKey, Principal

SEEN_RESOLUTION = 60  # the last-use time is rewritten at most once a minute per session


class ConsoleSession(Base):
    __tablename__ = "console_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's token
    api_key_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("api_key.id", ondelete="CASCADE"), index=True)
    signed_in_at: Mapped[int] = mapped_column(BigInteger)  # Unix seconds
    seen_at: Mapped[int] = mapped_column(BigInteger, index=True)


@dataclass(frozen=True)
class Timeouts:
    idle: int  # seconds without a request
    absolute: int  # seconds since sign-in, however busy


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clock_of(app: Flask) -> Callable[[], float]:
    return app.extensions.get("console.clock", time.time)


def timeouts_of(app: Flask) -> Timeouts:
    return Timeouts(app.config["CONSOLE_IDLE_SECONDS"], app.config["CONSOLE_MAX_AGE_SECONDS"])


def open_session(session: Session, key_id: str, now: int, timeouts: Timeouts) -> str:
    """A new session for `key_id`; returns the token for the cookie (stored only hashed).

    Sessions that have timed out are deleted on the way, so the table holds live ones only.
    """
    session.execute(delete(ConsoleSession).where(or_(
        ConsoleSession.seen_at < now - timeouts.idle,
        ConsoleSession.signed_in_at < now - timeouts.absolute)))
    token = secrets.token_urlsafe(32)
    session.add(ConsoleSession(id=_digest(token), api_key_id=key_id, signed_in_at=now, seen_at=now))
    return token


def end_session(session: Session, token: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.id == _digest(token)))


def end_sessions_of_key(session: Session, key_id: str) -> int:
    """Delete every console session opened with this key (on revocation); returns how many."""
    return session.execute(
        delete(ConsoleSession).where(ConsoleSession.api_key_id == key_id)).rowcount or 0


def check_session(session: Session, token: str, now: int,
                  timeouts: Timeouts) -> tuple[Principal | None, str | None]:
    """(principal, None) for a live session, else (None, why): "expired" or "revoked".

    A session that has ended is deleted. Refreshes the last-use time (at most once a minute).
    The caller commits.
    """
    digest = _digest(token)
    row = session.execute(
        select(ConsoleSession.signed_in_at, ConsoleSession.seen_at, ApiKey.id, ApiKey.role,
               ApiKey.subject, ApiKey.revoked_at)
        .join(ApiKey, ApiKey.id == ConsoleSession.api_key_id)
        .where(ConsoleSession.id == digest)).first()
    if row is None:
        return None, "expired"  # signed out (elsewhere, with a copy of this cookie) or purged
    if row.revoked_at is not None:
        end_sessions_of_key(session, row.id)
        return None, "revoked"
    if now - row.seen_at > timeouts.idle or now - row.signed_in_at > timeouts.absolute:
        end_session(session, token)
        return None, "expired"
    if now - row.seen_at >= SEEN_RESOLUTION:
        session.execute(update(ConsoleSession).where(ConsoleSession.id == digest)
                        .values(seen_at=now))
    return Principal(row.id, row.role, row.subject), None


def now_of(app: Flask | None = None) -> int:
    return int(clock_of(app or current_app)())
