"""The ``labq`` command line: a thin click layer over settings, stack and app.

Every option can also be set by the ``LABQ_*`` variable shown in ``--help``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from labq.embedded.sim.command import sim as sim_command
from labq.errors import LabqError
from labq.ops.health_commands import COMMANDS as HEALTH_COMMANDS
from labq.ops.reservation_commands import COMMANDS as RESERVATION_COMMANDS
from labq.ops.run_commands import COMMANDS as RUN_COMMANDS
from labq.settings import Settings

#: The program's name, as its error lines start.
PROG = "labq"
#: Settings' own defaults: the help text shows these, never a copy.
DEFAULTS = Settings()


class Context:
    def __init__(self, config: Path | None) -> None:
        self.config = config

    def settings(self, **overrides: Any) -> Settings:
        return Settings.load(config_file=self.config, **overrides)


pass_ctx = click.make_pass_decorator(Context)


def _option(*decls: str, envvar: str, **kw: Any) -> Any:
    return click.option(*decls, envvar=envvar, show_envvar=True, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_option("--config", "config", envvar="LABQ_CONFIG", default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help="YAML settings file (default: config/labq.yaml when present).")
@click.version_option(package_name="labq")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Fan device tasks out to prefork workers across lab hosts."""
    if ctx.get_parameter_source("config") is click.core.ParameterSource.ENVIRONMENT:
        config = None  # Settings reads LABQ_CONFIG itself, and names it in its errors
    ctx.obj = Context(config)


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--example", is_flag=True,
              help="Print the commented example config file, with the defaults.")
@pass_ctx
def config_cmd(ctx: Context, as_json: bool, example: bool) -> None:
    """Print the effective settings, secrets masked."""
    if example:
        from labq.ops.settings_example import example_config

        click.echo(example_config(), nl=False)
        return
    values = ctx.settings().masked()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(map(len, values))
    for key, value in values.items():
        click.echo(f"{key.ljust(width)}  {value}")


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so both tear the stack down."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_interrupts() -> None:
    # Teardown is bounded by timeouts; a second Ctrl-C must not cut it short
    # and leave processes behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@main.command()
@_option("--redis-port", envvar="LABQ_REDIS_PORT", type=int, default=6399, show_default=True,
         help="Port for the embedded Redis (0 picks a free one).")
@_option("--flower-port", envvar="LABQ_FLOWER_PORT", type=int, default=None,
         help=f"Port for Flower (0 picks a free one).  [default: {DEFAULTS.flower_port}]")
@_option("--exporter-port", envvar="LABQ_EXPORTER_PORT", type=int, default=None,
         help=f"Port for the metrics exporter (0 picks a free one).  "
              f"[default: {DEFAULTS.exporter_port}]")
@_option("--concurrency", envvar="LABQ_CONCURRENCY", type=int, default=None,
         help=f"Prefork children per worker.  [default: from settings, {DEFAULTS.concurrency}]")
@_option("--testbed", envvar="LABQ_TESTBED", default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help=f"Testbed of the simulated lab.  [default: {DEFAULTS.testbed}]")
@pass_ctx
def up(ctx: Context, redis_port: int, flower_port: int | None, exporter_port: int | None,
       concurrency: int | None, testbed: Path | None) -> None:
    """Run Redis, two lab-host workers, Flower and the metrics exporter on
    loopback until Ctrl-C."""
    from labq.embedded.stack import Stack

    settings = ctx.settings(flower_port=flower_port, exporter_port=exporter_port,
                            concurrency=concurrency, testbed=testbed)
    stack = Stack(settings, redis_port=redis_port, with_exporter=True)
    with _terminate_on_sigterm():
        try:
            click.echo("starting the simulated lab, Redis, workers lab-a and lab-b, Flower and "
                       "the metrics exporter ...")
            stack.start()
            _print_stack(stack)
            while True:
                stack.check_alive()
                time.sleep(1.0)
        except KeyboardInterrupt:
            click.echo("\nstopping ...")
        finally:
            _ignore_interrupts()
            stack.stop()
    click.echo("stopped; no process of the stack is left")


def _print_stack(stack: Any) -> None:
    s = stack.settings
    if stack.sim is not None:
        click.echo(f"lab      {len(stack.sim.ports)} simulated devices from {s.testbed} "
                   f"(control {stack.sim.control_url})")
    click.echo(f"Redis    {stack.redis.host}:{stack.redis.port} (password protected, AOF on)")
    click.echo(f"workers  {', '.join(stack.node_names)}")
    click.echo(f"Flower   {stack.flower_url}  user {s.flower_user!r} "
               f"password {s.flower_password!r} (printed once)")
    if stack.with_exporter:
        click.echo(f"metrics  {stack.metrics_url}  (Prometheus; labq exporter)")
    click.echo(f"logs     {stack.log_dir}")
    click.echo("\nTo submit from another shell:\n  " + stack.export_line())
    sys.stdout.flush()


@main.command()
@_option("--queues", "-Q", envvar="LABQ_QUEUES", default="",
         help="Comma-separated lab segments this host serves; the default queue is always "
              "added.  [default: the default queue only]")
@_option("--name", "-n", envvar="LABQ_WORKER_NAME", default=None,
         help="Worker name, shown in Flower and outcomes.  [default: first queue, else 'worker']")
@_option("--concurrency", "-c", envvar="LABQ_CONCURRENCY", type=int, default=None,
         help=f"Prefork children.  [default: from settings, {DEFAULTS.concurrency}]")
@_option("--loglevel", "-l", envvar="LABQ_LOGLEVEL", default="INFO", show_default=True,
         help="The worker's log level: DEBUG, INFO, WARNING, ERROR.")
@pass_ctx
def worker(ctx: Context, queues: str, name: str | None, concurrency: int | None,
           loglevel: str) -> None:
    """Run a prefork worker for one lab host (wraps ``celery worker``)."""
    from labq.embedded.stack import PROJECT_ROOT, child_env, worker_argv

    settings = ctx.settings(concurrency=concurrency)
    qs = [q.strip() for q in queues.split(",") if q.strip()]
    _warn_unserved(settings, qs)
    argv = worker_argv(settings, name or (qs[0] if qs else "worker"), qs, loglevel=loglevel)
    env = child_env(settings)
    os.chdir(PROJECT_ROOT)
    os.execve(argv[0], argv, env)


def _warn_unserved(settings: Settings, queues: list[str]) -> None:
    """Warn about a queue that no device of the testbed is on: a typo in -Q
    leaves the worker serving nothing, silently."""
    from labq.devices.testbed_yaml import load_testbed

    try:
        testbed = load_testbed(settings.testbed)
    except LabqError as exc:
        click.echo(f"{PROG}: warning: {exc}; device tasks on this worker will fail", err=True)
        return
    used = {d.queue for d in testbed if d.queue}
    for queue in queues:
        if queue not in used and queue != settings.default_queue:
            known = ", ".join(sorted(used)) or "none"
            click.echo(f"{PROG}: warning: no device in {settings.testbed} is on queue "
                       f"{queue!r} (its queues: {known}); this worker gets no device task "
                       "from it", err=True)


@main.command()
@_option("--address", envvar="LABQ_FLOWER_ADDRESS", default=None,
         help=f"Address to bind.  [default: {DEFAULTS.flower_address}]")
@_option("--port", envvar="LABQ_FLOWER_PORT", type=int, default=None,
         help=f"Port to serve on.  [default: {DEFAULTS.flower_port}]")
@click.option("--no-auth", is_flag=True,
              help="Serve without basic auth, on loopback only (a warning says so).")
@pass_ctx
def flower(ctx: Context, address: str | None, port: int | None, no_auth: bool) -> None:
    """Run Flower with basic auth (wraps ``celery flower``).

    The password comes from LABQ_FLOWER_PASSWORD; without one Flower does not
    start, unless --no-auth is given and it binds to loopback.
    """
    from labq.embedded.stack import PROJECT_ROOT, child_env, flower_argv

    settings = ctx.settings(flower_address=address, flower_port=port)
    loopback = settings.flower_address in ("127.0.0.1", "::1", "localhost")
    if not settings.flower_password:
        if not no_auth:
            raise click.UsageError(
                "Flower needs LABQ_FLOWER_PASSWORD (and LABQ_FLOWER_USER, default "
                f"{DEFAULTS.flower_user!r}): it would otherwise serve the lab without auth; "
                "--no-auth serves without it on loopback")
        if not loopback:
            raise click.UsageError(
                f"Flower on {settings.flower_address!r} needs LABQ_FLOWER_PASSWORD: "
                "--no-auth is for loopback only")
        click.echo(f"{PROG}: warning: Flower on {settings.flower_address}:{settings.flower_port} "
                   "serves without auth (--no-auth): anyone on this host can see and "
                   "revoke tasks", err=True)
    argv = flower_argv(settings)
    env = child_env(settings)
    os.chdir(PROJECT_ROOT)
    os.execve(argv[0], argv, env)


@main.command()
@click.option("--keep", is_flag=True, help="Leave the stack up after the demo, until Ctrl-C.")
@_option("--testbed", envvar="LABQ_TESTBED", default=None,
         type=click.Path(dir_okay=False, path_type=Path),
         help="Testbed of the simulated lab.  [default: config/testbed.yaml]")
@pass_ctx
def demo(ctx: Context, keep: bool, testbed: Path | None) -> None:
    """Start the stack and simulated lab, run examples/testscript.py, tear down."""
    from labq.embedded.demo import run_demo

    with _terminate_on_sigterm():
        code = run_demo(ctx.settings(concurrency=ctx.settings().concurrency, testbed=testbed),
                        keep=keep)
    sys.exit(code)


@main.command()
@_option("--testbed", envvar="LABQ_TESTBED", default=None,
         type=click.Path(dir_okay=False, path_type=Path), help="Testbed YAML.  [default: from settings]")
@_option("--broker", envvar="LABQ_BROKER_URL", default=None,
         help="Redis URL of the lab.  [default: from settings]")
@click.option("--labels", "labels", multiple=True, metavar="NAME=VALUE",
              help="Only devices with this label (repeat for more; a comma means any of).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def devices(ctx: Context, testbed: Path | None, broker: str | None, labels: tuple[str, ...],
            as_json: bool) -> None:
    """List every device with its health, queue, labels, lease holders and waiters."""
    from labq.ops.device_list import device_rows, parse_labels, print_device_rows, waiting_rows

    settings = ctx.settings(testbed=testbed, broker_url=broker)
    rows = device_rows(settings, parse_labels(labels))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_device_rows(rows, waiting=waiting_rows(settings))


@main.command()
@click.argument("host")
@click.argument("size", metavar="N", type=int)
@pass_ctx
def scale(ctx: Context, host: str, size: int) -> None:
    """Grow or shrink worker HOST's prefork pool to N children, live.

    HOST is the worker's name (lab-a) or its full node name (lab-a@host).
    Not for a worker started with --autoscale: change its range instead.
    """
    from labq.app import create_app
    from labq.ops.scaling import resolve_node, scale_pool

    if size < 1:
        raise click.BadParameter(f"{size}: a pool needs at least 1 child", param_hint="N")

    app = create_app(ctx.settings())
    try:
        change = scale_pool(app, resolve_node(app, host), size)
    finally:
        app.close()
    click.echo(f"{change.node}: pool {change.before} -> {change.after}")
    if change.after != size:
        raise click.ClickException(f"{change.node} has {change.after} children, not {size} "
                                   "(a shrink removes idle children only)")


@main.command()
@_option("--address", envvar="LABQ_EXPORTER_ADDRESS", default=None,
         help=f"Address to serve on.  [default: {DEFAULTS.exporter_address}]")
@_option("--port", envvar="LABQ_EXPORTER_PORT", type=int, default=None,
         help=f"Port to serve on (0 picks a free one).  [default: {DEFAULTS.exporter_port}]")
@_option("--broker", envvar="LABQ_BROKER_URL", default=None,
         help="Redis URL of the lab (the flower user's rights will do).  "
              "[default: from settings]")
@pass_ctx
def exporter(ctx: Context, address: str | None, port: int | None, broker: str | None) -> None:
    """Serve the lab's Prometheus metrics at /metrics: device health, leases
    and waiters, queue depths and consumers, worker slots, open runs' tasks."""
    from labq.ops.metrics import serve

    settings = ctx.settings(exporter_address=address, exporter_port=port, broker_url=broker)
    try:
        serve(settings, settings.exporter_address, settings.exporter_port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {settings.exporter_address}:"
                                   f"{settings.exporter_port}: {exc.strerror}") from exc
    except KeyboardInterrupt:
        pass


@main.command()
@_option("--broker", envvar="LABQ_BROKER_URL", default=None,
         help="Redis URL of the lab.  [default: from settings]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@pass_ctx
def status(ctx: Context, broker: str | None, as_json: bool) -> None:
    """Workers, queue depths, running tasks and device leases, from Redis."""
    from labq.ops.lab_status import collect, print_status

    report = collect(ctx.settings(broker_url=broker))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_status(report)


@main.command()
@click.argument("run_id", metavar="RUN_ID_OR_PREFIX")
@_option("--grace", envvar="LABQ_CANCEL_GRACE", type=float, default=None,
         help="Seconds running tasks get after the soft interrupt before the kill.  "
              "[default: from settings]")
@_option("--broker", envvar="LABQ_BROKER_URL", default=None,
         help="Redis URL of the lab.  [default: from settings]")
@pass_ctx
def cancel(ctx: Context, run_id: str, grace: float | None, broker: str | None) -> None:
    """Cancel a run from another shell, as Run.cancel does.

    Queued tasks never start, running ones get the soft interrupt, then the
    hard kill after the grace. RUN_ID_OR_PREFIX is the id a run prints when it
    starts, or enough of its start to name one run.
    """
    from labq.app import create_app
    from labq.client.cancel import cancel_by_id
    from labq.client.run_info import one_run
    from labq.redis_client import connect

    settings = ctx.settings(broker_url=broker, cancel_grace=grace)
    client = connect(settings.backend_url, settings, socket_timeout=10, socket_connect_timeout=5)
    app = create_app(settings)
    try:
        run = one_run(client, run_id, settings.run_retention)
        click.echo(f"cancelling run {run.id} ({run.script} on {run.host}, pid {run.pid}) ...")
        done = cancel_by_id(client, app.control, run, settings.cancel_grace,
                            settings.run_retention)
    finally:
        app.close()
        client.close()
    click.echo(f"cancelled run {done.run_id}: {done.dropped} queued dropped, "
               f"{done.interrupted} running interrupted, {done.killed} killed after "
               f"{settings.cancel_grace:g} s")


main.add_command(sim_command)
for _command in (*RESERVATION_COMMANDS, *RUN_COMMANDS, *HEALTH_COMMANDS):
    main.add_command(_command)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: every error, labq's or click's, is one line
    ``labq: error: ...`` and exit status 2. ``argv``: the arguments (default
    ``sys.argv[1:]``)."""
    try:
        main(args=argv, standalone_mode=False)
    except LabqError as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    run()
