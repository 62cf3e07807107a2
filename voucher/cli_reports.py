"""Report and statement commands: `voucher report`, `voucher statements` (docs/API.md#cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from voucher.cli_settings import settings as cli_settings


def _period(ctx, param, value: str) -> str:
    from kernel.periods import parse_period

    try:
        parse_period(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.option("--period", required=True, callback=_period, help="YYYY-MM (Asia/Shanghai)")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), required=True)
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="file to write (replaced if it exists)")
def report(period: str, fmt: str, output: Path) -> None:
    """Write the monthly report of PERIOD: one row per claim item, clawbacks, a summary."""
    from billing.models import Reconciliation
    from billing.reports import write_report
    from kernel.db import Database
    from kernel.money import yuan

    db = Database(cli_settings().database_url)
    try:
        with db.session() as session:
            if session.get(Reconciliation, period) is None:
                raise click.ClickException(
                    f"no reconciliation for {period}; run `voucher reconcile --period {period}` first")
            output.parent.mkdir(parents=True, exist_ok=True)
            partial = output.with_name(output.name + ".part")
            with open(partial, "wb") as fh:
                summary = write_report(session, period, fmt, fh)
            partial.replace(output)  # readers never see half a file
    finally:
        db.dispose()
    t = summary.totals
    click.echo(f"report {period}: {summary.claims} claims, {summary.items} items, "
               f"{summary.adjustments} adjustments -> {output}")
    click.echo(f"payable ¥{yuan(t['payable'])} · reserved ¥{yuan(t['reserved'])} · granted "
               f"¥{yuan(t['granted'])} · clawed back ¥{yuan(t['clawed_back'])}")


@click.command()
@click.option("--period", required=True, callback=_period, help="YYYY-MM (Asia/Shanghai)")
@click.option("--json", "as_json", is_flag=True, help="print the run's summary as JSON")
def statements(period: str, as_json: bool) -> None:
    """Issue PERIOD's statements (Customer, items, invoice) via VOUCHER_STRIPE_API_BASE.

    An enterprise whose claims of PERIOD are still undecided (submitted, verified, flagged)
    is left pending: run again once finance has decided them. Re-running skips finalized
    statements and resumes half-done ones; exit status 1 unless every statement is issued.
    """
    from adapters.stripe import StripeClient
    from billing.policy_file import load_policy
    from billing.statements import issue_statements, plan_statements
    from kernel.db import Database
    from kernel.money import yuan

    settings = cli_settings()
    db = Database(settings.database_url)
    policy = load_policy(settings.policy_path)
    try:
        payments = StripeClient.from_settings(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with db.session() as session:
            plans = plan_statements(session, policy, period)
        with payments, click.progressbar(length=len(plans), label=f"statements {period}",
                                         file=sys.stderr, show_pos=True) as bar:
            summary = issue_statements(db, policy, period, payments, plans=plans,
                                       progress=lambda plan, outcome: bar.update(1))
    finally:
        db.dispose()
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        click.echo(f"statements {period}: {summary['enterprises']} enterprises · issued {summary['issued']}"
                   f" (resumed {summary['resumed']}) · already issued {summary['skipped']}"
                   f" · pending {summary['pending']} · failed {summary['failed']}"
                   + (f" · not attempted {summary['not_attempted']}" if summary["not_attempted"] else ""))
        click.echo(f"this run: spend ¥{yuan(summary['spend'])} − subsidy ¥{yuan(summary['subsidy'])};"
                   f" invoiced for {period} in all: ¥{yuan(summary['total'])}")
    for held in summary["pending_claims"]:
        click.echo(f"PENDING {held['enterprise_uscc']}: claims {', '.join(held['claims'])} undecided; "
                   f"approve or reject them, then run again", err=True)
    for err in summary["errors"]:
        click.echo(f"FAILED {err['enterprise_uscc']}: {err['message']}", err=True)
    if not summary["complete"]:
        sys.exit(1)


COMMANDS = [report, statements]
