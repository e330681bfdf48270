"""Reading a pyATS testbed into :mod:`labq.devices.testbed`'s types, validated.

:func:`load_testbed` reads a YAML file, :func:`from_pyats` a
``pyats.topology.Testbed`` object; both go through the same validation
(:func:`build_testbed`). Every error is a :class:`~labq.errors.TestbedError`
that names the file, the device and the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from labq.devices.testbed import (
    BUILTIN_LABELS,
    DRIVERS,
    LABQ_KEYS,
    PROTOCOLS,
    SIM_KEYS,
    TOP_LEVEL_KEYS,
    Connection,
    Credentials,
    Device,
    Testbed,
)
from labq.errors import TestbedError

_ENV = re.compile(r"%ENV\{([^}]*)\}")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]+")
_LABEL = re.compile(r"[A-Za-z0-9_.-]+")
_NO_VALUE: Any = object()
# libyaml's safe loader is ~10x faster: a 1,000-device lab loads in a blink.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_testbed(path: Path | str) -> Testbed:
    """Read and validate a pyATS testbed YAML file; errors are :class:`TestbedError`."""
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text()
    except FileNotFoundError:
        where = "" if p.is_absolute() else f" in {Path.cwd()} or its parents"
        raise TestbedError(source, f"no such testbed file{where}; point LABQ_TESTBED (or "
                           "testbed: in the config file, or --testbed) at it") from None
    except OSError as exc:
        raise TestbedError(source, f"cannot read the testbed: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # a safe loader (libyaml when present)
    except yaml.YAMLError as exc:
        # Only the problem and its position: the offending line may hold a password.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise TestbedError(source, f"not valid YAML{at}: {problem}") from None
    return build_testbed(data, source, p, default_name=p.stem)


def from_pyats(tb: Any) -> Testbed:
    """Convert a ``pyats.topology.Testbed`` (duck-typed: ``.name``, ``.devices``
    whose values have ``.os``, ``.type``, ``.connections``, ``.credentials``,
    ``.custom``) with the same validation as a file."""
    name = str(getattr(tb, "name", None) or "testbed")
    file = getattr(tb, "testbed_file", None)
    path = Path(file) if isinstance(file, (str, Path)) else None
    source = str(path) if path else f"pyATS testbed {name!r}"
    devices = getattr(tb, "devices", None)
    items = devices.items() if isinstance(devices, Mapping) else (
        (getattr(d, "name", None), d) for d in devices or ())
    raw_devices: dict[Any, Any] = {}
    for dev_name, dev in items:
        raw: dict[str, Any] = {}
        for attr in ("os", "type", "platform", "connections", "credentials", "custom"):
            value = getattr(dev, attr, None)
            if value is not None and value != {}:
                raw[attr] = _plain(value)
        raw_devices[dev_name] = raw
    top: dict[str, Any] = {"name": name}
    if getattr(tb, "credentials", None):
        top["credentials"] = _plain(tb.credentials)
    return build_testbed({"testbed": top, "devices": raw_devices}, source, path, default_name=name)


def as_testbed(testbed: Testbed | Path | str | Any) -> Testbed:
    """A :class:`Testbed` from a Testbed, a file path, or a pyATS Testbed object."""
    if isinstance(testbed, Testbed):
        return testbed
    if isinstance(testbed, (str, Path)):
        return load_testbed(testbed)
    return from_pyats(testbed)


def _plain(value: Any) -> Any:
    """pyATS objects as plain YAML-like data (AttrDicts, SecretStrings, IP objects)."""
    if type(value).__name__ == "SecretString":  # pyATS: str() would be masked
        return str(value.plaintext)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping) or callable(getattr(value, "items", None)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if hasattr(value, "__dict__"):
        return {str(k): _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


class _Ctx:
    """Where we are in the testbed, so every error names file, device and key."""

    def __init__(self, source: str, device: str | None = None) -> None:
        self.source = source
        self.device = device

    def error(self, key: str | None, reason: str, value: Any = _NO_VALUE) -> TestbedError:
        if key is not None and value is not _NO_VALUE and not _is_secret(key):
            key = f"{key}={value!r}"
        return TestbedError(self.source, reason, self.device, key)

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, not {type(value).__name__}")
        return value

    def string(self, value: Any, key: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, "must be a string", value)
        return str(value)

    def integer(self, value: Any, key: str, low: int, high: int, what: str) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # %ENV{} yields strings
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"must be {what}", value)
        return value


def _is_secret(key: str) -> bool:
    return "password" in key or "credentials" in key or "secret" in key


def _expand(value: Any, ctx: _Ctx, key: str) -> Any:
    """Replace ``%ENV{VAR}`` in every string below ``value``."""
    if isinstance(value, str):
        def env(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in os.environ:
                raise ctx.error(key, f"environment variable {var!r} (from %ENV{{{var}}}) is not set")
            return os.environ[var]
        return _ENV.sub(env, value)
    if isinstance(value, dict):
        return {k: _expand(v, ctx, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, ctx, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def build_testbed(data: Any, source: str, path: Path | None, default_name: str) -> Testbed:
    """Validate parsed testbed data (YAML-like: dicts, lists, scalars) into a :class:`Testbed`."""
    top = _Ctx(source)
    if not isinstance(data, dict):
        raise top.error(None, "the top level must be a mapping with 'testbed:' and 'devices:'")
    if "extends" in data:
        raise top.error("extends", "pyATS 'extends:' is not supported; merge the files first")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise top.error(str(key), f"unknown top-level key; known: {', '.join(TOP_LEVEL_KEYS)}")
    tb = _expand(top.mapping(data.get("testbed"), "testbed"), top, "testbed")
    name = top.string(tb.get("name"), "testbed.name") or default_name
    shared = _credentials(tb.get("credentials"), top, "testbed.credentials")
    devices_raw = data.get("devices")
    if not isinstance(devices_raw, dict) or not devices_raw:
        raise top.error("devices", "missing or empty: a testbed needs at least one device")
    devices: dict[str, Device] = {}
    for dev_name, raw in devices_raw.items():
        if not isinstance(dev_name, str) or not dev_name:
            raise top.error("devices", "device names must be non-empty strings", dev_name)
        ctx = _Ctx(source, dev_name)
        devices[dev_name] = _device(dev_name, _expand(ctx.mapping(raw, "device"), ctx, ""),
                                    ctx, shared)
    return Testbed(name=name, devices=devices, source=path)


def _device(name: str, raw: dict[str, Any], ctx: _Ctx, shared: dict[str, str]) -> Device:
    os_name = ctx.string(raw.get("os"), "os", required=True)
    dev_type = ctx.string(raw.get("type"), "type", required=True)
    assert os_name is not None and dev_type is not None
    conns_raw = ctx.mapping(raw.get("connections"), "connections")
    defaults = ctx.mapping(conns_raw.get("defaults"), "connections.defaults")
    connections = {
        str(cname): _connection(str(cname), ctx.mapping(c, f"connections.{cname}"), ctx)
        for cname, c in conns_raw.items() if cname != "defaults"
    }
    if not connections:
        raise ctx.error("connections", "missing: a device needs at least one connection")
    via = ctx.string(defaults.get("via"), "connections.defaults.via")
    if via is not None and via not in connections:
        raise ctx.error("connections.defaults.via", f"no such connection; the device has: "
                        f"{', '.join(connections)}", via)
    labq = ctx.mapping(ctx.mapping(raw.get("custom"), "custom").get("labq"), "custom.labq")
    for key in labq:
        if key not in LABQ_KEYS:
            raise ctx.error(f"custom.labq.{key}", f"unknown key; known: {', '.join(LABQ_KEYS)}")
    queue = ctx.string(labq.get("queue"), "custom.labq.queue")
    if queue is not None and not _QUEUE.fullmatch(queue):
        raise ctx.error("custom.labq.queue", "use letters, digits, '.', '_' or '-'", queue)
    max_sessions = labq.get("max_sessions", 1)
    driver = ctx.string(labq.get("driver"), "custom.labq.driver")
    if driver is not None and driver not in DRIVERS:
        raise ctx.error("custom.labq.driver", f"must be one of: {', '.join(DRIVERS)}", driver)
    creds = {**shared, **_credentials(raw.get("credentials"), ctx, "credentials")}
    return Device(
        name=name, os=os_name, type=dev_type, queue=queue,
        max_sessions=ctx.integer(max_sessions, "custom.labq.max_sessions", 1, 10**6,
                                 "a positive integer"),
        connections=connections,
        credentials=_credentials_object(creds, ctx),
        sim=_sim(ctx.mapping(labq.get("sim"), "custom.labq.sim"), ctx),
        driver=driver,
        platform=ctx.string(raw.get("platform"), "platform"),
        via=via,
        connection_class=ctx.string(defaults.get("class"), "connections.defaults.class"),
        labels=_labels(ctx.mapping(labq.get("labels"), "custom.labq.labels"), ctx),
    )


def _connection(name: str, raw: dict[str, Any], ctx: _Ctx) -> Connection:
    key = f"connections.{name}"
    driver = ctx.string(raw.get("driver"), f"{key}.driver")
    if driver is not None and driver not in DRIVERS:
        raise ctx.error(f"{key}.driver", f"must be one of: {', '.join(DRIVERS)}", driver)
    command = ctx.string(raw.get("command"), f"{key}.command")
    protocol = ctx.string(raw.get("protocol"), f"{key}.protocol")
    ip = ctx.string(raw.get("ip") or raw.get("host"), f"{key}.ip")
    if command is not None:
        if not command.strip():
            raise ctx.error(f"{key}.command", "must not be empty", command)
        port = raw.get("port")
        return Connection(name, protocol, ip, None if port is None else ctx.integer(
            port, f"{key}.port", 0, 65535, "a TCP port, 0 to 65535"), command, driver)
    if protocol is None:
        raise ctx.error(f"{key}.protocol", "missing: give protocol: ssh with ip and port, "
                        "or a command:")
    if protocol not in PROTOCOLS:
        raise ctx.error(f"{key}.protocol", f"must be one of: {', '.join(PROTOCOLS)}", protocol)
    if not ip:
        raise ctx.error(f"{key}.ip", "missing: an ssh or telnet connection needs an ip")
    port = ctx.integer(raw.get("port", PROTOCOLS[protocol]), f"{key}.port", 0, 65535,
                       "a TCP port, 0 to 65535")
    return Connection(name, protocol, ip, port, None, driver)


def _credentials(raw: Any, ctx: _Ctx, key: str) -> dict[str, str]:
    """``default:`` and ``enable:`` entries as flat fields; other names are pyATS's."""
    out: dict[str, str] = {}
    for cname, entry in ctx.mapping(raw, key).items():
        entry = ctx.mapping(entry, f"{key}.{cname}")
        for field_name, value in entry.items():
            fkey = f"{key}.{cname}.{field_name}"
            if field_name not in ("username", "password"):
                raise ctx.error(fkey, "unknown key; known: username, password")
            if isinstance(value, str) and value.startswith("%ENC{"):
                raise ctx.error(fkey, "%ENC{} secrets need pyATS; use %ENV{VAR} or load "
                                "the testbed with pyATS and pass the object")
            text = ctx.string(value, fkey)
            if text is None:
                continue
            if cname == "default":
                out[field_name] = text
            elif cname == "enable" and field_name == "password":
                out["enable_password"] = text
    return out


def _credentials_object(creds: dict[str, str], ctx: _Ctx) -> Credentials | None:
    if not creds.get("username") and not creds.get("password"):
        return None
    for needed in ("username", "password"):
        if needed not in creds:
            raise ctx.error(f"credentials.default.{needed}",
                            "missing (set it on the device or under testbed.credentials)")
    return Credentials(creds["username"], creds["password"], creds.get("enable_password"))


def _labels(raw: dict[str, Any], ctx: _Ctx) -> dict[str, str]:
    """``custom.labq.labels``: string keys to scalar values, kept as strings;
    ``os``, ``type`` and ``platform`` are the device's own and cannot be set here."""
    out: dict[str, str] = {}
    for key, value in raw.items():
        full = f"custom.labq.labels.{key}"
        if not isinstance(key, str) or not _LABEL.fullmatch(key):
            raise ctx.error(full, "a label name uses letters, digits, '.', '_' or '-'", key)
        if key in BUILTIN_LABELS:
            raise ctx.error(full, f"{key!r} is the device's own {key}: set it there")
        if isinstance(value, (dict, list)) or value is None or value == "":
            raise ctx.error(full, "a label value is a non-empty string or number", value)
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def check_sim_knobs(raw: Any, source: str, device: str) -> dict[str, Any]:
    """``raw`` as valid ``custom.labq.sim`` knobs of ``device`` (the sim's
    control endpoint changes them at run time); :class:`TestbedError` naming
    the knob and value otherwise."""
    ctx = _Ctx(source, device)
    return _sim(ctx.mapping(raw, "custom.labq.sim"), ctx)


def _sim(raw: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kind = SIM_KEYS.get(str(key))
        full = f"custom.labq.sim.{key}"
        if kind is None:
            raise ctx.error(full, f"unknown sim knob; known: {', '.join(SIM_KEYS)}")
        if kind == "seconds":
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ctx.error(full, "must be a number of seconds, 0 or more",
                                    value) from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ctx.error(full, "must be a number of seconds, 0 or more", value)
            out[key] = float(value)
        elif kind == "regex":
            if not isinstance(value, str) or not value:
                raise ctx.error(full, "must be a non-empty regular expression", value)
            try:
                re.compile(value)
            except re.error as exc:
                raise ctx.error(full, f"not a valid regular expression: {exc}", value) from None
            out[key] = value
        else:
            out[key] = _boolean(value, full, ctx)
    return out


def _boolean(value: Any, key: str, ctx: _Ctx) -> bool:
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ctx.error(key, "must be true or false", value)
