"""The web console: server-rendered pages under /console for each role (issue 6).

`init_console(app)` is all the app factory calls: it settles the session secret, the cookie
flags, the translations and registers the blueprint.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

from flask import Flask

from config.settings import REPO_ROOT


def secret_key_file(path: Path) -> str:
    """Read the key at `path`, creating it (0600, atomically) on first use.

    Several gunicorn workers start at once: each writes its own candidate to a private
    temporary file and links it into place; `link` fails for all but the first, and the
    others read the winner. Nobody ever reads a half-written key.
    """
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


def init_console(app: Flask) -> None:
    settings = app.config["VOUCHER_SETTINGS"]
    app.secret_key = settings.secret_key or secret_key_file(REPO_ROOT / "var" / "secret_key")
    app.config.update(
        SESSION_COOKIE_NAME="voucher_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_PATH="/console",
        # The cookie may outlive its session; the session's row decides (console.sessions).
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.console_max_age_seconds),
        CONSOLE_IDLE_SECONDS=settings.console_idle_seconds,
        CONSOLE_MAX_AGE_SECONDS=settings.console_max_age_seconds,
    )
    app.extensions.setdefault("console.clock", time.time)  # tests set a clock of their own

    from console import risk, simulation  # noqa: F401  (their pages join the blueprint)
    from console.i18n import init_i18n
    from console.views import bp

    init_i18n(app)
    app.register_blueprint(bp)
