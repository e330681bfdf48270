"""A simulated device's running-config: ordered top-level blocks with indented children.

Pure data, no I/O. It follows IOS conventions closely enough that configured
lines show up where a test expects them: ``X`` after ``no X`` removes the
``no`` line, ``no X`` removes ``X`` (or records ``no X`` when ``X`` was a
default), and lines typed in a submode (``interface``, ``router``, ``line``
...) become that block's children.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

#: Lines that open a submode, and the submode's prompt suffix.
SUBMODES: tuple[tuple[str, str], ...] = (
    ("interface ", "config-if"),
    ("router ", "config-router"),
    ("line ", "config-line"),
    ("ip access-list extended ", "config-ext-nacl"),
    ("ip access-list standard ", "config-std-nacl"),
    ("vlan ", "config-vlan"),
    ("route-map ", "config-route-map"),
    ("class-map ", "config-cmap"),
    ("policy-map ", "config-pmap"),
    ("vrf definition ", "config-vrf"),
)
# Global commands IOS accepts from inside a submode, leaving the submode.
GLOBAL_ONLY = ("hostname ", "logging host ", "logging buffered", "logging console",
               "logging trap ", "ip route ", "ip domain", "ip name-server ", "ntp ",
               "snmp-server ", "username ", "banner ", "service ", "enable ", "aaa ",
               "access-list ", "crypto ", "archive", "clock ", "cdp run", "lldp run")
_CONFIG_WORDS = ("interface", "hostname", "description", "shutdown", "router", "line",
                 "logging", "ntp", "snmp-server", "username", "banner", "service", "vlan",
                 "access-list", "network", "neighbor", "negotiation", "bandwidth", "mtu",
                 "speed", "duplex", "ip", "ipv6", "exit", "end", "do")
_IP_WORDS = ("address", "route", "domain", "name-server", "access-list", "ssh", "http",
             "ospf", "forward-protocol")
# Children whose first words name a setting: a new value replaces the old one.
_SINGLE_VALUED = ("description ", "ip address ", "mtu ", "bandwidth ", "speed ", "duplex ")
_INTERFACE_ABBREV = {
    "gi": "GigabitEthernet", "gig": "GigabitEthernet", "te": "TenGigabitEthernet",
    "lo": "Loopback", "po": "Port-channel", "vl": "Vlan", "tu": "Tunnel",
}
_INTERFACE_NAMES = ("GigabitEthernet", "TenGigabitEthernet", "Loopback", "Port-channel",
                    "Vlan", "Tunnel")
# A fixed, fake hash: nothing in the config is derived from a real password.
_FAKE_SECRET = "$9$labqsimNotARealHash$0000000000000000000000000000000000000000000"


@dataclass
class Block:
    """One top-level line and its (space-indented) children."""

    header: str
    children: list[str] = field(default_factory=list)


def submode_of(line: str) -> str | None:
    """The prompt suffix of the submode ``line`` opens, if it opens one."""
    for prefix, mode in SUBMODES:
        if line.startswith(prefix) and len(line) > len(prefix):
            return mode
    return None


def expand_keywords(line: str) -> str:
    """``int gi2`` -> ``interface gi2``, ``no shut`` -> ``no shutdown``: IOS takes any
    unique prefix of a keyword; the common config keywords are expanded here."""
    words = line.split()
    first = 1 if words and words[0] == "no" and len(words) > 1 else 0
    for index, vocabulary in ((first, _CONFIG_WORDS), (first + 1, _IP_WORDS)):
        if index >= len(words) or (index > first and words[first] != "ip"):
            continue
        matches = [w for w in vocabulary if w.startswith(words[index].lower())]
        if len(matches) == 1 and len(words[index]) >= 2:
            words[index] = matches[0]
    return " ".join(words)


def is_global_only(line: str) -> bool:
    """Whether ``line`` is a global command even when typed in a submode."""
    bare = line[3:] if line.startswith("no ") else line
    return bare.startswith(GLOBAL_ONLY) or bare in {p.strip() for p in GLOBAL_ONLY}


def interface_name(text: str) -> str:
    """``gi1`` -> ``GigabitEthernet1``, as IOS expands it."""
    match = re.fullmatch(r"([A-Za-z-]+)\s*([\d/.:]+)", text.strip())
    if not match:
        return text.strip()
    word, number = match.groups()
    low = word.lower()
    for full in _INTERFACE_NAMES:
        if full.lower().startswith(low):
            return full + number
    return _INTERFACE_ABBREV.get(low, word) + number


class RunningConfig:
    """The configuration of one simulated IOS device."""

    def __init__(self, hostname: str, username: str | None, has_enable_secret: bool,
                 interfaces: int = 4) -> None:
        seed = zlib.crc32(hostname.encode())
        self.mgmt_ip = f"10.{seed % 250 + 1}.{(seed >> 8) % 250 + 1}.1"
        self.initial_ips: set[str] = {"GigabitEthernet1"}
        self.blocks: list[Block] = [Block(line) for line in (
            "version 17.9",
            "service timestamps debug datetime msec",
            "service timestamps log datetime msec",
            "platform qfp utilization monitor load 80",
            "platform punt-keepalive disable-kernel-core",
            "platform console virtual",
            f"hostname {hostname}",
            "boot-start-marker",
            "boot-end-marker",
            "no aaa new-model",
            "no ip domain lookup",
            "login on-success log",
        )]
        if has_enable_secret:
            self.blocks.append(Block(f"enable secret 9 {_FAKE_SECRET}"))
        if username:
            self.blocks.append(Block(f"username {username} privilege 15 secret 9 {_FAKE_SECRET}"))
        for n in range(1, interfaces + 1):
            children = ([f" ip address {self.mgmt_ip} 255.255.255.0"] if n == 1
                        else [" no ip address", " shutdown"])
            self.blocks.append(Block(f"interface GigabitEthernet{n}",
                                     [*children, " negotiation auto"]))
        self.blocks += [Block("ip forward-protocol nd"), Block("ip ssh version 2"),
                        Block("line con 0", [" stopbits 1"]),
                        Block("line vty 0 4", [" login local", " transport input ssh"])]
        self.saved: list[Block] | None = None

    @property
    def hostname(self) -> str:
        for block in self.blocks:
            if block.header.startswith("hostname "):
                return block.header.split(None, 1)[1]
        return "Router"

    def find(self, header: str) -> Block | None:
        return next((b for b in self.blocks if b.header == header), None)

    def enter(self, line: str) -> Block:
        """The block a submode line opens, created when new (before the ``line`` blocks)."""
        if line.startswith("interface "):
            line = "interface " + interface_name(line[len("interface "):])
        block = self.find(line)
        if block is None:
            block = Block(line, [" shutdown"] if line.startswith("interface GigabitEthernet")
                          else [])
            self._insert(block)
        return block

    def apply_global(self, line: str) -> None:
        """A top-level configuration line outside any submode."""
        if line.startswith("hostname "):
            for block in self.blocks:
                if block.header.startswith("hostname "):
                    block.header = line
            return
        if line.startswith("no "):
            target = line[3:]
            if target.startswith("interface "):
                target = "interface " + interface_name(target[len("interface "):])
            found = [b for b in self.blocks if b.header == target]
            if found:
                self.blocks = [b for b in self.blocks if b not in found]
            elif self.find(line) is None:
                self._insert(Block(line))
            return
        negated = self.find(f"no {line}")
        if negated is not None:
            self.blocks.remove(negated)
        elif self.find(line) is None:
            self._insert(Block(line))

    def apply_child(self, block: Block, line: str) -> None:
        """A line typed inside ``block``'s submode."""
        child = f" {line}"
        if line.startswith("no "):
            target = f" {line[3:]}"
            if target in block.children:
                block.children.remove(target)
            elif line == "no shutdown":
                pass  # already up
            elif child not in block.children:
                block.children.append(child)
            return
        if child in block.children:
            return
        # The new line takes the place of the one it negates or replaces.
        prefix = next((p for p in _SINGLE_VALUED if line.startswith(p)), None)
        replaced = [i for i, c in enumerate(block.children)
                    if c == f" no {line}" or (prefix and (c.startswith(f" {prefix}")
                                                          or c == f" no {prefix.strip()}"))]
        at = replaced[0] if replaced else len(block.children)
        block.children = [c for i, c in enumerate(block.children) if i not in replaced]
        block.children.insert(at, child)
        if line.startswith("ip address ") and block.header.startswith("interface "):
            self.initial_ips.discard(block.header.split(None, 1)[1])

    def _insert(self, block: Block) -> None:
        # New global lines go before the terminal lines, as IOS orders them.
        first_line = next((i for i, b in enumerate(self.blocks) if b.header.startswith("line ")),
                          len(self.blocks))
        self.blocks.insert(first_line, block)

    def save(self) -> None:
        self.saved = [Block(b.header, list(b.children)) for b in self.blocks]

    def render(self, blocks: list[Block] | None = None) -> str:
        """The config body, ``!`` around every block with children, ``end`` last."""
        lines: list[str] = []
        for block in self.blocks if blocks is None else blocks:
            if block.children and lines and lines[-1] != "!":
                lines.append("!")
            lines.append(block.header)
            lines += block.children
            if block.children:
                lines.append("!")
        lines.append("end")
        return "\n".join(lines)

    def interfaces(self) -> list[tuple[str, str, bool, bool]]:
        """``(name, ip or 'unassigned', shut down, configured from NVRAM)`` per interface."""
        out = []
        for block in self.blocks:
            if not block.header.startswith("interface "):
                continue
            name = block.header.split(None, 1)[1]
            ip = next((c.split()[2] for c in block.children
                       if c.startswith(" ip address ") and len(c.split()) >= 3), "unassigned")
            out.append((name, ip, " shutdown" in block.children, name in self.initial_ips))
        return out
