"""rediss:// on loopback with a CA made here: a run end to end over TLS, with
client certificates (``tls-auth-clients yes``), and a clear error when labq is
given the wrong CA."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis_roles import AclRedis, Roles, redis_server_major

import labq
from conftest import lab_testbed, need, stack_settings
from labq.embedded.sim.process import SimProcess
from labq.embedded.stack import node_name
from labq.errors import BrokerUnavailable, ConfigError
from labq.ops.device_list import device_rows
from labq.redis_client import connect
from labq.settings import Settings
from tasks import diag
from tasks.device import execute


def redis_has_tls() -> bool:
    binary = shutil.which("redis-server")
    if not binary:
        return False
    out = subprocess.run([binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/dev/null"],
                         capture_output=True, text=True, timeout=10).stdout
    return "Bad directive" not in out


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, directory: Path,
          *, server: bool) -> tuple[Path, Path]:
    """A leaf certificate for 127.0.0.1/localhost signed by ``ca``: (cert, key) paths."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def write_ca(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], path: Path) -> Path:
    path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    need(redis_server_major() >= 7, "config/users.acl needs redis-server 7 or later on PATH")
    need(redis_has_tls(), "the redis-server on PATH is built without TLS (Debian's has it)")
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca("labq test CA")
    server_cert, server_key = issue(ca, "redis", d, server=True)
    client_cert, client_key = issue(ca, "labq-client", d, server=False)
    return {"ca": write_ca(ca, d / "ca.crt"), "server_cert": server_cert,
            "server_key": server_key, "client_cert": client_cert, "client_key": client_key,
            "wrong_ca": write_ca(make_ca("some other CA"), d / "wrong-ca.crt")}


@pytest.fixture()
def server(pki: dict[str, Path], tmp_path: Path) -> Iterator[AclRedis]:
    s = AclRedis(tmp_path / "redis", tls=(pki["server_cert"], pki["server_key"], pki["ca"])).start()
    yield s
    s.stop()


def tls_settings(base: Settings, pki: dict[str, Path], ca: str = "ca") -> Settings:
    return base.replace(redis_tls_ca=str(pki[ca]), redis_tls_cert=str(pki["client_cert"]),
                        redis_tls_key=str(pki["client_key"]))


@pytest.fixture()
def roles(server: AclRedis, pki: dict[str, Path], tmp_path: Path) -> Iterator[Roles]:
    testbed = lab_testbed(tmp_path / "testbed.yaml")
    base = tls_settings(stack_settings(tmp_path, testbed=testbed), pki)
    with SimProcess(testbed, state_dir=tmp_path / "sim"):
        r = Roles(base, server).start()
        yield r
        r.stop()


def test_run_end_to_end_over_tls(roles: Roles) -> None:
    client = roles.settings("client")
    assert client.broker_url.startswith("rediss://")
    with labq.Run("tls", settings=client, progress=False) as run:
        run.submit(diag.echo, value="over tls")
        run.submit_many(diag.echo, [{"value": i} for i in range(4)])
    assert [o.status for o in run.outcomes] == [labq.Status.SUCCEEDED] * 5, run.outcomes
    assert {o.worker for o in run.outcomes} <= {node_name("lab-a"), node_name("lab-b")}
    # Flower (as `flower`, over TLS too) sees both workers.
    assert set(roles.flower_workers()) >= {node_name("lab-a"), node_name("lab-b")}
    # labq's own clients: `labq devices` reads the leases over TLS.
    assert device_rows(roles.settings("worker"))


def test_device_tasks_over_tls(roles: Roles) -> None:
    with labq.Run("tls-devices", settings=roles.settings("client"), progress=False) as run:
        run.submit(execute, device="a1", command="show version")
        run.submit(execute, device="b1", command="show version")
    assert [o.status for o in run.outcomes] == [labq.Status.SUCCEEDED] * 2, run.outcomes
    assert [o.worker for o in run.outcomes] == [node_name("lab-a"), node_name("lab-b")]


def test_wrong_ca_is_a_clear_error(server: AclRedis, pki: dict[str, Path],
                                   tmp_path: Path) -> None:
    settings = tls_settings(stack_settings(tmp_path), pki, ca="wrong_ca").replace(
        broker_url=server.url("client"))
    with pytest.raises(BrokerUnavailable) as caught:
        labq.Run("wrong-ca", settings=settings, progress=False)
    message = str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message or "certificate verify failed" in message
    assert f"LABQ_REDIS_TLS_CA={pki['wrong_ca']}" in message
    assert server.passwords["client"] not in message
    # The right CA works with the same URL.
    good = tls_settings(stack_settings(tmp_path), pki).replace(broker_url=server.url("client"))
    assert connect(good.broker_url, good).ping()


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, broker_url="rediss://client:pw@127.0.0.1:1/0",
                              redis_tls_ca=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="LABQ_REDIS_TLS_CA"):
        labq.Run("missing-ca", settings=settings, progress=False)
