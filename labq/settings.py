"""One typed settings object, read in one place.

Precedence, lowest first: the defaults below, the YAML config file
(``LABQ_CONFIG``, else ``config/labq.yaml`` when it exists), ``LABQ_*``
environment variables, then explicit overrides (command-line options).
Nothing here runs at import time.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from labq.errors import ConfigError

ENV_PREFIX = "LABQ_"
DEFAULT_CONFIG_FILE = Path("config/labq.yaml")
SECRET_FIELDS = frozenset({"flower_password"})
URL_FIELDS = frozenset({"broker_url", "result_backend"})
#: Fields that also take a duration such as ``7d`` or ``1h30m``.
DURATION_FIELDS = frozenset({"run_retention"})
# Added to the largest hard limit to get the broker's visibility timeout: a
# task may still be shutting down or acking after its hard limit fired.
VISIBILITY_MARGIN = 60.0


@dataclass(frozen=True)
class Settings:
    """Everything a labq client, worker or embedded stack is configured by.

    Every field can be set by ``LABQ_<FIELD NAME IN CAPITALS>`` or by the key
    of the same name in the config file.
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Defaults to ``broker_url`` when empty.
    result_backend: str = ""
    testbed: Path = Path("config/testbed.yaml")
    #: Default soft limit (seconds): the task gets SoftTimeLimitExceeded.
    soft_time_limit: float = 300.0
    #: Default hard limit (seconds): the pool kills the child.
    time_limit: float = 360.0
    #: The largest hard limit any task may ask for; the broker's visibility
    #: timeout is derived from it.
    max_time_limit: float = 3600.0
    #: Prefork children per worker.
    concurrency: int = 4
    #: Niceness added to each prefork child (0 to 19): under CPU contention the
    #: worker's main process, which dispatches tasks, enforces time limits and
    #: writes heartbeats, runs before the tasks it serves.
    child_nice: int = 10
    #: The queue for tasks whose device names none, consumed by every worker.
    default_queue: str = "labq"
    #: A soft shutdown (SIGQUIT, a second Ctrl-C) gives running tasks this
    #: long before they are requeued; a plain SIGTERM waits without a limit.
    shutdown_timeout: float = 30.0
    #: Seconds a task result is kept in Redis (a task of a run: ``run_retention``).
    result_expires: int = 86400
    #: How long a run stays in Redis after its last change (a submit, a task's
    #: start or end): its record, task list, results, log and done streams.
    #: Seconds, or a duration such as ``7d`` or ``12h``.
    run_retention: float = 7 * 86400.0
    #: A worker that has not written its heartbeat for this long is dead: its
    #: running tasks become lost (or run again, if idempotent). It fences
    #: itself (kills its running tasks) after 0.8 of this without Redis.
    worker_ttl: float = 10.0
    #: Seconds a cancel (Run.cancel, Ctrl-C, ``labq cancel``) gives running
    #: tasks after the soft interrupt before it kills them.
    cancel_grace: float = 5.0
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    #: Where ``labq exporter`` serves the lab's Prometheus metrics (/metrics).
    exporter_address: str = "127.0.0.1"
    exporter_port: int = 9808
    flower_user: str = "labq"
    flower_password: str = ""
    #: Where the embedded stack keeps Redis data, configs and logs.
    state_dir: Path = Path(".labq")
    #: Path of a redis-server binary; empty means PATH, then the wheel's.
    redis_server: str = ""
    #: TLS for ``rediss://`` URLs (docs/redis.md): the CA bundle that signed
    #: Redis's certificate (empty: the system's CAs), and this side's client
    #: certificate and key when Redis asks for one (``tls-auth-clients``).
    redis_tls_ca: str = ""
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    #: Seconds a run keeps retrying its Redis reads while Redis is away (a
    #: restart) before it gives up with BrokerUnavailable.
    redis_retry_timeout: float = 60.0
    #: Share each queue's slots fairly between runs (labq.fairshare): a
    #: run's tasks wait in its own backlog, not on the queue's list.
    fair_share: bool = True
    #: Dispatches a run that starts waiting may take in a row before the
    #: waiting runs alternate (its head start over runs already waiting).
    fair_credit: int = 16
    #: Seconds after which a waiting run's next task goes first, whatever
    #: its priority: how long a low run can wait between two of its tasks.
    priority_age: float = 60.0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    @property
    def visibility_timeout(self) -> float:
        """Seconds before Redis hands an unacked message to another worker.

        It must exceed the longest a task can run, or a running task is
        delivered a second time (kombu#337, celery#5935).
        """
        return self.max_time_limit + self.shutdown_timeout + VISIBILITY_MARGIN

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, coerced and validated."""
        return Settings(**{**_as_dict(self), **_coerce_all(changes, "override")})

    def to_env(self) -> dict[str, str]:
        """These settings as ``LABQ_*`` variables, for a child process."""
        return {f"{ENV_PREFIX}{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}

    def masked(self) -> dict[str, str]:
        """Effective settings as strings, with every secret masked."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                out[f.name] = "****" if value else ""
            elif f.name in URL_FIELDS:
                out[f.name] = mask_url(str(value))
            else:
                out[f.name] = str(value)
        out["visibility_timeout"] = str(self.visibility_timeout)
        return out

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        config_file: Path | str | None = None,
        **overrides: Any,
    ) -> Settings:
        """Read defaults, then the config file, then ``env``, then ``overrides``.

        ``env`` defaults to ``os.environ``. ``config_file`` defaults to
        ``LABQ_CONFIG``, else ``config/labq.yaml`` when it exists.
        """
        if env is None:
            env = os.environ
            warn_unknown_env(env)
        values: dict[str, Any] = {}
        path = Path(config_file or env.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_FILE)
        named_by = ("--config" if config_file else f"{ENV_PREFIX}CONFIG"
                    if env.get(f"{ENV_PREFIX}CONFIG") else "config file")
        if path.exists() or named_by != "config file":
            values.update(_coerce_all(_read_config(path, named_by), f"{path}"))
        from_env = {
            f.name: env[f"{ENV_PREFIX}{f.name.upper()}"]
            for f in fields(cls)
            if f"{ENV_PREFIX}{f.name.upper()}" in env
        }
        values.update(_coerce_all(from_env, "environment"))
        values.update(
            _coerce_all({k: v for k, v in overrides.items() if v is not None}, "override")
        )
        settings = cls(**values)
        testbed = find_testbed(settings.testbed, path if path.exists() else None)
        return settings if testbed == settings.testbed else settings.replace(testbed=testbed)


def testbed_candidates(testbed: Path, config_file: Path | None = None) -> list[Path]:
    """Where a relative ``testbed`` path is looked for, in order: the working
    directory and each of its parents, beside the config file and in its
    parent (``config/labq.yaml`` names ``config/testbed.yaml``), and in the
    project that holds the ``tasks`` package (so a testscript run from
    ``/tmp`` finds the lab of the tasks it imports)."""
    if testbed.is_absolute():
        return [testbed]
    cwd = Path.cwd()
    roots = [cwd, *cwd.parents]
    if config_file is not None:
        here = config_file.resolve().parent
        roots += [here, here.parent]
    spec = importlib.util.find_spec("tasks") if "tasks" not in sys.modules else None
    origin = getattr(sys.modules.get("tasks"), "__file__", None) or (spec and spec.origin)
    if origin:
        roots.append(Path(origin).resolve().parent.parent)
    seen: list[Path] = []
    for root in roots:
        if root / testbed not in seen:
            seen.append(root / testbed)
    return seen


def find_testbed(testbed: Path, config_file: Path | None = None) -> Path:
    """The first of :func:`testbed_candidates` that exists, else ``testbed``
    unchanged (its loader then says where it looked)."""
    if testbed.is_absolute() or testbed.exists():
        return testbed
    return next((c for c in testbed_candidates(testbed, config_file) if c.exists()), testbed)


#: ``LABQ_*`` variables that are not settings: the command line's own options
#: (README, "Settings"), and what docker-compose.yml reads.
CLI_ONLY_ENV = frozenset({
    "LABQ_CONFIG", "LABQ_REDIS_PORT", "LABQ_QUEUES", "LABQ_WORKER_NAME", "LABQ_LOGLEVEL",
    "LABQ_SIM_CONTROL_PORT", "LABQ_SIM_READY_FILE", "LABQ_REDIS_PASSWORD",
    "LABQ_OWNER", "LABQ_RESERVATION_TOKEN",
})
_warned: set[str] = set()


def unknown_env(env: Mapping[str, str]) -> dict[str, str]:
    """``LABQ_*`` names in ``env`` that look like a misspelt setting, each with
    the setting it is closest to. Names close to none (a testbed's own
    ``%ENV{LABQ_LAB_PASSWORD}``) are not labq's to judge."""
    known = [f"{ENV_PREFIX}{f.name.upper()}" for f in fields(Settings)] + sorted(CLI_ONLY_ENV)
    suffixes = {name[len(ENV_PREFIX):]: name for name in known}
    out = {}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known:
            # Close after the prefix: a typo, not just another *_PASSWORD.
            close = difflib.get_close_matches(name[len(ENV_PREFIX):], suffixes, n=1, cutoff=0.85)
            if close:
                out[name] = suffixes[close[0]]
    return out


def warn_unknown_env(env: Mapping[str, str]) -> None:
    """Say once per process, on stderr, which ``LABQ_*`` names are misspelt."""
    for name, close in sorted(unknown_env(env).items()):
        if name not in _warned:
            _warned.add(name)
            print(f"labq: warning: {name} is not a setting and is ignored; did you mean "
                  f"{close}?", file=sys.stderr, flush=True)


def mask_url(url: str) -> str:
    """``redis://:secret@host`` becomes ``redis://:****@host``, whatever the
    password holds (an unencoded ``/`` or ``@`` included)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, host = rest.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
    return f"{scheme}://{user}****@{host}"


def _as_dict(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def _read_config(path: Path, named_by: str) -> dict[str, Any]:
    """The settings file as a mapping; ``named_by`` is what chose the file
    (``--config``, ``LABQ_CONFIG`` or the default), for the error."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(named_by, str(path), "no such file") from exc
    except OSError as exc:
        raise ConfigError(named_by, str(path), f"cannot read it: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        # One line: the problem and where, not pyyaml's multi-line report.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(named_by, str(path), f"not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(named_by, str(path), "the top level must be a mapping")
    return data


_FIELD_TYPES: dict[str, type] = {
    "str": str,
    "Path": Path,
    "float": float,
    "int": int,
    "bool": bool,
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce_all(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                key, value, f"unknown setting (from {source}); known: {', '.join(sorted(known))}"
            )
        out[key] = _coerce(known[key], value, source)
    return out


def _coerce(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind = _FIELD_TYPES[str(f.type)]
    name = f"{ENV_PREFIX}{f.name.upper()}"
    if f.name in DURATION_FIELDS and isinstance(value, str):
        return parse_duration(value, f"{name} (from {source})")
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(name, value, f"expected a boolean: one of {', '.join(_TRUE + _FALSE)} "
                                       f"(from {source})")
    if isinstance(value, bool) or (kind is not str and kind is not Path and value == ""):
        raise ConfigError(name, value, f"expected {kind.__name__} (from {source})")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(name, value, f"expected {kind.__name__} (from {source})") from exc


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds in ``value``: a number of seconds, or ``90s``, ``30m``, ``2h``,
    ``1d`` and sums of them (``1h30m``); :class:`ConfigError` naming the
    value when it is none, or not positive."""
    if isinstance(value, bool):
        raise ConfigError(what, value, "expected a duration such as 90, 90s, 30m, 2h or 1h30m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        raw = str(value).strip().lower()
        if raw.startswith("-"):
            raise ConfigError(what, value, "must be a positive duration")
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd]?)", raw)
        if not raw or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd]?)\s*", "", raw):
            raise ConfigError(what, value,
                              "expected a duration such as 90, 90s, 30m, 2h or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(what, value, "must be a positive duration")
    return seconds


def _validate(s: Settings) -> None:
    def bad(name: str, reason: str) -> ConfigError:
        return ConfigError(f"{ENV_PREFIX}{name.upper()}", getattr(s, name), reason)

    for name in ("broker_url", "result_backend"):
        url = getattr(s, name)
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise bad(name, "must be a redis://, rediss:// or unix:// URL")
    for name in ("soft_time_limit", "time_limit", "max_time_limit", "shutdown_timeout"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be a positive number of seconds")
    if s.soft_time_limit >= s.time_limit:
        raise bad(
            "soft_time_limit",
            f"must be below LABQ_TIME_LIMIT={s.time_limit!r}, or the soft limit never fires",
        )
    if s.time_limit > s.max_time_limit:
        raise bad("time_limit", f"exceeds LABQ_MAX_TIME_LIMIT={s.max_time_limit!r}")
    if s.concurrency < 1:
        raise bad("concurrency", "must be at least 1")
    if not 0 <= s.child_nice <= 19:
        raise bad("child_nice", "must be 0 to 19 (added to the prefork children's niceness)")
    if s.worker_ttl < 2:
        raise bad("worker_ttl", "must be at least 2 seconds (heartbeats go every ttl/5)")
    if s.redis_retry_timeout < 0:
        raise bad("redis_retry_timeout", "must be 0 or more seconds")
    if s.fair_credit < 0:
        raise bad("fair_credit", "must be 0 or more dispatches")
    if s.priority_age <= 0:
        raise bad("priority_age", "must be a positive number of seconds")
    if s.cancel_grace < 0:
        raise bad("cancel_grace", "must be 0 or more seconds")
    if bool(s.redis_tls_cert) != bool(s.redis_tls_key):
        raise bad("redis_tls_cert" if s.redis_tls_key else "redis_tls_key",
                  "LABQ_REDIS_TLS_CERT and LABQ_REDIS_TLS_KEY go together")
    if not 0 <= s.flower_port <= 65535:
        raise bad("flower_port", "must be a TCP port, 0 to 65535")
    if not 0 <= s.exporter_port <= 65535:
        raise bad("exporter_port", "must be a TCP port, 0 to 65535")
    if s.result_expires < 1:
        raise bad("result_expires", "must be at least 1 second")
    if not s.run_retention >= 1:
        raise bad("run_retention", "must be at least 1 second (a duration such as 7d)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", s.default_queue):
        raise bad("default_queue", "use letters, digits, '.', '_' or '-'")

