"""Billing commands: reconcile a month, close it, verify the ledger."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from voucher.cli_settings import settings as cli_settings


def _db_and_programmes():
    """The database and the programmes (VOUCHER_POLICY, VOUCHER_POLICIES_DIR; docs/POLICY.md#programmes)."""
    from billing.policy_file import load_programmes
    from kernel.db import Database

    settings = cli_settings()
    return Database(settings.database_url), load_programmes(settings.policies_dir, settings.policy_path)


def _db_and_policy():
    db, programmes = _db_and_programmes()
    return db, programmes.default


def _checked_period(period: str) -> str:
    from kernel.periods import parse_period

    try:
        parse_period(period)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None
    return period


@contextmanager
def _refusals() -> Iterator[None]:
    """A domain refusal (e.g. `period_closed`) as a CLI error: its code and message, exit 1."""
    from kernel.errors import DomainError

    try:
        yield
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


@click.command()
@click.option("--period", required=True, help="YYYY-MM (Asia/Shanghai)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def reconcile(period: str, as_json: bool) -> None:
    """Run the reconciliation of PERIOD (idempotent: a re-run changes nothing)."""
    from billing.reconciliation import reconcile as run
    from kernel.money import yuan

    _checked_period(period)
    db, programmes = _db_and_programmes()
    with _refusals(), db.session() as session, session.begin():  # a closed period is refused
        result, _ = run(session, programmes.default, period, others=programmes.others)
        summary = result.summary
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    totals = summary["totals"]
    click.echo(f"reconciliation {period} (run {result.runs}, policy {result.policy_id})")
    click.echo("claims: " + ", ".join(f"{k} {v}" for k, v in summary["by_status"].items()))
    click.echo(f"payable ¥{yuan(totals['payable'])} · reserved ¥{yuan(totals['reserved'])}"
               f" · granted ¥{yuan(totals['granted'])} · clawed back ¥{yuan(totals['clawed_back'])}")
    for code, n in summary["discrepancies"].items():
        click.echo(f"  {code}: {n}")


@click.command()
@click.option("--period", required=True, help="YYYY-MM (Asia/Shanghai), a month that is over")
def close(period: str) -> None:
    """Close PERIOD: its figures become final (docs/API.md#period-close).

    Refused while any claim of the month is undecided; closing a closed month changes nothing.
    """
    from billing.lifecycle import close_period, period_view

    _checked_period(period)
    db, _ = _db_and_policy()
    with _refusals(), db.session() as session, session.begin():
        close_period(session, period)
    with db.session() as session:
        view = period_view(session, period)
    click.echo(f"period {period} {view.state} (closed at {view.closed_at:%Y-%m-%d %H:%M} UTC by {view.closed_by})")


@click.group()
def ledger() -> None:
    """The quota ledger."""


@ledger.command("verify")
def ledger_verify() -> None:
    """Check the ledger invariants; exit 1 on any breach."""
    from billing.ledger import verify

    db, _ = _db_and_policy()
    with db.session() as session:
        report = verify(session)
    click.echo(f"{report.postings} postings in {report.entries} entries, {report.balances} balances")
    for b in report.breaches:
        where = f" {b.enterprise_uscc}/{b.year}" if b.enterprise_uscc else ""
        click.echo(f"BREACH {b.what}{where}: {b.detail}", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo("ledger ok")


COMMANDS = [reconcile, close, ledger]
