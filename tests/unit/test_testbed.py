"""The testbed loader: pyATS YAML and objects in, frozen dataclasses out, clear errors."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from labq.devices.testbed import Credentials, Testbed
from labq.devices.testbed_yaml import as_testbed, from_pyats, load_testbed
from labq.errors import LabqError, TestbedError, UnknownDevice

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55"


def write(tmp_path: Path, data: dict[str, Any], name: str = "testbed.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def device(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "os": "iosxe", "type": "router",
        "connections": {"cli": {"protocol": "ssh", "ip": "127.0.0.1", "port": 12001}},
    }
    base.update(overrides)
    return base


def tb_data(**devices: dict[str, Any]) -> dict[str, Any]:
    return {"testbed": {"name": "lab", "credentials": {
        "default": {"username": "admin", "password": SECRET}}},
        "devices": devices or {"r1": device()}}


def error_for(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(TestbedError) as info:
        load_testbed(write(tmp_path, data))
    message = str(info.value)
    assert SECRET not in message
    return message


def test_demo_testbed_has_two_segments_and_faulty_devices() -> None:
    tb = load_testbed(ROOT / "config" / "testbed.yaml")
    assert len(tb) == 20
    queues = {d.queue for d in tb}
    assert queues == {"lab-a", "lab-b"}
    assert sum(d.queue == "lab-a" for d in tb) == 10
    knobs = {name: d.sim for name, d in tb.devices.items() if d.sim}
    assert {"hang", "unreachable", "auth_fail", "latency"} <= {k for s in knobs.values() for k in s}
    ports = [d.connection.port for d in tb]
    assert len(set(ports)) == 20 and all(12001 <= p <= 12020 for p in ports)  # type: ignore[operator]


def test_device_fields_and_defaults(tmp_path: Path) -> None:
    data = tb_data(r1=device(platform="c8000v", connections={
        "defaults": {"class": "unicon.Unicon", "via": "vty"},
        "cli": {"protocol": "ssh", "ip": "127.0.0.1", "port": 12001},
        "vty": {"protocol": "ssh", "ip": "::1", "port": 2201, "driver": "netmiko"},
        "mock": {"command": "mock_device_cli --os iosxe --state general_enable"},
    }, custom={"labq": {"queue": "lab-a", "max_sessions": 3, "driver": "unicon",
                        "sim": {"latency": 0.5, "hang": "^show ver", "auth_fail": False}}}),
        r2=device())
    tb = load_testbed(write(tmp_path, data))
    r1, r2 = tb.device("r1"), tb.device("r2")
    assert (r1.os, r1.type, r1.platform, r1.queue, r1.max_sessions, r1.driver) == (
        "iosxe", "router", "c8000v", "lab-a", 3, "unicon")
    assert r1.via == "vty" and r1.connection_class == "unicon.Unicon"
    assert r1.connection.name == "vty" and r1.address == "[::1]:2201"
    assert r1.connections["vty"].driver == "netmiko"
    assert r1.connections["mock"].address == "mock_device_cli --os iosxe --state general_enable"
    assert r1.sim == {"latency": 0.5, "hang": "^show ver", "auth_fail": False}
    assert (r2.queue, r2.max_sessions, r2.sim, r2.driver) == (None, 1, {}, None)
    assert r2.address == "127.0.0.1:12001"
    assert tb.name == "lab" and tb.source == tmp_path / "testbed.yaml"
    assert tb.queue_for("r1", "labq") == "lab-a" and tb.queue_for("r2", "labq") == "labq"
    assert "r1" in tb and "r9" not in tb
    with pytest.raises(dataclasses.FrozenInstanceError):
        r1.queue = "x"  # type: ignore[misc]


def test_ssh_port_defaults_to_22_and_name_to_file_stem(tmp_path: Path) -> None:
    data = {"devices": {"r1": device(connections={"a": {"protocol": "ssh", "ip": "10.0.0.1"}})}}
    tb = load_testbed(write(tmp_path, data, "mylab.yaml"))
    assert tb.name == "mylab"
    assert tb.device("r1").address == "10.0.0.1:22"
    assert tb.device("r1").credentials is None


def test_device_credentials_override_testbed_credentials(tmp_path: Path) -> None:
    data = tb_data(
        r1=device(),
        r2=device(credentials={"default": {"password": "other"}, "enable": {"password": "en"}}),
        r3=device(credentials={"default": {"username": "ops", "password": "ops-pw"}}),
    )
    tb = load_testbed(write(tmp_path, data))
    assert tb.device("r1").credentials == Credentials("admin", SECRET, None)
    assert tb.device("r2").credentials == Credentials("admin", "other", "en")
    assert tb.device("r3").credentials == Credentials("ops", "ops-pw", None)


def test_env_substitution_in_any_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_PW", SECRET)
    monkeypatch.setenv("LAB_PORT", "12345")
    monkeypatch.setenv("LAB_SEGMENT", "b")
    data = tb_data(r1=device(
        connections={"cli": {"protocol": "ssh", "ip": "127.0.0.1", "port": "%ENV{LAB_PORT}"}},
        custom={"labq": {"queue": "lab-%ENV{LAB_SEGMENT}"}}))
    data["testbed"]["credentials"]["default"]["password"] = "%ENV{LAB_PW}"
    tb = load_testbed(write(tmp_path, data))
    r1 = tb.device("r1")
    assert r1.connection.port == 12345
    assert r1.queue == "lab-b"
    assert r1.credentials is not None and r1.credentials.password == SECRET


def test_unset_env_names_variable_device_and_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABQ_NOT_SET", raising=False)
    data = tb_data(r7=device(credentials={"default": {"password": "%ENV{LABQ_NOT_SET}"}}))
    message = error_for(tmp_path, data)
    assert "LABQ_NOT_SET" in message
    assert "device 'r7'" in message
    assert str(tmp_path / "testbed.yaml") in message
    assert "credentials.default.password" in message


def test_error_names_file_device_key_and_value(tmp_path: Path) -> None:
    message = error_for(tmp_path, tb_data(r3=device(custom={"labq": {"max_sessions": "two"}})))
    path = tmp_path / "testbed.yaml"
    assert message == (f"{path}: device 'r3': custom.labq.max_sessions='two': "
                       "must be a positive integer")


@pytest.mark.parametrize(("dev", "expected"), [
    (device(custom={"labq": {"queues": "lab-a"}}), "custom.labq.queues: unknown key"),
    (device(custom={"labq": {"queue": "lab a"}}), "custom.labq.queue='lab a'"),
    (device(custom={"labq": {"max_sessions": 0}}), "max_sessions=0: must be a positive"),
    (device(custom={"labq": {"max_sessions": True}}), "max_sessions=True"),
    (device(custom={"labq": {"driver": "paramiko"}}), "custom.labq.driver='paramiko'"),
    (device(custom={"labq": {"sim": {"lag": 1}}}), "custom.labq.sim.lag: unknown sim knob"),
    (device(custom={"labq": {"sim": {"latency": -1}}}), "sim.latency=-1"),
    (device(custom={"labq": {"sim": {"hang": "show ("}}}), "not a valid regular expression"),
    (device(custom={"labq": {"sim": {"unreachable": "maybe"}}}), "must be true or false"),
    (device(connections={}), "connections: missing"),
    ({"os": "iosxe", "type": "router"}, "connections: missing"),
    (device(connections={"defaults": {"via": "cli"}}), "connections: missing"),
    (device(connections={"a": {"protocol": "ssh", "ip": "1.2.3.4"}, "defaults": {"via": "b"}}),
     "connections.defaults.via='b': no such connection"),
    (device(connections={"cli": {"protocol": "http", "ip": "1.2.3.4"}}),
     "connections.cli.protocol='http'"),
    (device(connections={"cli": {"protocol": "ssh"}}), "connections.cli.ip: missing"),
    (device(connections={"cli": {"protocol": "ssh", "ip": "1.2.3.4", "port": 70000}}),
     "connections.cli.port=70000"),
    (device(connections={"cli": {"ip": "1.2.3.4"}}), "connections.cli.protocol: missing"),
    (device(os=None), "os: missing"),
    (device(custom=["labq"]), "custom: must be a mapping"),
    (device(credentials={"default": {"username": "a", "passwd": SECRET}}),
     "credentials.default.passwd: unknown key"),
    (device(credentials={"default": {"password": "%ENC{gAAAA}"}}), "%ENC{} secrets need pyATS"),
])
def test_validation_errors(tmp_path: Path, dev: dict[str, Any], expected: str) -> None:
    message = error_for(tmp_path, tb_data(r1=dev))
    assert expected in message
    assert "device 'r1'" in message


def test_top_level_errors(tmp_path: Path) -> None:
    assert "devices: missing or empty" in error_for(tmp_path, {"testbed": {"name": "x"}})
    assert "unknown top-level key" in error_for(tmp_path, {**tb_data(), "device": {}})
    assert "'extends:' is not supported" in error_for(tmp_path, {**tb_data(), "extends": "a"})
    no_user = tb_data()
    del no_user["testbed"]["credentials"]["default"]["username"]
    assert "credentials.default.username: missing" in error_for(tmp_path, no_user)
    with pytest.raises(TestbedError, match="no such testbed file"):
        load_testbed(tmp_path / "nope.yaml")


def test_yaml_error_does_not_echo_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(f"testbed:\n  credentials: {{default: {{password: {SECRET}\ndevices: [\n")
    with pytest.raises(TestbedError) as info:
        load_testbed(path)
    assert "not valid YAML at line" in str(info.value)
    assert SECRET not in str(info.value)


def test_unknown_device_lists_close_matches(tmp_path: Path) -> None:
    tb = load_testbed(ROOT / "config" / "testbed.yaml")
    with pytest.raises(UnknownDevice) as info:
        tb.device("r21")
    assert info.value.close_matches and set(info.value.close_matches) <= set(tb.devices)
    assert "unknown device 'r21' in testbed 'labq-demo'; did you mean 'r2" in str(info.value)
    with pytest.raises(UnknownDevice, match="no device has a similar name"):
        tb.queue_for("zzzzzz", "labq")
    assert isinstance(info.value, LabqError)


def test_errors_rebuild_from_their_args() -> None:
    # Celery's JSON result backend rebuilds an exception as cls(*args).
    for exc in (UnknownDevice("r21", "lab", ["r2", "r1"]),
                TestbedError("tb.yaml", "must be a positive integer", "r3",
                             "custom.labq.max_sessions='two'")):
        clone = type(exc)(*exc.args)
        assert str(clone) == str(exc)


def test_credentials_are_masked_everywhere(tmp_path: Path) -> None:
    data = tb_data(r1=device(credentials={"enable": {"password": "en-" + SECRET}}))
    tb = load_testbed(write(tmp_path, data))
    creds = tb.device("r1").credentials
    assert creds is not None
    for text in (repr(creds), str(creds), repr(tb.device("r1")), repr(tb), f"{tb.devices}"):
        assert SECRET not in text
    assert repr(creds) == "Credentials(username='admin', password='****', enable_password='****')"


class SecretString:
    """Like pyATS's: ``str()`` is masked, ``.plaintext`` is the secret."""

    def __init__(self, text: str) -> None:
        self.plaintext = text

    def __str__(self) -> str:
        return "*****"


def pyats_testbed(**custom: Any) -> SimpleNamespace:
    r1 = SimpleNamespace(
        name="r1", os="iosxe", type="router", platform="cat8k",
        connections={"defaults": {"class": "unicon.Unicon", "via": "cli"},
                     "cli": {"protocol": "ssh", "ip": ipaddress.IPv4Address("127.0.0.1"),
                             "port": 12001}},
        credentials={"enable": {"password": SecretString("en")}},
        custom={"labq": {"queue": "lab-a", "max_sessions": 2, **custom}},
    )
    r2 = SimpleNamespace(name="r2", os="iosxe", type="router",
                         connections={"mock": SimpleNamespace(command="mock_device_cli")},
                         credentials=None, custom={})
    return SimpleNamespace(
        name="pyats-lab", testbed_file=None, devices={"r1": r1, "r2": r2},
        credentials={"default": {"username": "admin", "password": SecretString(SECRET)}})


def test_from_pyats_duck_typed() -> None:
    tb = from_pyats(pyats_testbed())
    assert isinstance(tb, Testbed) and tb.name == "pyats-lab" and tb.source is None
    r1, r2 = tb.device("r1"), tb.device("r2")
    assert r1.address == "127.0.0.1:12001" and r1.connection_class == "unicon.Unicon"
    assert (r1.queue, r1.max_sessions, r1.platform) == ("lab-a", 2, "cat8k")
    assert r1.credentials == Credentials("admin", SECRET, "en")
    assert r2.address == "mock_device_cli" and r2.credentials is not None
    assert as_testbed(tb) is tb


def test_from_pyats_validates_like_a_file() -> None:
    with pytest.raises(TestbedError) as info:
        from_pyats(pyats_testbed(sim={"jitter": 1}))
    assert str(info.value).startswith("pyATS testbed 'pyats-lab': device 'r1': "
                                      "custom.labq.sim.jitter: unknown sim knob")


def test_a_real_pyats_testbed_object_is_accepted(tmp_path: Path) -> None:
    loader = pytest.importorskip("pyats.topology.loader",
                                 reason="the pyats extra is not installed")
    from labq.devices.testbed_yaml import from_pyats
    from labq.embedded.sim.testbeds import make_testbed

    path = make_testbed(tmp_path, 2, queues=["lab-a", "lab-b"])
    tb = from_pyats(loader.load(str(path)))
    assert sorted(tb.devices) == ["r1", "r2"]
    assert tb.device("r2").queue == "lab-b"
    assert tb.device("r1").connection.port == load_testbed(path).device("r1").connection.port
