"""`voucher audit verify`: check the audit trail's hash chain."""

from __future__ import annotations

import sys

import click

from voucher.cli_settings import settings as cli_settings


@click.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
@click.option("--anchor", default=None, metavar="SEQ:HASH",
              help="a head printed by an earlier verify; it must still be in the chain "
                   "(catches entries cut from the end)")
def audit_verify(anchor: str | None) -> None:
    """Recompute every hash of the chain; exit 1 on an edited, deleted or reordered entry.

    Prints the head (seq:hash) on its last line: keep it somewhere the database's operators
    cannot write, and pass it back as --anchor next time.
    """
    from kernel.audit import verify_anchor, verify_chain
    from kernel.db import Database

    database = Database(cli_settings().database_url)
    try:
        with database.session() as session:
            report = verify_chain(session)
            problems = list(report.problems or [])
            if anchor:
                seq, sep, hash_ = anchor.partition(":")
                if not sep or not seq.isdigit() or len(hash_) != 64:
                    raise click.BadParameter("expected SEQ:HASH (as printed by verify)",
                                             param_hint="--anchor")
                found = verify_anchor(session, int(seq), hash_)
                if found is not None:
                    problems.append(found)
    finally:
        database.dispose()
    for problem in problems:
        click.echo(f"BREACH {problem}", err=True)
    verdict = "ok" if not problems else f"BROKEN ({len(problems)} problems)"
    click.echo(f"audit chain {verdict}: {report.entries} entries")
    click.echo(f"head {report.head_seq}:{report.head_hash}")
    if problems:
        sys.exit(1)


COMMANDS = (audit,)
