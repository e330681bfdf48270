"""``labq --help`` is even: every option of every command says what it does."""

from __future__ import annotations

import click

from labq import cli


def commands() -> dict[str, click.Command]:
    return dict(cli.main.commands)


def test_every_option_has_help_and_no_empty_default_is_shown() -> None:
    bare = []
    for name, command in commands().items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                bare.append(f"{name} {param.opts[0]}")
            if isinstance(param, click.Option) and param.show_default and param.default == "":
                bare.append(f"{name} {param.opts[0]} shows default: \"\"")
    assert bare == []


def test_the_stack_and_the_views_take_the_testbed_and_the_broker() -> None:
    options = {name: {o for p in c.params for o in p.opts} for name, c in commands().items()}
    assert "--testbed" in options["up"] and "--testbed" in options["demo"]
    assert "--broker" in options["devices"] and "--broker" in options["status"]
    assert "--broker" in options["cancel"]


def test_the_cli_only_variables_are_the_ones_the_commands_read() -> None:
    # Settings warns about LABQ_* names it does not know; the commands' own
    # must be on its list, and nothing else may be (compose's password aside).
    from labq.settings import CLI_ONLY_ENV, Settings

    read = {p.envvar for c in [cli.main, *commands().values()] for p in c.params
            if isinstance(p.envvar, str)}
    assert read - set(Settings().to_env()) == CLI_ONLY_ENV - {"LABQ_REDIS_PASSWORD"}
