"""A Cisco IOS-XE command line as a pure state machine: a line in, output and a prompt out.

No I/O and no clock of its own (one is injected), so it is unit-tested
directly; the SSH server adds echo, timing and faults around it. It covers
what netmiko's ``cisco_ios`` driver sends (``terminal width 511``,
``terminal length 0``, bare returns to find the prompt, ``enable`` with a
``Password:`` prompt, ``configure terminal`` ... ``end``, ``write mem``,
``exit``) plus the show commands tests use. Keywords may be abbreviated to
any unique prefix (``sh ip int br``), and errors look like IOS's, caret
included, so code that parses ``% Invalid input`` works unchanged.
"""

from __future__ import annotations

import enum
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from labq.embedded.sim import ios_shows
from labq.embedded.sim.ios_config import (
    Block,
    RunningConfig,
    expand_keywords,
    interface_name,
    is_global_only,
    submode_of,
)

INVALID = "% Invalid input detected at '^' marker."
INCOMPLETE = "% Incomplete command.\n"


class Mode(enum.Enum):
    USER = "user"  # r1>
    ENABLE = "enable"  # r1#
    CONFIG = "config"  # r1(config)#, r1(config-if)# ...
    PASSWORD = "password"  # the enable password prompt
    CONFIRM = "confirm"  # a [default]? question


@dataclass(frozen=True)
class Reply:
    """What the device prints for one input line."""

    output: str  # lines joined by "\n"; "" for none
    prompt: str
    echo: bool = True  # False while the next line is a password
    close: bool = False  # the session ends (exit, logout)


Handler = Callable[["IosCli", list[str]], str]


@dataclass
class _Node:
    run: Handler | None = None
    sub: dict[str, _Node] = field(default_factory=dict)
    args: str | None = None  # None: no arguments; "int": one number; "any": the rest


class _BadArgument(Exception):
    """A handler refuses its argument number ``index``: IOS puts the caret there."""

    def __init__(self, index: int) -> None:
        self.index = index


class IosCli:
    """One simulated device's CLI state."""

    def __init__(self, hostname: str, *, username: str | None = None,
                 enable_password: str | None = None,
                 clock: Callable[[], float] = time.time,
                 booted_at: float | None = None,
                 config: RunningConfig | None = None) -> None:
        # A device's running-config outlives its sessions: pass the shared one.
        self.config = config or RunningConfig(hostname, username, enable_password is not None)
        self._enable_password = enable_password
        self._clock = clock
        # A plausible, per-device uptime rather than "0 minutes" for every router.
        self.booted_at = booted_at if booted_at is not None else (
            clock() - 3600 * (1 + zlib.crc32(hostname.encode()) % 400))
        self.username = username or "admin"
        # With an enable secret a login lands in user mode, as with privilege 1.
        self.mode = Mode.USER if enable_password is not None else Mode.ENABLE
        self.submode: str | None = None
        self.block: Block | None = None
        self.length = 24
        self.width = 80
        self._password_tries = 0
        self._confirm: Callable[[str], str] | None = None
        self._confirm_mode = Mode.ENABLE

    @property
    def hostname(self) -> str:
        return self.config.hostname

    @property
    def prompt(self) -> str:
        if self.mode is Mode.USER:
            return f"{self.hostname}>"
        if self.mode is Mode.ENABLE:
            return f"{self.hostname}#"
        if self.mode is Mode.CONFIG:
            return f"{self.hostname}({self.submode or 'config'})#"
        if self.mode is Mode.PASSWORD:
            return "Password: "
        return "Destination filename [startup-config]? "

    def feed(self, line: str) -> Reply:
        """Run one input line (without its line ending)."""
        if self.mode is Mode.PASSWORD:
            return self._password(line)
        if self.mode is Mode.CONFIRM:
            assert self._confirm is not None
            action, self._confirm = self._confirm, None
            self.mode = self._confirm_mode
            return self._reply(action(line.strip()))
        text = line.strip()
        if not text:
            return self._reply("")
        if self.mode is Mode.CONFIG:
            return self._configure(line)
        return self._exec(line, self.mode)

    def interrupt(self) -> Reply:
        """Ctrl-C: drop a pending password or question; in config mode, like ``end``."""
        if self.mode in (Mode.PASSWORD, Mode.CONFIRM):
            self.mode = Mode.USER if self.mode is Mode.PASSWORD else self._confirm_mode
            self._confirm = None
        elif self.mode is Mode.CONFIG:
            self._leave_config()
        return self._reply("")

    def _reply(self, output: str, close: bool = False) -> Reply:
        return Reply(output, self.prompt, echo=self.mode is not Mode.PASSWORD, close=close)

    # -- exec mode -----------------------------------------------------------

    def _exec(self, line: str, mode: Mode) -> Reply:
        command, _, pipe = line.partition("|")
        tokens = [(m.group(), m.start()) for m in re.finditer(r"\S+", command)]
        node = _USER if mode is Mode.USER else _ENABLE
        i = 0
        while i < len(tokens):
            word = tokens[i][0].lower()
            matches = [k for k in node.sub if k.startswith(word)]
            if word in node.sub or len(matches) == 1:
                node = node.sub[word if word in node.sub else matches[0]]
                i += 1
                continue
            if len(matches) > 1:
                return self._reply(f'% Ambiguous command:  "{line.strip()}"\n')
            break
        rest = [t for t, _ in tokens[i:]]
        if i < len(tokens) and not _args_ok(node, rest):
            return self._invalid(line, tokens[i][1])
        if node.run is None:
            return self._reply(INCOMPLETE)
        if node.run is _close:
            return self._reply("", close=True)
        try:
            output = node.run(self, rest)
        except _BadArgument as bad:
            return self._invalid(line, tokens[i + bad.index][1])
        if pipe:
            filtered = ios_shows.pipe(output, pipe.strip())
            if filtered is None:
                return self._invalid(line, line.index("|") + 1 + (len(pipe) - len(pipe.lstrip())))
            output = filtered
        return self._reply(output)

    def _invalid(self, line: str, column: int) -> Reply:
        # The caret sits under the bad word, counted from the prompt's start.
        caret = " " * (len(self.prompt) + column) + "^"
        return self._reply(f"{caret}\n{INVALID}\n")

    # -- config mode ---------------------------------------------------------

    def _configure(self, line: str) -> Reply:
        text = expand_keywords(line)
        low = text.lower()
        if low == "end":
            self._leave_config()
            return self._reply("")
        if low == "exit":
            if self.block is not None:
                self.block, self.submode = None, None
            else:
                self._leave_config()
            return self._reply("")
        if low.startswith("do "):
            reply = self._exec(line.split(None, 1)[1], Mode.ENABLE)
            return self._reply(reply.output)
        if low.split()[0] in ("show", "configure", "write", "copy", "enable", "disable"):
            return self._invalid(line, len(line) - len(line.lstrip()))
        mode = submode_of(text) or (submode_of(text[3:]) if low.startswith("no ") else None)
        if mode is not None and not low.startswith("no "):
            self.block = self.config.enter(text)
            self.submode = mode
        elif self.block is not None and not is_global_only(text):
            self.config.apply_child(self.block, text)
        else:
            self.config.apply_global(text)
            self.block, self.submode = None, None
        return self._reply("")

    def _leave_config(self) -> None:
        self.mode, self.block, self.submode = Mode.ENABLE, None, None

    # -- enable password and questions ---------------------------------------

    def _password(self, line: str) -> Reply:
        if line == self._enable_password:
            self.mode, self._password_tries = Mode.ENABLE, 0
            return self._reply("")
        self._password_tries += 1
        if self._password_tries >= 3:
            self.mode, self._password_tries = Mode.USER, 0
            return self._reply("% Bad secrets\n")
        return self._reply("")

    def ask(self, action: Callable[[str], str]) -> str:
        """Put a question; ``action`` gets the answer and returns the output."""
        self._confirm_mode, self.mode, self._confirm = self.mode, Mode.CONFIRM, action
        return ""

    # -- shows ---------------------------------------------------------------

    def uptime(self) -> str:
        minutes = max(0, int(self._clock() - self.booted_at)) // 60
        parts: list[str] = []
        for unit, size in (("year", 525600), ("week", 10080), ("day", 1440), ("hour", 60)):
            count, minutes = divmod(minutes, size)
            if count or parts:
                parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
        return ", ".join(parts)

    def clock_text(self, millis: bool = True) -> str:
        """``*12:34:56.789 UTC Tue Nov 25 2025``, as ``show clock`` prints it."""
        now = self._clock()
        stamp = time.strftime("%H:%M:%S", time.gmtime(now))
        if millis:
            stamp = f"*{stamp}.{int(now * 1000) % 1000:03d}"
        return f"{stamp} UTC {time.strftime('%a %b %d %Y', time.gmtime(now))}"

    def running_config(self, blocks: list[Block] | None = None) -> str:
        body = self.config.render(blocks)
        return (f"Building configuration...\n\nCurrent configuration : {len(body) + 1} bytes\n"
                f"!\n! Last configuration change at {self.clock_text(millis=False)} by "
                f"{self.username}\n!\n{body}\n")


def _args_ok(node: _Node, rest: list[str]) -> bool:
    if node.args == "any":
        return True
    if node.args == "int":
        return len(rest) == 1 and rest[0].isdigit() and int(rest[0]) <= 512
    return False


# -- command handlers ------------------------------------------------------------

def _close(cli: IosCli, args: list[str]) -> str:
    return ""


def _enable(cli: IosCli, args: list[str]) -> str:
    if cli.mode is Mode.USER and cli._enable_password is not None:
        cli.mode = Mode.PASSWORD
    else:
        cli.mode = Mode.ENABLE
    return ""


def _disable(cli: IosCli, args: list[str]) -> str:
    cli.mode = Mode.USER
    return ""


def _configure(cli: IosCli, args: list[str]) -> str:
    cli.mode, cli.block, cli.submode = Mode.CONFIG, None, None
    return "Enter configuration commands, one per line.  End with CNTL/Z."


def _set_terminal(attr: str) -> Handler:
    def run(cli: IosCli, args: list[str]) -> str:
        setattr(cli, attr, int(args[0]))
        return ""
    return run


def _write(cli: IosCli, args: list[str]) -> str:
    cli.config.save()
    return "Building configuration...\n[OK]"


def _copy_run_start(cli: IosCli, args: list[str]) -> str:
    return cli.ask(lambda answer: _write(cli, []))


def _show_version(cli: IosCli, args: list[str]) -> str:
    gig = sum(1 for name, *_ in cli.config.interfaces() if name.startswith("GigabitEthernet"))
    return ios_shows.version(cli.hostname, cli.uptime(), gig)


def _show_ip_int_brief(cli: IosCli, args: list[str]) -> str:
    return ios_shows.ip_interface_brief(cli.config.interfaces())


def _show_run(cli: IosCli, args: list[str]) -> str:
    return cli.running_config()


def _show_run_interface(cli: IosCli, args: list[str]) -> str:
    block = cli.config.find("interface " + interface_name(" ".join(args)))
    if block is None:
        raise _BadArgument(0)
    return cli.running_config([block])


def _show_start(cli: IosCli, args: list[str]) -> str:
    if cli.config.saved is None:
        return "startup-config is not present"
    return cli.running_config(cli.config.saved)


def _show_privilege(cli: IosCli, args: list[str]) -> str:
    return f"Current privilege level is {15 if cli.mode is not Mode.USER else 1}"


def _show_users(cli: IosCli, args: list[str]) -> str:
    return ios_shows.users(cli.username)


def _show_inventory(cli: IosCli, args: list[str]) -> str:
    return ios_shows.inventory(cli.hostname)


def _ping(cli: IosCli, args: list[str]) -> str:
    """``ping ADDRESS [repeat N]``: every echo answers, as on a healthy lab link."""
    import ipaddress

    if not args:
        raise _BadArgument(0)
    try:
        address = ipaddress.ip_address(args[0])
    except ValueError:
        raise _BadArgument(0) from None
    count = 5
    if len(args) >= 2:
        if args[1].lower() != "repeat"[:len(args[1])] or len(args) != 3:
            raise _BadArgument(1)
        if not args[2].isdigit() or not 1 <= int(args[2]) <= 10000:
            raise _BadArgument(2)
        count = int(args[2])
    return ios_shows.ping(str(address), count)


def _tree(privileged: bool) -> _Node:
    show = {
        "version": _Node(_show_version),
        "clock": _Node(lambda cli, a: cli.clock_text()),
        "privilege": _Node(_show_privilege),
        "users": _Node(_show_users),
        "inventory": _Node(_show_inventory),
        "ip": _Node(sub={"interface": _Node(sub={"brief": _Node(_show_ip_int_brief)})}),
    }
    root = {
        "enable": _Node(_enable),
        "exit": _Node(_close),
        "logout": _Node(_close),
        "quit": _Node(_close),
        "terminal": _Node(sub={"length": _Node(_set_terminal("length"), args="int"),
                               "width": _Node(_set_terminal("width"), args="int"),
                               "monitor": _Node(lambda cli, a: ""),
                               "no": _Node(sub={"monitor": _Node(lambda cli, a: "")})}),
        "show": _Node(sub=show),
        "ping": _Node(_ping, args="any"),
    }
    if privileged:
        show["running-config"] = _Node(_show_run, sub={
            "interface": _Node(_show_run_interface, args="any")})
        show["startup-config"] = _Node(_show_start)
        root["disable"] = _Node(_disable)
        root["configure"] = _Node(_configure, sub={"terminal": _Node(_configure)})
        root["write"] = _Node(_write, sub={"memory": _Node(_write)})
        root["copy"] = _Node(sub={"running-config": _Node(sub={
            "startup-config": _Node(_copy_run_start)})})
    return _Node(sub=root)


_USER = _tree(privileged=False)
_ENABLE = _tree(privileged=True)
