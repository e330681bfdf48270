"""The IOS CLI state machine, without SSH: a line in, output and prompt out."""

from __future__ import annotations

import pytest

from labq.embedded.sim.cli_emulator import INVALID, IosCli, Mode

NOW = 1_700_000_000.0


def cli(enable_password: str | None = None, hostname: str = "r1") -> IosCli:
    return IosCli(hostname, username="admin", enable_password=enable_password,
                  clock=lambda: NOW, booted_at=NOW - (86400 + 2 * 3600 + 3 * 60))


def run(c: IosCli, *lines: str) -> str:
    return [c.feed(line) for line in lines][-1].output


def test_starts_privileged_without_enable_password() -> None:
    c = cli()
    assert (c.mode, c.prompt) == (Mode.ENABLE, "r1#")
    assert c.feed("") .prompt == "r1#"
    assert c.feed("enable").prompt == "r1#"
    assert c.feed("disable").prompt == "r1>"
    assert c.feed("enable").prompt == "r1#"  # straight: no password configured


def test_enable_password_prompt() -> None:
    c = cli(enable_password="en-secret")
    assert c.prompt == "r1>"
    reply = c.feed("enable")
    assert (reply.prompt, reply.echo, reply.output) == ("Password: ", False, "")
    reply = c.feed("en-secret")
    assert (reply.prompt, reply.echo) == ("r1#", True)


def test_three_bad_enable_passwords() -> None:
    c = cli(enable_password="en-secret")
    c.feed("en")
    assert c.feed("wrong").prompt == "Password: "
    assert c.feed("wrong").prompt == "Password: "
    reply = c.feed("wrong")
    assert (reply.prompt, reply.output.strip()) == ("r1>", "% Bad secrets")


def test_user_mode_refuses_privileged_commands() -> None:
    c = cli(enable_password="x")
    out = run(c, "show running-config")
    assert out.splitlines() == [" " * len("r1>show ") + "^", INVALID]
    assert run(c, "configure terminal").splitlines()[1] == INVALID
    assert "uptime" in run(c, "show version")


def test_show_version() -> None:
    out = run(cli(hostname="edge-7"), "show version")
    assert out.startswith("Cisco IOS XE Software, Version")
    assert "edge-7 uptime is 1 day, 2 hours, 3 minutes" in out
    assert "4 Gigabit Ethernet interfaces" in out
    assert "Configuration register is 0x2102" in out


def test_uptime_units() -> None:
    c = IosCli("r1", clock=lambda: NOW, booted_at=NOW - (2 * 604800 + 60))
    assert c.uptime() == "2 weeks, 0 days, 0 hours, 1 minute"
    c.booted_at = NOW - 30
    assert c.uptime() == "0 minutes"


def test_terminal_settings() -> None:
    c = cli()
    assert run(c, "terminal width 511") == ""
    assert run(c, "terminal length 0") == ""
    assert (c.width, c.length) == (511, 0)
    assert INVALID in run(c, "terminal length lots")


def test_configure_and_running_config() -> None:
    c = cli()
    reply = c.feed("configure terminal")
    assert reply.prompt == "r1(config)#"
    assert "End with CNTL/Z" in reply.output
    assert c.feed("interface Gi2").prompt == "r1(config-if)#"
    run(c, "description uplink to core", "ip address 192.0.2.1 255.255.255.0", "no shutdown")
    assert c.feed("exit").prompt == "r1(config)#"
    run(c, "ntp server 192.0.2.123")
    assert c.feed("router ospf 1").prompt == "r1(config-router)#"
    run(c, "network 192.0.2.0 0.0.0.255 area 0")
    # A global command leaves the submode, as on IOS.
    assert c.feed("logging host 192.0.2.50").prompt == "r1(config)#"
    assert c.feed("end").prompt == "r1#"
    config = run(c, "show running-config")
    assert config.startswith("Building configuration...")
    assert "hostname r1" in config
    block = config.split("interface GigabitEthernet2\n", 1)[1].split("!", 1)[0]
    assert " description uplink to core" in block
    assert " ip address 192.0.2.1 255.255.255.0" in block
    assert " shutdown" not in block.splitlines()
    assert "\nntp server 192.0.2.123\n" in config
    assert "router ospf 1\n network 192.0.2.0 0.0.0.255 area 0\n" in config
    assert "\nlogging host 192.0.2.50\n" in config
    assert config.rstrip().endswith("end")


def test_no_removes_and_negates() -> None:
    c = cli()
    run(c, "conf t", "ntp server 192.0.2.9", "no ntp server 192.0.2.9", "ip domain lookup",
        "no ip http server", "end")
    config = run(c, "show running-config")
    assert "ntp server 192.0.2.9" not in config
    assert "no ip domain lookup" not in config  # "ip domain lookup" removed the negation
    assert "\nno ip http server\n" in config


def test_hostname_changes_prompt() -> None:
    c = cli()
    assert c.feed("conf t").prompt == "r1(config)#"
    assert c.feed("hostname core-1").prompt == "core-1(config)#"
    assert c.feed("end").prompt == "core-1#"
    assert "core-1 uptime is" in run(c, "show version")


def test_show_ip_interface_brief_follows_config() -> None:
    c = cli()
    rows = run(c, "show ip interface brief").splitlines()
    assert rows[0].split() == ["Interface", "IP-Address", "OK?", "Method", "Status", "Protocol"]
    assert rows[2].split() == ["GigabitEthernet2", "unassigned", "YES", "unset",
                               "administratively", "down", "down"]
    run(c, "conf t", "int gi2", "ip address 198.51.100.1 255.255.255.0", "no shut", "end")
    rows = run(c, "sh ip int br").splitlines()
    assert rows[2].split() == ["GigabitEthernet2", "198.51.100.1", "YES", "manual", "up", "up"]


def test_invalid_input_caret_under_the_bad_word() -> None:
    c = cli()
    out = run(c, "show foo bar")
    assert out.splitlines() == [" " * len("r1#show ") + "^", INVALID]
    out = run(c, "frobnicate")
    assert out.splitlines() == [" " * len("r1#") + "^", INVALID]
    c.feed("conf t")
    out = run(c, "show version")
    assert out.splitlines() == [" " * len("r1(config)#") + "^", INVALID]


def test_incomplete_and_ambiguous() -> None:
    c = cli()
    assert run(c, "show").strip() == "% Incomplete command."
    assert run(c, "show ip interface").strip() == "% Incomplete command."
    assert run(c, "e").strip() == '% Ambiguous command:  "e"'


@pytest.mark.parametrize("line", ["sh ver", "SHOW VERSION", "sho  vers"])
def test_abbreviations(line: str) -> None:
    assert "uptime is" in run(cli(), line)


def test_pipes() -> None:
    c = cli()
    assert run(c, "show running-config | include ^hostname") == "hostname r1"
    assert "hostname" not in run(c, "show running-config | exclude hostname")
    assert run(c, "show running-config | begin ^line vty").splitlines()[0] == "line vty 0 4"
    section = run(c, "show running-config | section ^line vty").splitlines()
    assert section == ["line vty 0 4", " login local", " transport input ssh"]
    assert run(c, "show version | count [Uu]ptime") == "Number of lines which match regexp = 2"
    assert INVALID in run(c, "show version | grep uptime")


def test_write_and_copy_save_the_config() -> None:
    c = cli()
    assert run(c, "show startup-config") == "startup-config is not present"
    run(c, "conf t", "snmp-server community labq RO", "end")
    reply = c.feed("copy running-config startup-config")
    assert reply.prompt == "Destination filename [startup-config]? "
    assert c.feed("").output == "Building configuration...\n[OK]"
    assert "snmp-server community labq RO" in run(c, "show startup-config")
    assert run(c, "wr") == "Building configuration...\n[OK]"
    assert run(c, "write memory") == "Building configuration...\n[OK]"


def test_do_and_interrupt_in_config_mode() -> None:
    c = cli()
    c.feed("conf t")
    reply = c.feed("do show clock")
    assert reply.prompt == "r1(config)#" and "UTC" in reply.output
    assert c.interrupt().prompt == "r1#"


def test_exit_and_logout_close_the_session() -> None:
    for word in ("exit", "logout", "quit"):
        assert cli().feed(word).close
    c = cli()
    c.feed("conf t")
    assert not c.feed("exit").close  # leaves config mode only
    assert c.prompt == "r1#"


def test_no_password_reaches_the_config() -> None:
    c = IosCli("r1", username="admin", enable_password="en-S3cret")
    run(c, "enable", "en-S3cret")
    config = run(c, "show running-config")
    assert "en-S3cret" not in config
    assert "enable secret 9 " in config and "username admin privilege 15" in config
