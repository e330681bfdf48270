"""What the admin's click commands outside ``labq.cli`` share with it: the
``--broker`` option and the settings that the group's context reads."""

from __future__ import annotations

from typing import Any

import click

from labq.settings import Settings

#: ``--broker``, as every command that reads the lab's Redis takes it.
broker_option = click.option("--broker", envvar="LABQ_BROKER_URL", show_envvar=True,
                             default=None, help="Redis URL of the lab.  [default: from settings]")


def command_settings(**overrides: Any) -> Settings:
    """The settings, as the group's context (``labq.cli.Context``) reads them, with ``overrides``."""
    return click.get_current_context().find_root().obj.settings(**overrides)  # type: ignore[no-any-return]
