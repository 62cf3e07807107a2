"""Console sessions: an API key exchanged for a signed cookie, CSRF tokens, security headers.

The cookie (HttpOnly, SameSite=Strict, Secure when configured, path /console) holds the key's
id, role and subject and two timestamps — never the key itself. Every request checks the
idle and absolute expiry and re-reads the key row (one query), so revoking the key ends
its console sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from flask import abort, current_app, g, redirect, request, session, url_for
from sqlalchemy import select

from voucher.auth import db_session
from voucher.keys import ApiKey, Principal

CSRF_FIELD = "csrf_token"


class CsrfRefused(Exception):
    """A POST without the session's CSRF token."""


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Every state-changing request must echo the session's token in its form."""
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get("csrf", "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused()


def sign_in(principal: Principal) -> None:
    lang = session.get("lang")
    session.clear()  # nothing from before sign-in survives, the CSRF token included
    now = int(time.time())
    session.update(key_id=principal.key_id, role=principal.role, subject=principal.subject,
                   signed_in=now, seen=now, csrf=secrets.token_urlsafe(32))
    if lang:
        session["lang"] = lang
    session.permanent = True


def sign_out() -> None:
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


def _expired(now: int) -> bool:
    cfg = current_app.config
    seen, signed_in = session.get("seen", 0), session.get("signed_in", 0)
    return (now - seen > cfg["CONSOLE_IDLE_SECONDS"]
            or now - signed_in > cfg["CONSOLE_MAX_AGE_SECONDS"])


def current_user() -> Principal | None:
    """The signed-in principal, or None (and the session cleared) if expired or revoked."""
    if "console_user" in g:
        return g.console_user
    user = None
    key_id = session.get("key_id")
    if key_id:
        now = int(time.time())
        if _expired(now):
            sign_out()
            g.session_ended = "expired"
        else:
            s = db_session()
            row = s.execute(select(ApiKey.role, ApiKey.subject, ApiKey.revoked_at)
                            .where(ApiKey.id == key_id)).first()
            s.rollback()
            if (row is None or row.revoked_at is not None or row.role != session.get("role")
                    or row.subject != session.get("subject")):
                sign_out()
                g.session_ended = "revoked"
            else:
                user = Principal(key_id, row.role, row.subject)
                if now - session.get("seen", 0) >= 60:  # refresh the idle clock at most once a minute
                    session["seen"] = now
                g.principal = user  # the request log names the key
    g.console_user = user
    return user


def safe_next(target: str | None) -> str | None:
    """Only a path inside the console (no scheme, no host) is followed after sign-in.

    No backslash, and no control character at all: CR/LF would split the Location header,
    and browsers drop tabs and newlines from URLs, so what is checked is not what is followed."""
    if (target and target.startswith("/console") and not target.startswith("//")
            and "\\" not in target and not any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in target)):
        return target
    return None


def login_required(*roles: str) -> Callable:
    """Redirect to sign-in when signed out; a role the page is not for gets 403."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if user is None:
                params = {"next": request.full_path.rstrip("?")} if request.method == "GET" else {}
                if g.get("session_ended"):
                    params["ended"] = g.session_ended
                return redirect(url_for("console.sign_in") + ("?" + urlencode(params) if params else ""))
            if roles and user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        wrapper.roles = roles  # type: ignore[attr-defined]
        return wrapper

    return decorator


def own_subject(role: str, subject: str) -> None:
    """Another subject's page answers 404, never 403, like the API (no enumeration)."""
    user = current_user()
    if user is not None and user.role == role and user.subject != subject:
        abort(404)


CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def security_headers(response):
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.endpoint != "console.static":
        h["Cache-Control"] = "no-store"
    return response
