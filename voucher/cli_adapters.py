"""`voucher import` and `voucher pull`: provider accounting into the metering path."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click

from adapters.registry import IMPORT_FORMATS
from voucher.cli_settings import settings as cli_settings


def _config(provider_id: str, fmt: str | None):
    from adapters.config import ConfigError, ProviderConfig, load_provider_config

    settings = cli_settings()
    path = Path(settings.providers_dir) / f"{provider_id}.toml"
    if path.exists():
        try:
            return load_provider_config(path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    if fmt in IMPORT_FORMATS:
        raise click.ClickException(f"no adapter file {path}: it maps tenants to USCCs and sets prices")
    return ProviderConfig(provider_id, fmt or "csv", provider_id, {}, {}, {})


def echo_report(lines: list[str], problems: list[str], limit: int = 20) -> None:
    """A summary on stdout, then the first `limit` problems on stderr (an import's report)."""
    for line in lines:
        click.echo(line)
    for problem in problems[:limit]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > limit:
        click.echo(f"  … {len(problems) - limit} more", err=True)


@click.command("import")
@click.option("--provider", "provider_id", required=True)
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS), required=True)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_cmd(provider_id: str, fmt: str, file: Path) -> None:
    """Ingest a provider export FILE through the push path (idempotent: re-imports are duplicates)."""
    from adapters.pull import check_provider, ingest_extracted, parse_file
    from kernel.db import Database

    config = _config(provider_id, fmt)
    db = Database(cli_settings().database_url)
    try:
        check_provider(db, provider_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        extracted = parse_file(fmt, file.read_text(encoding="utf-8-sig"), config)
    except (ValueError, UnicodeDecodeError) as exc:  # unreadable file or config: say what and where
        raise click.ClickException(f"{file}: {exc}") from None
    with click.progressbar(length=len(extracted.records), label=f"importing {file.name}",
                           show_pos=True, file=sys.stderr) as bar:
        summary = ingest_extracted(db, provider_id, extracted, bar.update,
                                   require_contracts=_require_contracts())
    echo_report(summary.lines(), summary.problems)


def _require_contracts() -> bool:
    """The policy's `require_contracts` (docs/POLICY.md#risk), as the push API applies it."""
    from billing.policy_file import PolicyError, load_policy

    try:
        return load_policy(cli_settings().policy_path).require_contracts
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None


def _pull_with_progress(db, cfg, require_contracts: bool = False):
    """pull_provider with a progress bar on stderr, as `voucher import` shows; the bar opens
    once the adapter has extracted the records, when their number is known."""
    from adapters.pull import pull_provider

    bar = None
    with ExitStack() as stack:
        def sized(total: int) -> None:
            nonlocal bar
            bar = stack.enter_context(click.progressbar(
                length=total, label=f"pulling {cfg.provider_id}", show_pos=True, file=sys.stderr))

        def progress(n: int) -> None:
            bar.update(n)

        return pull_provider(db, cfg, progress=progress, on_extracted=sized,
                             require_contracts=require_contracts)


@click.command("pull")
@click.option("--provider", "provider_id", default=None, help="only this provider")
def pull_cmd(provider_id: str | None) -> None:
    """Pull usage from every provider with a pull adapter (sacct, slurmrestd, prometheus)."""
    from adapters.config import load_all
    from adapters.pull import pullable
    from kernel.db import Database

    settings = cli_settings()
    db = Database(settings.database_url)
    configs = list(pullable(load_all(settings.providers_dir), provider_id))
    if not configs:
        raise click.ClickException(f"no pull adapter configured in {settings.providers_dir}"
                                   + (f" for {provider_id}" if provider_id else ""))
    failed = False
    require_contracts = _require_contracts()
    for cfg in configs:
        try:
            summary = _pull_with_progress(db, cfg, require_contracts)
        except Exception as exc:  # one provider failing must not hide the others' results
            failed = True
            click.echo(f"{cfg.provider_id}: FAILED {type(exc).__name__}: {exc}", err=True)
            continue
        for line in summary.lines():
            click.echo(line)
    if failed:
        raise SystemExit(1)


COMMANDS = [import_cmd, pull_cmd]
