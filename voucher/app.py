"""The application factory: nothing happens at import time."""

from __future__ import annotations

from flask import Flask, g

from billing.policy_file import load_policy
from config.settings import Settings
from voucher.db import Database
from voucher.errors import register_error_handlers
from voucher.events import Events
from voucher.idempotency import init_idempotency


def create_app(settings: Settings | None = None, database: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
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
    init_idempotency(app)

    from billing.api import bp as billing_bp
    from metering.api import bp as usage_bp
    from metering.registry_api import bp as registry_bp
    from voucher.api import bp as service_bp

    app.register_blueprint(service_bp)
    app.register_blueprint(registry_bp)
    app.register_blueprint(usage_bp)
    app.register_blueprint(billing_bp)
    return app
