"""The text of IOS show commands and output pipes, as pure functions.

Formats follow IOS-XE 17.x closely enough for parsers that split on columns
(``show ip interface brief``) or search for well-known lines (``show version``).
"""

from __future__ import annotations

import re
import zlib

MODEL = "C8000V"
VERSION = "17.9.4a"


def serial_number(hostname: str) -> str:
    """A stable, per-device serial number."""
    return f"9{zlib.crc32(hostname.encode()):010X}"[:11]


def version(hostname: str, uptime: str, gigabit_interfaces: int) -> str:
    """``show version``."""
    serial = serial_number(hostname)
    return f"""Cisco IOS XE Software, Version {VERSION}
Cisco IOS Software [Cupertino], Virtual XE Software (X86_64_LINUX_IOSD-UNIVERSALK9-M), \
Version {VERSION}, RELEASE SOFTWARE (fc3)
Technical Support: http://www.cisco.com/techsupport
Copyright (c) 1986-2023 by Cisco Systems, Inc.
Compiled Fri 20-Oct-23 10:44 by mcpre

ROM: IOS-XE ROMMON

{hostname} uptime is {uptime}
Uptime for this control processor is {uptime}
System returned to ROM by reload
System image file is "bootflash:packages.conf"
Last reload reason: reload

This product contains cryptographic features (simulated by labq).

cisco {MODEL} (VXE) processor (revision VXE) with 2027630K/3075K bytes of memory.
Processor board ID {serial}
Router operating mode: Autonomous
{gigabit_interfaces} Gigabit Ethernet interfaces
32768K bytes of non-volatile configuration memory.
3965124K bytes of physical memory.
11526144K bytes of virtual hard disk at bootflash:.

Configuration register is 0x2102
"""


def ip_interface_brief(interfaces: list[tuple[str, str, bool, bool]]) -> str:
    """``show ip interface brief`` from ``(name, ip, shut down, from NVRAM)`` rows."""
    rows = [f"{'Interface':<27}{'IP-Address':<16}OK? Method Status                Protocol"]
    for name, ip, shut, nvram in interfaces:
        method = "unset" if ip == "unassigned" else ("NVRAM" if nvram else "manual")
        status, proto = ("administratively down", "down") if shut else ("up", "up")
        rows.append(f"{name:<27}{ip:<16}YES {method:<7}{status:<22}{proto}")
    return "\n".join(rows)


def ping(address: str, count: int) -> str:
    """``ping ADDRESS repeat COUNT``, every echo answered."""
    bangs = "\n".join("!" * min(70, count - i) for i in range(0, count, 70))
    return ("Type escape sequence to abort.\n"
            f"Sending {count}, 100-byte ICMP Echos to {address}, timeout is 2 seconds:\n"
            f"{bangs}\n"
            f"Success rate is 100 percent ({count}/{count}), round-trip min/avg/max = 1/1/2 ms")


def users(username: str) -> str:
    """``show users``: just this session."""
    return ("    Line       User       Host(s)              Idle       Location\n"
            f"*866 vty 0     {username:<10} idle                 00:00:00 127.0.0.1")


def inventory(hostname: str) -> str:
    """``show inventory``: the chassis only."""
    return (f'NAME: "Chassis", DESCR: "Cisco {MODEL} Chassis"\n'
            f"PID: {MODEL}            , VID: V00  , SN: {serial_number(hostname)}")


def pipe(output: str, spec: str) -> str | None:
    """Apply ``include/exclude/begin/section/count REGEX`` (what follows ``|``) to
    ``output``; None when the spec is malformed."""
    word, _, pattern = spec.partition(" ")
    kinds = [k for k in ("include", "exclude", "begin", "section", "count")
             if k.startswith(word.lower())] if word else []
    if len(kinds) != 1 or not pattern.strip():
        return None
    try:
        regex = re.compile(pattern.strip())
    except re.error:
        return None
    lines = output.split("\n")
    kind = kinds[0]
    if kind == "include":
        return "\n".join(x for x in lines if regex.search(x))
    if kind == "exclude":
        return "\n".join(x for x in lines if not regex.search(x))
    if kind == "count":
        return f"Number of lines which match regexp = {sum(bool(regex.search(x)) for x in lines)}"
    if kind == "begin":
        start = next((i for i, x in enumerate(lines) if regex.search(x)), len(lines))
        return "\n".join(lines[start:])
    keep: list[str] = []  # section: matching top-level lines with their children
    taking = False
    for x in lines:
        if not x.startswith(" "):
            taking = bool(regex.search(x))
        if taking:
            keep.append(x)
    return "\n".join(keep)
