"""`voucher webhooks`: the webhook delivery worker in a process of its own (docs/API.md#webhooks)."""

from __future__ import annotations

import signal
import threading

import click

from voucher.cli_settings import database, settings


@click.command()
@click.option("--once", is_flag=True, help="deliver what is due now, then exit")
@click.option("--poll", default=1.0, show_default=True, type=float,
              help="seconds between looks for due deliveries when idle")
@click.option("--batch", default=10, show_default=True, type=click.IntRange(1, 100),
              help="deliveries leased at a time")
def webhooks(once: bool, poll: float, batch: int) -> None:
    """Send webhook deliveries until SIGTERM; any number of workers may run."""
    from adapters.webhooks import deliver_until_idle, run
    from kernel.logging import configure_logging
    from voucher.app import webhook_retry

    config = settings()
    configure_logging(config.log_json, config.log_level.upper())
    db, retry = database(), webhook_retry(config)
    if once:
        click.echo(f"{deliver_until_idle(db, retry, batch)} deliveries attempted")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(db, retry, stop, poll=poll, limit=batch)
