"""The client's small requests (``modelkeep.api.quick``) over HTTPS, and their kept connections.

The API's JSON calls skip ``httpx`` and go through ``http.client``; these tests hold them to what
``httpx`` did for them: the server's certificate and host name checked against the same roots
(``SSL_CERT_FILE`` here), an untrusted or misnamed certificate a clear error, and a connection
kept no longer than :data:`~modelkeep.api.wire.KEEPALIVE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelkeep.api import quick
from modelkeep.api.client import HttpRegistry
from modelkeep.errors import StorageError


def _certificate(folder: Path, *, names: list[x509.GeneralName]) -> tuple[Path, Path]:
    """A self-signed certificate for ``names``, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelkeep test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextlib.contextmanager
def _tls_server(cert_file: Path, key_file: Path) -> Iterator[tuple[int, list[str]]]:
    """An HTTPS server on loopback answering every GET with JSON naming its path and the
    connection it came on (HTTP/1.1, kept alive); yields its port and the request lines seen."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(f"{self.command} {self.path} {self.client_address[1]}")
            body = json.dumps({"path": self.path, "peer_port": self.client_address[1]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_https_requests_check_the_certificate_against_the_trusted_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = _certificate(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    with _tls_server(cert_file, key_file) as (port, seen):
        url = f"https://127.0.0.1:{port}"
        # Not trusted (certifi's roots): refused, with the reason, before any request is sent.
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        with HttpRegistry(url) as client, pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
            client.request("GET", "/ping")
        assert seen == []
        # Trusted through SSL_CERT_FILE, as httpx trusts it: answered, on one kept connection.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        with HttpRegistry(url) as client:
            first = client.request("GET", "/ping", params={"a": "b c"})
            second = client.request("GET", "/ping")
        assert first["path"] == "/api/v1/ping?a=b+c" and second["path"] == "/api/v1/ping"
        assert first["peer_port"] == second["peer_port"]
        assert len(seen) == 2


def test_https_refuses_a_certificate_for_another_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_file, key_file = _certificate(tmp_path, names=[x509.DNSName("models.example")])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with (
        _tls_server(cert_file, key_file) as (port, seen),
        HttpRegistry(f"https://127.0.0.1:{port}") as client,
        pytest.raises(StorageError, match=r"IP address mismatch.*127\.0\.0\.1"),
    ):
        client.request("GET", "/ping")
    assert seen == []


def test_a_connection_idle_past_the_keepalive_is_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reused while young, replaced once idle for longer than the client keeps connections (less
    than the server's keep-alive, so the client never sends on one the server is closing)."""
    cert_file, key_file = _certificate(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    clock = [1000.0]
    monkeypatch.setattr(quick.time, "monotonic", lambda: clock[0])
    with _tls_server(cert_file, key_file) as (port, _), HttpRegistry(f"https://127.0.0.1:{port}") as client:
        ports = [client.request("GET", "/a")["peer_port"]]
        clock[0] += quick.KEEPALIVE_SECONDS / 2
        ports.append(client.request("GET", "/b")["peer_port"])
        clock[0] += quick.KEEPALIVE_SECONDS + 0.1
        ports.append(client.request("GET", "/c")["peer_port"])
    assert ports[0] == ports[1] != ports[2]


@pytest.mark.parametrize(
    "port_of",
    [
        pytest.param(lambda client, path: client.request("GET", path)["peer_port"], id="quick"),
        # the streaming client (httpx, made at a client's first stream) is the child's own too
        pytest.param(lambda client, path: client._http.get(path).json()["peer_port"], id="streamed"),
    ],
)
def test_a_forked_child_keeps_connections_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port_of: Callable[[HttpRegistry, str], int]
) -> None:
    """A registry client made before a fork (a training script's workers): the child's requests go
    on a connection of its own (kept for its next request), and the parent's kept connection still
    answers the parent."""
    cert_file, key_file = _certificate(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with _tls_server(cert_file, key_file) as (port, seen), HttpRegistry(f"https://127.0.0.1:{port}") as client:
        parent_port = port_of(client, "/before")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report the ports its requests came from, or the error
            try:
                answer = json.dumps({"ports": [port_of(client, f"/child{i}") for i in range(2)]})
            except BaseException as exc:  # reported to the parent, which fails the test
                answer = json.dumps({"error": repr(exc)})
            os.write(write, answer.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
        after = port_of(client, "/after")
    assert "error" not in child, child
    assert parent_port not in child["ports"] and child["ports"][0] == child["ports"][1]
    assert after == parent_port  # the parent's connection was neither used nor closed by the child
    assert [line.split()[1] for line in seen] == ["/api/v1/before", "/api/v1/child0", "/api/v1/child1", "/api/v1/after"]


def test_a_connection_is_kept_in_a_process_with_over_1024_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a kept connection was closed by the server is asked of its socket with poll():
    select() cannot take a file descriptor of 1,024 or more, and the connection was dropped."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this machine allows only {hard} open files; the test needs 1,200")
    cert_file, key_file = _certificate(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with _tls_server(cert_file, key_file) as (port, _), HttpRegistry(f"https://127.0.0.1:{port}") as client:
            ports = [client.request("GET", f"/{i}")["peer_port"] for i in range(3)]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(set(ports)) == 1, ports


def test_a_client_dropped_without_close_closes_its_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripts often drop a registry without ``close()``: its kept sockets close when it is
    collected (before: a ResourceWarning for each at exit, and the socket held until then)."""
    import gc
    import sys

    cert_file, key_file = _certificate(tmp_path, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    with _tls_server(cert_file, key_file) as (port, _):
        client = HttpRegistry(f"https://127.0.0.1:{port}")
        client.request("GET", "/ping")
        kept = [conn for _, conn in client._quick._idle]
        assert kept and all(conn.sock is not None for conn in kept)
        del client
        gc.collect()
        assert all(conn.sock is None for conn in kept)  # closed
    assert not [e for e in unraisable if isinstance(e, ResourceWarning)], unraisable
