"""`voucher simulate`: a year replayed under another policy file, read-only (docs/API.md#cli,
docs/POLICY.md#simulation)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from voucher.cli_settings import settings as cli_settings


@click.command()
@click.option("--policy", "policy_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the policy file (TOML) to simulate")
@click.option("--year", type=click.IntRange(2000, 2100), default=None,
              help="calendar year (default: this year, Asia/Shanghai)")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="the workbook to write (.xlsx; replaced if it exists)")
def simulate(policy_file: Path, year: int | None, output: Path) -> None:
    """Replay YEAR's claims and redemptions under POLICY and write actual vs simulated payable
    per enterprise, totals and the budget impact. Reads only: nothing is written."""
    from billing.policy import PolicyError
    from billing.policy_file import load_policy
    from billing.simulation import count, read_only
    from billing.simulation import simulate as replay
    from billing.simulation_report import write_xlsx
    from kernel.db import Database
    from kernel.money import yuan
    from kernel.periods import local_year

    settings = cli_settings()
    try:
        policy = load_policy(policy_file)
    except PolicyError as exc:
        raise click.ClickException(f"--policy: {exc}") from None
    actual = load_policy(settings.policy_path)
    year = year or local_year(datetime.now(UTC), actual.timezone)
    db = Database(settings.database_url)
    try:
        with db.session() as session, read_only(session):
            total = count(session, year)
            with click.progressbar(length=total, label=f"simulate {year}", file=sys.stderr,
                                   show_pos=True) as bar:
                sim = replay(session, actual, policy, year, progress=bar.update)
    finally:
        db.dispose()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")
    write_xlsx(sim, str(partial))
    partial.replace(output)  # readers never see half a file
    click.echo(f"simulate {year}: policy {policy.id} (actual {actual.id}) · {len(sim.enterprises)} enterprises"
               f" · {sim.claims} claims · {sim.redemptions} redemptions -> {output}")
    click.echo(f"actual {yuan(sim.actual, '¥')} · simulated {yuan(sim.simulated, '¥')} · difference "
               f"{yuan(sim.difference, '¥')} · cap hits {sim.actual_cap_hits} → {sim.simulated_cap_hits}")
    if sim.budget_annual is not None:
        left = sim.budget_left or 0
        click.echo(f"budget {yuan(sim.budget_annual, '¥')}: " + (f"{yuan(left, '¥')} left" if left >= 0
                   else f"over by {yuan(-left, '¥')}") + f" · not funded {yuan(sim.unfunded, '¥')}")
    else:
        click.echo("budget: none in the simulated policy (unlimited)")


COMMANDS = [simulate]
