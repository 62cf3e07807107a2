"""Settings, read once from the environment (12-factor); nothing else reads os.environ.

`Settings.from_env()` is called only by the composition root (voucher/app.py create_app, the
CLI entry, voucher/scheduler.py, migrations/env.py); everything else receives the settings or
the values it needs as parameters. Two readers stay here because what they read is named
elsewhere: `secret(name)` for a credential whose variable a provider file names (`token_env`),
and `child_environment()` for a subprocess an adapter starts (sacct).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent


def _default_db_url() -> str:
    return f"sqlite:///{REPO_ROOT / 'var' / 'voucher.db'}"


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=_default_db_url)
    policy_path: Path | None = None  # None: the Jiaxing policy shipped in config/policies/
    # Further programmes, one policy file each (docs/POLICY.md#programmes); None: the default alone.
    policies_dir: Path | None = None
    providers_dir: Path = CONFIG_DIR / "providers"
    stripe_api_base: str = "http://127.0.0.1:8420"
    stripe_api_key: str = ""
    max_batch_records: int = 5000
    # Claim limits (docs/API.md#claim-submit): undecided claims per enterprise and period, items per claim.
    max_undecided_claims: int = 10
    max_claim_items: int = 200
    max_content_length: int = 32 * 1024 * 1024
    future_skew_seconds: int = 300  # records may end at most 5 minutes in the future
    pull_cron: str = "*/15 * * * *"
    reconcile_cron: str = "0 2 * * *"  # daily: every open period re-run (docs/API.md#period-close)
    statements_cron: str = "0 4 1 * *"
    # Stored Idempotency-Key answers are kept this long, then deleted by the hourly job.
    idempotency_ttl_hours: int = 24
    idempotency_expiry_cron: str = "40 * * * *"
    # Redemptions (docs/API.md#redemptions): expired holds released; the last quarter's settlements built.
    redemption_expiry_cron: str = "*/15 * * * *"
    settlements_cron: str = "0 5 1 1,4,7,10 *"
    catch_up_periods: int = 12  # per job, at scheduler start: missed periods run, oldest first
    timezone: str = "Asia/Shanghai"
    secret_key: str = ""  # signs console sessions; empty: generated once into var/secret_key
    cookie_secure: bool = False  # console cookie only over HTTPS (set behind a TLS proxy)
    log_json: bool = True
    # The service's log level (and gunicorn's): `warning` drops the per-request line.
    log_level: str = "info"
    # Failed authentications per client address before 429 (0: no limit), and the window.
    auth_fail_limit: int = 20
    auth_fail_window: int = 60  # seconds
    # Pushes per provider key (POST /v1/usage-records): requests and records a second, with
    # bursts; beyond them 429 + Retry-After. A rate of 0 switches that limit off.
    push_requests_per_second: float = 10
    push_requests_burst: int = 20
    push_records_per_second: float = 1000
    push_records_burst: int = 5000  # one full batch (max_batch_records) from a full bucket
    # Shared rate-limit counters: Redis when set, else PostgreSQL, else per process (SQLite).
    redis_url: str = ""
    redis_prefix: str = "voucher:"
    # Console sessions end after this long without a request, and this long after sign-in.
    console_idle_seconds: int = 8 * 3600
    console_max_age_seconds: int = 24 * 3600
    # prometheus-client multiprocess mode (every gunicorn worker's series in one exposition).
    prometheus_multiproc_dir: str | None = None
    # Webhooks (docs/OPERATIONS.md#webhooks): hosts an endpoint may name (exact names,
    # `*.suffix`, or `*`), loopback only unless set; the delay before the 2nd attempt, doubling
    # after each failure (capped at 6 h, for 3 days); one POST's timeout.
    webhook_allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    webhook_backoff_seconds: float = 30.0
    webhook_timeout_seconds: float = 10.0
    webhook_lease_seconds: float = 120.0  # a killed worker's deliveries are claimed again after it
    # "module:NAME" of a job registry replacing voucher.scheduler.JOBS (a test seam).
    jobs_module: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict = {}
        mapping = {
            "VOUCHER_DATABASE_URL": ("database_url", str),
            "VOUCHER_POLICY": ("policy_path", Path),
            "VOUCHER_POLICIES_DIR": ("policies_dir", Path),
            "VOUCHER_PROVIDERS_DIR": ("providers_dir", Path),
            "VOUCHER_STRIPE_API_BASE": ("stripe_api_base", str),
            "VOUCHER_STRIPE_API_KEY": ("stripe_api_key", str),
            "VOUCHER_PULL_CRON": ("pull_cron", str),
            "VOUCHER_RECONCILE_CRON": ("reconcile_cron", str),
            "VOUCHER_STATEMENTS_CRON": ("statements_cron", str),
            "VOUCHER_IDEMPOTENCY_TTL_HOURS": ("idempotency_ttl_hours", int),
            "VOUCHER_IDEMPOTENCY_EXPIRY_CRON": ("idempotency_expiry_cron", str),
            "VOUCHER_REDEMPTION_EXPIRY_CRON": ("redemption_expiry_cron", str),
            "VOUCHER_SETTLEMENTS_CRON": ("settlements_cron", str),
            "VOUCHER_SECRET_KEY": ("secret_key", str),
            "VOUCHER_MAX_BATCH_RECORDS": ("max_batch_records", int),
            "VOUCHER_MAX_UNDECIDED_CLAIMS": ("max_undecided_claims", int),
            "VOUCHER_MAX_CLAIM_ITEMS": ("max_claim_items", int),
            "VOUCHER_CATCH_UP_PERIODS": ("catch_up_periods", int),
            "VOUCHER_AUTH_FAIL_LIMIT": ("auth_fail_limit", int),
            "VOUCHER_AUTH_FAIL_WINDOW": ("auth_fail_window", int),
            "VOUCHER_PUSH_REQUESTS_PER_SECOND": ("push_requests_per_second", float),
            "VOUCHER_PUSH_REQUESTS_BURST": ("push_requests_burst", int),
            "VOUCHER_PUSH_RECORDS_PER_SECOND": ("push_records_per_second", float),
            "VOUCHER_PUSH_RECORDS_BURST": ("push_records_burst", int),
            "VOUCHER_REDIS_URL": ("redis_url", str),
            "VOUCHER_REDIS_PREFIX": ("redis_prefix", str),
            "VOUCHER_CONSOLE_IDLE_SECONDS": ("console_idle_seconds", int),
            "VOUCHER_CONSOLE_MAX_AGE_SECONDS": ("console_max_age_seconds", int),
            "VOUCHER_WEBHOOK_BACKOFF_SECONDS": ("webhook_backoff_seconds", float),
            "VOUCHER_WEBHOOK_TIMEOUT_SECONDS": ("webhook_timeout_seconds", float),
            "VOUCHER_WEBHOOK_LEASE_SECONDS": ("webhook_lease_seconds", float),
        }
        for var, (name, conv) in mapping.items():
            if env.get(var):
                values[name] = conv(env[var])
        if env.get("VOUCHER_COOKIE_SECURE"):
            values["cookie_secure"] = env["VOUCHER_COOKIE_SECURE"].lower() in ("1", "true", "yes")
        if env.get("VOUCHER_LOG_LEVEL"):
            level = env["VOUCHER_LOG_LEVEL"].strip().lower()
            if level not in LOG_LEVELS:
                raise ValueError(f"VOUCHER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                                 f"got {env['VOUCHER_LOG_LEVEL']!r}")
            values["log_level"] = level
        if env.get("PROMETHEUS_MULTIPROC_DIR"):
            values["prometheus_multiproc_dir"] = env["PROMETHEUS_MULTIPROC_DIR"]
        if env.get("VOUCHER_WEBHOOK_ALLOWED_HOSTS"):
            values["webhook_allowed_hosts"] = tuple(
                h.strip() for h in env["VOUCHER_WEBHOOK_ALLOWED_HOSTS"].split(",") if h.strip())
        if env.get("VOUCHER_JOBS_MODULE"):
            values["jobs_module"] = env["VOUCHER_JOBS_MODULE"]
        if env.get("VOUCHER_LOG_JSON"):
            values["log_json"] = env["VOUCHER_LOG_JSON"].lower() not in ("0", "false", "no")
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


def secret(name: str | None) -> str | None:
    """The value of the environment variable `name` (a credential a provider file names by
    its variable, `token_env`), read when it is used; None if unnamed or unset."""
    return os.environ.get(name) if name else None


def child_environment(**changes: str) -> dict[str, str]:
    """This process's environment with `changes`, for a subprocess an adapter runs."""
    return {**os.environ, **changes}
