"""The application factory: nothing happens at import time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, g
from flask.sessions import SecureCookieSessionInterface

from api.auth import request_actor
from api.errors import register_error_handlers
from api.events import install as install_outbox
from api.fastpath import FastPaths
from api.idempotency import init_idempotency
from api.metrics import init_metrics
from api.openapi import init_openapi
from api.requestlog import init_request_logging
from billing.claims import ClaimLimits
from billing.policy_file import load_programmes
from config.settings import Settings
from kernel import audit
from kernel.db import Database
from kernel.events import Events
from kernel.logging import configure_logging
from kernel.webhooks import Retry


def webhook_retry(settings: Settings) -> Retry:
    """How webhook deliveries are checked, sent and retried, from the settings."""
    return Retry(allowed_hosts=settings.webhook_allowed_hosts, backoff_base=settings.webhook_backoff_seconds,
                 timeout=settings.webhook_timeout_seconds, lease=settings.webhook_lease_seconds)


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
    # The default programme and the others run beside it (docs/POLICY.md#programmes).
    programmes = load_programmes(settings.policies_dir, settings.policy_path)
    app.extensions["voucher.policy"] = programmes.default
    app.extensions["voucher.programmes"] = programmes
    app.extensions["voucher.claim_limits"] = ClaimLimits(settings.max_undecided_claims,
                                                         settings.max_claim_items)
    app.extensions["voucher.webhooks"] = webhook_retry(settings)
    install_outbox()  # events render the API's objects (docs/API.md#events)

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
    audit.set_request_actor_source(request_actor)  # who acts in a request, for the audit trail
    init_metrics(app)
    init_idempotency(app)

    from api.audit import bp as audit_bp
    from api.billing import QUOTA_READ
    from api.billing import bp as billing_bp
    from api.budget import bp as budget_bp
    from api.contracts import bp as contracts_bp
    from api.events import bp as events_bp
    from api.jobs import bp as jobs_bp
    from api.redemptions import bp as redemptions_bp
    from api.registry import bp as registry_bp
    from api.reports import bp as reports_bp
    from api.service import bp as service_bp
    from api.usage import bp as usage_bp
    from api.webhooks import bp as webhooks_bp

    app.register_blueprint(service_bp)
    app.register_blueprint(registry_bp)
    app.register_blueprint(usage_bp)
    app.register_blueprint(billing_bp)
    app.register_blueprint(redemptions_bp)
    app.register_blueprint(budget_bp)
    app.register_blueprint(contracts_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(audit_bp)
    app.register_blueprint(events_bp)
    app.register_blueprint(webhooks_bp)
    init_openapi(app)
    # The quota read's and the authorisation's common answers without Flask's per-request work
    # (docs/ARCHITECTURE.md#fast-path).
    app.wsgi_app = FastPaths(app, app.wsgi_app, QUOTA_READ)  # type: ignore[method-assign]

    from console import init_console

    init_console(app)  # HTML pages under /console (blueprint "console": not part of the OpenAPI document)
    return app
