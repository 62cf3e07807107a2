"""Run Alembic migrations programmatically (`voucher db upgrade`)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def schema_problem(url: str) -> str | None:
    """What keeps the database at `url` from running this code's commands, or None: never
    migrated, migrated to an older revision, or to one this code does not know (newer)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from kernel.db import make_engine

    script = ScriptDirectory.from_config(alembic_config(url))
    heads = set(script.get_heads())
    engine = make_engine(url)
    # A look, not a migration: alembic's "Context impl …" INFO lines would land in the
    # output of whichever command is starting (a key printed on stdout, say).
    alembic_log = logging.getLogger("alembic.runtime.migration")
    level, alembic_log.level = alembic_log.level, logging.WARNING
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        alembic_log.setLevel(level)
        engine.dispose()
    if current == heads:
        return None
    if not current:
        return "database not migrated: run 'voucher db upgrade'"
    known = {rev.revision for rev in script.walk_revisions()}
    if current <= known:
        return (f"database schema outdated (at revision {', '.join(sorted(current))}): "
                "run 'voucher db upgrade'")
    return (f"database at revision {', '.join(sorted(current - known))}, unknown to this version "
            "of voucher (migrated by a newer one?): run the matching version")
