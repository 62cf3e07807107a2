"""`voucher` command line: thin commands that call one service each (docs/API.md#cli)."""

from __future__ import annotations

import os
import sys

import click

from voucher.cli_adapters import COMMANDS as ADAPTER_COMMANDS
from voucher.cli_audit import COMMANDS as AUDIT_COMMANDS
from voucher.cli_billing import COMMANDS as BILLING_COMMANDS
from voucher.cli_demo import demo
from voucher.cli_jobs import jobs, scheduler
from voucher.cli_redemptions import COMMANDS as REDEMPTION_COMMANDS
from voucher.cli_registries import COMMANDS as REGISTRY_COMMANDS
from voucher.cli_reports import COMMANDS as REPORT_COMMANDS
from voucher.cli_settings import database, settings
from voucher.cli_simulate import COMMANDS as SIMULATE_COMMANDS
from voucher.cli_webhooks import webhooks


class _Main(click.Group):
    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["voucher.command_args"] = rest  # so that --help is answered on any database
        return name, command, rest


@click.group(cls=_Main)
def main() -> None:
    """Compute-voucher metering and subsidy billing (嘉兴 算力券)."""
    from api.events import install as install_outbox
    from kernel.audit import acting_as

    ctx = click.get_current_context()
    # Every command but `db` works on the migrated schema: say so once, up front, rather than
    # fail with "no such table" from the first query (or, for `serve`, from every request).
    if ctx.invoked_subcommand != "db" and "--help" not in ctx.meta.get("voucher.command_args", ()):
        _require_schema()
    # Changes made by commands are audited as the operator's CLI (until the command ends).
    ctx.with_resource(acting_as("cli"))
    install_outbox()  # and raise events with the API's objects (docs/API.md#events)


def _require_schema() -> None:
    from sqlalchemy.exc import OperationalError

    from voucher.migrate import schema_problem

    try:
        problem = schema_problem(settings().database_url)
    except OperationalError as exc:
        raise click.ClickException(f"database unavailable: {str(exc.orig).splitlines()[0]}") from None
    if problem:
        raise click.ClickException(problem)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database named by VOUCHER_DATABASE_URL to the latest schema."""
    from voucher.migrate import upgrade

    url = settings().database_url
    upgrade(url, revision)
    click.echo(f"database at {revision}: {_safe_url(url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(["finance", "provider", "enterprise"]), required=True)
@click.option("--subject", default=None, help="provider id or enterprise USCC")
def keys_create(role: str, subject: str | None) -> None:
    """Issue a key. It is shown once, on the last line, and stored only as a hash."""
    from kernel import audit
    from kernel.errors import DomainError
    from kernel.keys import issue_key
    from metering.registry import check_key_subject

    database_ = database()
    with database_.session() as session, session.begin():
        try:
            subject = check_key_subject(session, role, subject)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
        row, plain = issue_key(session, role, subject)
        audit.append(session, "api_key.created", "api_key", row.id,
                     after={"role": role, "subject": subject})
    click.echo(f"{row.id} role={role} subject={subject or '-'}")
    click.echo(plain)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (key_…); its console sessions end with it."""
    from console.sessions import end_sessions_of_key
    from kernel import audit
    from kernel.keys import revoke_key

    with database().session() as session, session.begin():
        row = revoke_key(session, key_id)
        if row is None:
            raise click.ClickException(f"no such key: {key_id}")
        if session.is_modified(row):  # revoking twice changes nothing
            audit.append(session, "api_key.revoked", "api_key", key_id,
                         before={"revoked_at": None}, after={"revoked_at": row.revoked_at})
        end_sessions_of_key(session, key_id)
    click.echo(f"revoked {key_id}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="gunicorn workers (default cores + 1)")
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the HTTP API under gunicorn (several workers), never Flask's dev server."""
    from config.settings import CONFIG_DIR, REPO_ROOT

    # Metrics from every worker (prometheus-client multiprocess mode); gunicorn empties it at start.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(REPO_ROOT / "var" / "prometheus-multiproc"))
    args = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG_DIR / "gunicorn.conf.py"),
            "-b", f"{host}:{port}"]
    if workers:
        args += ["-w", str(workers)]
    args.append("voucher.wsgi:app")
    os.execv(sys.executable, args)


main.add_command(demo)
main.add_command(scheduler)
main.add_command(jobs)
main.add_command(webhooks)
for _command in (*BILLING_COMMANDS, *ADAPTER_COMMANDS, *AUDIT_COMMANDS, *REPORT_COMMANDS,
                 *REDEMPTION_COMMANDS, *REGISTRY_COMMANDS, *SIMULATE_COMMANDS):
    main.add_command(_command)
