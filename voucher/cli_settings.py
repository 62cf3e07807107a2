"""The CLI's settings: read from the environment once per command line (the CLI is a
composition root, like voucher/app.py create_app), then handed to what the command calls."""

from __future__ import annotations

import click

from config.settings import Settings

_KEY = "voucher.settings"


def settings() -> Settings:
    """This invocation's settings (read on first use; shared by the group and its command)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:  # called outside a command (a library use): read them now
        return Settings.from_env()
    if _KEY not in ctx.meta:  # `meta` is shared by every context of one invocation
        ctx.meta[_KEY] = Settings.from_env()
    return ctx.meta[_KEY]


def database():
    """The database the settings name."""
    from kernel.db import Database

    return Database(settings().database_url)
