"""Console sessions: an API key exchanged for a session, CSRF tokens, security headers.

The signed cookie (HttpOnly, SameSite=Strict, Secure when configured, path /console) holds a
random session token, the CSRF token and the language — never the key. The session itself
lives in the database (console.sessions): every request looks it up with its key (one
query), so sign-out, revoking the key and the idle and absolute timeouts end it at once,
for every copy of the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from flask import abort, current_app, g, redirect, request, session, url_for

from api.auth import db_session
from console.sessions import check_session, end_session, now_of, open_session, timeouts_of
from kernel.keys import Principal

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
    s = db_session()
    token = open_session(s, principal.key_id, now_of(), timeouts_of(current_app))
    s.commit()
    session.update(sid=token, csrf=secrets.token_urlsafe(32))
    if lang:
        session["lang"] = lang
    session.permanent = True


def sign_out() -> None:
    """End the session in the database (every copy of the cookie), then clear the cookie."""
    token = session.get("sid")
    if token:
        s = db_session()
        end_session(s, token)
        s.commit()
    _clear()


def _clear() -> None:
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


def current_user() -> Principal | None:
    """The signed-in principal, or None (and the cookie cleared) if the session has ended."""
    if "console_user" in g:
        return g.console_user
    user = None
    token = session.get("sid")
    if token:
        s = db_session()
        user, ended = check_session(s, token, now_of(), timeouts_of(current_app))
        s.commit()  # the end of a session, or its refreshed last-use time
        if user is None:
            _clear()
            g.session_ended = ended
        else:
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
