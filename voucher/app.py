"""The application factory: nothing happens at import time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, g
from flask.sessions import SecureCookieSessionInterface

from billing.policy_file import load_policy
from config.settings import Settings
from voucher.db import Database
from voucher.errors import register_error_handlers
from voucher.events import Events
from voucher.idempotency import init_idempotency
from voucher.logging import configure_logging, init_request_logging
from voucher.metrics import init_metrics
from voucher.openapi import init_openapi


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions (the console's), except that a request without any
    cookie (every API call) gets its empty session without a signer built for it first."""

    def open_session(self, app, request):
        if app.secret_key and not request.environ.get("HTTP_COOKIE"):
            return self.session_class()
        return super().open_session(app, request)


class VoucherFlask(Flask):
    """Flask with the per-request costs of the hot paths trimmed (docs/BENCHMARKS.md)."""

    session_interface = _CookieSessions()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Flask asks for every hook and view of every request; the answer never changes.
        try:
            return self._sync[func]
        except KeyError:
            sync = self._sync[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # unhashable callable
            return super().ensure_sync(func)


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = VoucherFlask(__name__)
    app.config["VOUCHER_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False

    db = database or Database(settings.database_url)
    app.extensions["voucher.db"] = db
    app.extensions["voucher.events"] = Events()
    app.extensions["voucher.policy"] = load_policy(settings.policy_path)

    @app.teardown_appcontext
    def _close_session(_exc):
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    register_error_handlers(app)

    @app.after_request
    def _nosniff(response):
        # Every answer, JSON above all: a browser must not sniff an API body into HTML.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    configure_logging(settings.log_json, settings.log_level.upper())
    init_request_logging(app)  # first: its request id and timer wrap every other hook
    init_metrics(app)
    init_idempotency(app)

    from billing.api import bp as billing_bp
    from billing.reports_api import bp as reports_bp
    from metering.api import bp as usage_bp
    from metering.registry_api import bp as registry_bp
    from voucher.api import bp as service_bp
    from voucher.audit_api import bp as audit_bp
    from voucher.jobs_api import bp as jobs_bp

    app.register_blueprint(service_bp)
    app.register_blueprint(registry_bp)
    app.register_blueprint(usage_bp)
    app.register_blueprint(billing_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(audit_bp)
    init_openapi(app)

    from console import init_console

    init_console(app)  # HTML pages under /console (blueprint "console": not part of the OpenAPI document)
    return app
