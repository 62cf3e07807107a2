"""Redemption commands: `voucher settlements --quarter`, `voucher redemptions expire` (docs/API.md#cli)."""

from __future__ import annotations

import json

import click

from voucher.cli_settings import settings as cli_settings


@click.command()
@click.option("--quarter", required=True, help="YYYYQn, e.g. 2026Q1")
@click.option("--provider", "provider_id", default=None, help="only this provider's batch")
@click.option("--approve", is_flag=True, help="approve the batches built (finance's decision)")
@click.option("--payment-file", "payment_dir", type=click.Path(file_okay=False), default=None,
              help="write each batch's payment file (CSV and XLSX) into this directory")
def settlements(quarter: str, provider_id: str | None, approve: bool, payment_dir: str | None) -> None:
    """Build (and optionally approve) each provider's settlement batch of QUARTER."""
    from pathlib import Path

    from billing import settlements as svc
    from billing.policy_file import load_policy
    from kernel.audit import acting_as
    from kernel.db import Database
    from kernel.errors import DomainError
    from kernel.money import yuan

    try:
        svc.parse_quarter(quarter)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--quarter") from None
    settings = cli_settings()
    db = Database(settings.database_url)
    policy = load_policy(settings.policy_path)
    with acting_as("cli"):
        try:
            with db.session() as session, session.begin():
                batches = svc.build(session, policy, quarter, provider_id)
                ids = [b.id for b in batches]
            for bid in ids if approve else []:
                with db.session() as session, session.begin():
                    svc.approve(session, policy, bid, "cli")
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
        with db.session() as session:
            from billing.redemption_models import SettlementBatch

            for bid in ids:
                b = session.get(SettlementBatch, bid)
                click.echo(f"stl_{b.id} {b.provider_id} {b.quarter} {b.status}: {b.redemptions} redemptions, "
                           f"subsidy {yuan(b.subsidy)} CNY ({b.subsidy} fen)")
                if payment_dir:
                    Path(payment_dir).mkdir(parents=True, exist_ok=True)
                    for fmt in ("csv", "xlsx"):
                        path = Path(payment_dir) / svc.filename(b, fmt)
                        with open(path, "wb") as fh:
                            svc.write_payment_file(session, b, fmt, fh)
        if not ids:
            click.echo(f"settlements {quarter}: nothing to settle")


@click.group()
def redemptions() -> None:
    """Redemptions at the provider (核销)."""


@redemptions.command("expire")
def redemptions_expire() -> None:
    """Expire authorised holds past their expires_at and release them."""
    from billing.policy_file import load_policy
    from billing.redemptions import expire_due
    from kernel.audit import acting_as
    from kernel.db import Database

    settings = cli_settings()
    with acting_as("cli"):
        click.echo(json.dumps(expire_due(Database(settings.database_url), load_policy(settings.policy_path))))


COMMANDS = [settlements, redemptions]
