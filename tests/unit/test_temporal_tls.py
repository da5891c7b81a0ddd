"""Temporal TLS/mTLS and API key settings (boxrun.temporal.tls_config, connect_with): what each
combination builds, the clear errors for files that cannot work, and real connections.

The Temporal dev server serves no TLS itself, so the real connections go through a small TLS
terminator in front of it (this module's TlsFront: TLS 1.2+, ALPN h2, optionally requiring a
client certificate, bytes piped to the dev server's plaintext gRPC port). The handshake, the
certificate checks and mTLS are therefore real, on both sides; what lies behind the terminator is
the real dev server answering real RPCs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.client import TLSConfig
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from boxrun.settings import Settings
from boxrun.temporal import TemporalConfigError, connect, connect_with, tls_config

SERVER_NAME = "temporal.boxrun.test"
# A connection the TLS layer refuses fails Client.connect (the SDK's RuntimeError), or, where TLS
# 1.3 lets the handshake finish before the server checks the client's certificate, its first RPC.
REFUSED = (RuntimeError, RPCError)

# ---------------------------------------------------------------- certificates


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    # a DNS name only (no IP): a client dialling 127.0.0.1 must say which name it expects
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("boxrun test CA")
    other, _ = _ca("some other CA")
    server, server_key = _leaf(ca, ca_key, SERVER_NAME, server=True)
    client, client_key = _leaf(ca, ca_key, "boxrun-worker", server=False)
    return Pki(
        dir=d,
        ca=_write_cert(d / "ca.pem", ca),
        server_cert=_write_cert(d / "server.pem", server),
        server_key=_write_key(d / "server.key", server_key),
        client_cert=_write_cert(d / "client.pem", client),
        client_key=_write_key(d / "client.key", client_key),
        other_ca=_write_cert(d / "other-ca.pem", other),
    )


# ---------------------------------------------------------------- building the config (no server)


def test_plaintext_by_default_and_tls_when_asked_or_implied():
    assert tls_config(Settings()) is False
    assert tls_config(Settings(temporal_tls=True)) is True  # the system's CA roots
    # an API key switches TLS on by itself: it is never sent in clear text
    assert tls_config(Settings(temporal_api_key="k")) is True
    assert tls_config(Settings(temporal_tls=False)) is False


def test_files_are_read_into_the_tls_config(pki: Pki):
    cfg = tls_config(
        Settings(
            temporal_tls_ca_file=pki.ca,
            temporal_tls_cert_file=pki.client_cert,
            temporal_tls_key_file=pki.client_key,
            temporal_tls_server_name=SERVER_NAME,
        )
    )
    assert isinstance(cfg, TLSConfig)
    assert cfg.server_root_ca_cert == pki.ca.read_bytes()
    assert cfg.client_cert == pki.client_cert.read_bytes()
    assert cfg.client_private_key == pki.client_key.read_bytes()
    assert cfg.domain == SERVER_NAME
    # a CA alone: server verification only, no client certificate
    only_ca = tls_config(Settings(temporal_tls_ca_file=pki.ca))
    assert isinstance(only_ca, TLSConfig) and only_ca.client_cert is None and only_ca.domain is None
    # a server name alone: the system's roots, checked against that name
    named = tls_config(Settings(temporal_tls_server_name=SERVER_NAME))
    assert isinstance(named, TLSConfig) and named.server_root_ca_cert is None and named.domain == SERVER_NAME


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki):
    monkeypatch.setenv("BOXRUN_TEMPORAL_TLS", "true")
    monkeypatch.setenv("BOXRUN_TEMPORAL_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("BOXRUN_TEMPORAL_TLS_SERVER_NAME", SERVER_NAME)
    monkeypatch.setenv("BOXRUN_TEMPORAL_API_KEY", "")  # empty means unset
    s = Settings()
    assert s.temporal_tls is True and s.temporal_tls_ca_file == pki.ca and s.temporal_api_key is None
    cfg = tls_config(s)
    assert isinstance(cfg, TLSConfig) and cfg.server_root_ca_cert == pki.ca.read_bytes()


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("temporal_tls_ca_file", "BOXRUN_TEMPORAL_TLS_CA_FILE"),
        ("temporal_tls_cert_file", "BOXRUN_TEMPORAL_TLS_CERT_FILE"),
        ("temporal_tls_key_file", "BOXRUN_TEMPORAL_TLS_KEY_FILE"),
    ],
)
def test_a_missing_file_is_a_clear_error_naming_the_setting(pki: Pki, tmp_path: Path, field: str, setting: str):
    good = {
        "temporal_tls_ca_file": pki.ca,
        "temporal_tls_cert_file": pki.client_cert,
        "temporal_tls_key_file": pki.client_key,
    }
    missing = tmp_path / "nope.pem"
    with pytest.raises(TemporalConfigError, match=rf"^{setting}: cannot read {missing}: No such file"):
        tls_config(Settings(**{**good, field: missing}))


def test_an_unreadable_or_non_pem_file_is_refused(pki: Pki, tmp_path: Path):
    with pytest.raises(TemporalConfigError, match=r"BOXRUN_TEMPORAL_TLS_CA_FILE: cannot read .*: Is a directory"):
        tls_config(Settings(temporal_tls_ca_file=tmp_path))
    der = tmp_path / "ca.der"
    der.write_bytes(x509.load_pem_x509_certificate(pki.ca.read_bytes()).public_bytes(serialization.Encoding.DER))
    with pytest.raises(TemporalConfigError, match=r"BOXRUN_TEMPORAL_TLS_CA_FILE: .*ca.der holds no PEM block"):
        tls_config(Settings(temporal_tls_ca_file=der))


def test_contradictions_are_refused(pki: Pki):
    with pytest.raises(
        TemporalConfigError, match="both BOXRUN_TEMPORAL_TLS_CERT_FILE and BOXRUN_TEMPORAL_TLS_KEY_FILE"
    ):
        tls_config(Settings(temporal_tls_cert_file=pki.client_cert))
    with pytest.raises(
        TemporalConfigError, match="both BOXRUN_TEMPORAL_TLS_CERT_FILE and BOXRUN_TEMPORAL_TLS_KEY_FILE"
    ):
        tls_config(Settings(temporal_tls_key_file=pki.client_key))
    with pytest.raises(TemporalConfigError, match="an API key is only sent over TLS"):
        tls_config(Settings(temporal_tls=False, temporal_api_key="k"))
    with pytest.raises(TemporalConfigError, match="BOXRUN_TEMPORAL_TLS is false but BOXRUN_TEMPORAL_TLS_CA_FILE set"):
        tls_config(Settings(temporal_tls=False, temporal_tls_ca_file=pki.ca))


async def test_connect_with_passes_tls_api_key_and_runtime(monkeypatch: pytest.MonkeyPatch, pki: Pki):
    """What reaches Client.connect (the real connections below cover TLS end to end; an API key
    needs Temporal Cloud or an authorizer, which the dev server has not)."""
    from temporalio.client import Client
    from temporalio.runtime import Runtime

    seen: dict[str, object] = {}

    async def fake_connect(target_host: str, **kwargs: object) -> str:
        seen.update(kwargs, target_host=target_host)
        return "client"

    monkeypatch.setattr(Client, "connect", fake_connect)
    runtime = Runtime.default()
    settings = Settings(
        temporal_address="ns.acct.tmprl.cloud:7233", temporal_namespace="ns.acct", temporal_api_key="key-1"
    )
    assert await connect_with(settings, runtime=runtime) == "client"
    assert seen["target_host"] == "ns.acct.tmprl.cloud:7233" and seen["namespace"] == "ns.acct"
    assert seen["api_key"] == "key-1" and seen["tls"] is True and seen["runtime"] is runtime
    await connect_with(Settings(temporal_tls_ca_file=pki.ca))
    assert isinstance(seen["tls"], TLSConfig) and seen["api_key"] is None and seen["runtime"] is None


async def test_search_attributes_a_client_may_not_add_are_a_clear_error():
    """Temporal Cloud refuses AddSearchAttributes to a namespace's clients: say what to do."""
    from types import SimpleNamespace

    from temporalio.service import RPCError, RPCStatusCode

    from boxrun.temporal import ensure_search_attributes

    class Operator:
        async def list_search_attributes(self, request):
            return SimpleNamespace(custom_attributes={"JobState": 2})

        async def add_search_attributes(self, request):
            raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")

    client = SimpleNamespace(namespace="ns.acct", operator_service=Operator())
    with pytest.raises(
        TemporalConfigError, match=r"namespace ns.acct lacks the search attributes BoxId, Owner, PipelineId"
    ) as err:
        await ensure_search_attributes(client)
    assert "tcld namespace search-attributes add --namespace ns.acct" in str(err.value)


async def test_the_worker_stops_at_start_on_a_bad_path(tmp_path: Path):
    """The control worker reads the TLS files before it touches Temporal, Postgres or S3."""
    from boxrun.worker.control import run_control_worker

    missing = tmp_path / "client.pem"
    settings = Settings(temporal_tls_cert_file=missing, temporal_tls_key_file=tmp_path / "client.key")
    with pytest.raises(TemporalConfigError, match="BOXRUN_TEMPORAL_TLS_CERT_FILE: cannot read"):
        await asyncio.wait_for(run_control_worker(settings, asyncio.Event()), 10)


async def test_the_api_stops_at_start_on_a_bad_path(tmp_path: Path):
    """The API connects to Temporal first, so a bad file stops it before it opens anything."""
    from boxrun.api.app import create_app

    app = create_app(Settings(temporal_tls_ca_file=tmp_path / "ca.pem"))
    with pytest.raises(TemporalConfigError, match="BOXRUN_TEMPORAL_TLS_CA_FILE: cannot read"):
        async with app.router.lifespan_context(app):
            pass
    assert not hasattr(app.state, "pool")


def test_boxrun_dev_keeps_its_plaintext_temporal_whatever_the_shell_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """`boxrun dev` starts its api and worker with the shell's environment plus its own: TLS
    settings meant for another cluster must not reach them (its dev server is plaintext)."""
    from boxrun.dev.stack import DevStack, S3Credentials, StackOptions

    for name, value in {
        "BOXRUN_TEMPORAL_TLS": "true",
        "BOXRUN_TEMPORAL_TLS_CA_FILE": "/nowhere/ca.pem",
        "BOXRUN_TEMPORAL_TLS_CERT_FILE": "/nowhere/client.pem",
        "BOXRUN_TEMPORAL_TLS_KEY_FILE": "/nowhere/client.key",
        "BOXRUN_TEMPORAL_TLS_SERVER_NAME": "prod.example.com",
        "BOXRUN_TEMPORAL_API_KEY": "prod-key",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(TemporalConfigError):
        tls_config(Settings())  # what the shell alone would give
    ports = {"api": 1, "temporal": 2, "temporal_ui": 3, "s3": 4, "api_metrics": 5, "worker_metrics": 6}
    stack = DevStack(StackOptions(data_dir=tmp_path), ports)
    env = stack._base_env("token", "postgresql://u@127.0.0.1:5/db", S3Credentials("a", "b"), "key")
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # as spawn() lays the stack's env over the shell's
    settings = Settings()
    assert settings.temporal_address == "127.0.0.1:2"
    assert tls_config(settings) is False and settings.temporal_api_key is None


# ---------------------------------------------------------------- real connections


class TlsFront:
    """A TLS terminator on 127.0.0.1 in front of a plaintext gRPC server: it does the handshake
    (optionally requiring a client certificate signed by the test CA) and then pipes bytes.
    `handshakes` counts the connections whose handshake succeeded on its side."""

    def __init__(self, backend: str, pki: Pki, *, require_client_cert: bool) -> None:
        host, _, port = backend.rpartition(":")
        self.backend = (host, int(port))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.set_alpn_protocols(["h2"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(pki.ca)
        self.ctx = ctx
        self.handshakes = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> TlsFront:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass  # the other side went away: close both below
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


def _backend(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
async def mtls_front(temporal_env: WorkflowEnvironment, pki: Pki) -> AsyncIterator[TlsFront]:
    async with TlsFront(_backend(temporal_env), pki, require_client_cert=True) as front:
        yield front


@pytest.fixture
async def tls_front(temporal_env: WorkflowEnvironment, pki: Pki) -> AsyncIterator[TlsFront]:
    async with TlsFront(_backend(temporal_env), pki, require_client_cert=False) as front:
        yield front


def _mtls_settings(front: TlsFront, pki: Pki) -> Settings:
    return Settings(
        temporal_address=front.address,
        temporal_tls_ca_file=pki.ca,
        temporal_tls_cert_file=pki.client_cert,
        temporal_tls_key_file=pki.client_key,
        temporal_tls_server_name=SERVER_NAME,
    )


async def _namespace_answers(client) -> bool:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    answer = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=client.namespace))
    return answer.namespace_info.name == client.namespace


async def _refused(settings: Settings, front: TlsFront) -> None:
    """Connecting with these settings fails, and the TLS front saw no finished handshake."""
    with pytest.raises(REFUSED):
        client = await asyncio.wait_for(connect_with(settings), 30)
        await _namespace_answers(client)
    assert front.handshakes == 0, "refused by the TLS handshake, not later"


async def test_real_mtls_connection(mtls_front: TlsFront, pki: Pki):
    client = await connect_with(_mtls_settings(mtls_front, pki))
    assert await _namespace_answers(client)
    assert mtls_front.handshakes >= 1


async def test_mtls_without_a_client_certificate_is_refused(mtls_front: TlsFront, pki: Pki):
    settings = Settings(
        temporal_address=mtls_front.address, temporal_tls_ca_file=pki.ca, temporal_tls_server_name=SERVER_NAME
    )
    await _refused(settings, mtls_front)


async def test_a_server_signed_by_another_ca_is_refused(tls_front: TlsFront, pki: Pki):
    settings = Settings(
        temporal_address=tls_front.address, temporal_tls_ca_file=pki.other_ca, temporal_tls_server_name=SERVER_NAME
    )
    await _refused(settings, tls_front)


async def test_the_server_name_is_checked(tls_front: TlsFront, pki: Pki):
    # the certificate names temporal.boxrun.test only: dialled as 127.0.0.1 without a server name, refused
    bare = Settings(temporal_address=tls_front.address, temporal_tls_ca_file=pki.ca)
    await _refused(bare, tls_front)
    named = Settings(
        temporal_address=tls_front.address, temporal_tls_ca_file=pki.ca, temporal_tls_server_name=SERVER_NAME
    )
    assert await _namespace_answers(await connect_with(named))


async def test_plaintext_to_a_tls_port_fails_and_tls_to_a_plaintext_port_fails(
    temporal_env: WorkflowEnvironment, tls_front: TlsFront, pki: Pki
):
    with pytest.raises(REFUSED):
        client = await asyncio.wait_for(connect(tls_front.address), 30)
        await _namespace_answers(client)
    assert tls_front.handshakes == 0
    secured = Settings(
        temporal_address=_backend(temporal_env), temporal_tls_ca_file=pki.ca, temporal_tls_server_name=SERVER_NAME
    )
    with pytest.raises(REFUSED):
        client = await asyncio.wait_for(connect_with(secured), 30)
        await _namespace_answers(client)


def test_the_ip_address_is_not_in_the_server_certificate(pki: Pki):
    """What test_the_server_name_is_checked relies on."""
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [SERVER_NAME]
    assert ipaddress.ip_address("127.0.0.1") not in san.get_values_for_type(x509.IPAddress)
