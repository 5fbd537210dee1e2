"""Faults of saves and loads through a registry server: a server killed mid-upload, a server that
stalls, and the server's memory while a large upload streams through it.

These run a real ``modelkeep server`` process (tests/_http_server.py), so it can be killed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep.api import client_transfers
from modelkeep.api.client import HttpRegistry
from modelkeep.errors import StorageError
from modelkeep.layout import TMP_DIR

from ._http_server import HttpServer, ServerSide, running_server
from ._presigned_hooks import before_first_part, whole_file

MiB = 1 << 20


def _staged_bytes(models_dir: str) -> int:
    tmp = Path(models_dir) / TMP_DIR
    return sum(p.stat().st_size for p in tmp.glob("*.part")) if tmp.exists() else 0


def _throttled(delay: float) -> Any:
    """An upload reader that pauses between 1 MiB chunks, so a test can act mid-upload."""

    def read_chunks(f: Any) -> Iterator[bytes]:
        while chunk := f.read(MiB):
            time.sleep(delay)
            yield chunk

    return read_chunks


def test_a_server_killed_mid_upload_commits_nothing_and_a_retry_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = ServerSide(str(tmp_path / "models"))
    model = {"weights": np.random.default_rng(1).random(48 * MiB // 8)}  # 48 MiB of float64
    monkeypatch.setattr(client_transfers, "_read_chunks", _throttled(0.02))
    outcome: list[BaseException | None] = []
    with running_server(side, tmp_path / "first") as server:
        client = server.client()

        def save() -> None:
            try:
                client.save_version(model, "big", compress=False)
                outcome.append(None)
            except BaseException as exc:  # the thread reports what the client raised
                outcome.append(exc)

        saver = threading.Thread(target=save)
        saver.start()
        deadline = time.monotonic() + 120
        while _staged_bytes(side.models_dir) < 8 * MiB and saver.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert saver.is_alive(), "the upload finished before the server could be killed"
        server.kill()
        saver.join(timeout=120)
        client.close()
    assert len(outcome) == 1 and isinstance(outcome[0], StorageError), outcome
    message = str(outcome[0])
    assert "\n" not in message and server.url in message  # one line naming the server

    with running_server(side, tmp_path / "second") as server, server.client() as client:  # back again
        assert "big" not in client.list_models()
        with server.direct() as direct:
            assert direct.list_models() == []
            report = direct.gc(min_age_seconds=0)  # the half upload is a staged file: gc's
            assert any(TMP_DIR in item.key for item in report.removed), report
            assert _staged_bytes(side.models_dir) == 0
            assert direct.verify().ok
        monkeypatch.setattr(client_transfers, "_read_chunks", _throttled(0))
        rec = client.save_version(model, "big", compress=False)
        assert rec.version == "1.0.0"
        assert np.array_equal(client.load("big")["weights"], model["weights"])


@contextlib.contextmanager
def _stalling_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        for conn in held:
            conn.close()
        listener.close()


def test_a_stalled_server_is_a_clear_error_after_the_read_timeout() -> None:
    with _stalling_server() as url, HttpRegistry(url, read_timeout=0.5) as client:
        with pytest.raises(StorageError, match="did not answer in time"):
            client.load("m")
        with pytest.raises(StorageError, match="did not answer in time"):
            client.save_version({"a": np.zeros(4 * MiB)}, "m", compress=False)  # larger than socket buffers


@contextlib.contextmanager
def _server_closing_its_kept_connection() -> Iterator[tuple[str, list[str]]]:
    """A server that answers the first request of each connection, keeps the connection open, and
    closes it without answering when the next request arrives on it: what a client meets when it
    reuses an idle connection just as the server's keep-alive runs out. Yields the URL and the
    request lines it received, answered or not."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    seen: list[str] = []
    stop = threading.Event()

    def read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
        )
        while len(body) < length:
            body += conn.recv(65536)
        return head

    def serve(conn: socket.socket) -> None:
        with conn:
            head = read_request(conn)
            seen.append(head.split(b"\r\n")[0].decode())
            body = b'{"answered": true}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = read_request(conn)  # the reused connection: closed with no answer
            if head:
                seen.append(head.split(b"\r\n")[0].decode())

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def test_a_read_on_a_connection_the_server_closed_unanswered_is_sent_again_and_a_write_is_not() -> None:
    """A kept-alive connection the server drops without answering: a request that changes nothing
    (GET, streamed or not) goes again on a new connection and succeeds; one that may change something (POST) is
    never sent twice: the client raises a clear error, and the server saw it once."""
    with _server_closing_its_kept_connection() as (url, seen), HttpRegistry(url) as client:
        assert client.request("GET", "/one") == {"answered": True}
        assert client.request("GET", "/two") == {"answered": True}  # first try dropped unanswered
        assert seen == ["GET /api/v1/one HTTP/1.1", "GET /api/v1/two HTTP/1.1", "GET /api/v1/two HTTP/1.1"]
        seen.clear()
        with client._http.stream("GET", "/warm") as streamed:  # streams keep connections of their own
            assert streamed.read() == b'{"answered": true}'
        with client._http.stream("GET", "/three") as streamed:  # a download goes the same way
            assert streamed.read() == b'{"answered": true}'
        assert seen == ["GET /api/v1/warm HTTP/1.1", "GET /api/v1/three HTTP/1.1", "GET /api/v1/three HTTP/1.1"]
        seen.clear()
        with pytest.raises(StorageError, match="cannot reach the registry server"):
            client.request("POST", "/four", json={"x": 1})
        assert seen == ["POST /api/v1/four HTTP/1.1"]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_large_upload_streams_through_the_server_in_bounded_memory(http_server: HttpServer) -> None:
    """256 MiB through the server: its peak memory grows by far less than the artifact."""
    assert http_server.process is not None
    size = 256 * MiB
    model = {"weights": np.random.default_rng(2).random(size // 8)}
    with http_server.client() as client:
        client.save_version({"warm": np.zeros(1000)}, "warm")
        client.load("warm")
        before = _peak_rss(http_server.process.pid)
        rec = client.save_version(model, "big", compress=False)
        during_save = _peak_rss(http_server.process.pid)
        back = client.load("big")
        after_load = _peak_rss(http_server.process.pid)
    assert rec.artifact is not None and rec.artifact.size > size
    assert np.array_equal(back["weights"], model["weights"])
    grew = after_load - before
    print(f"server peak RSS {before / MiB:.0f} MiB -> {during_save / MiB:.0f} (save) -> {after_load / MiB:.0f} (load)")
    assert grew < 64 * MiB, f"the server's peak memory grew by {grew / MiB:.0f} MiB for a 256 MiB artifact"


#: A client in a process of its own: saves and loads a 256 MiB array through the server, and
#: prints its peak RSS (VmHWM) before, after the save and after the load, in bytes.
_CLIENT = """
import json, sys
import numpy as np
from modelkeep.api.client import HttpRegistry

def peak():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024

url, token = sys.argv[1], sys.argv[2]
model = {"weights": np.random.default_rng(3).random((256 << 20) // 8)}
with HttpRegistry(url, token=token, cache_max_bytes=0) as client:
    client.save_version({"warm": np.zeros(1000)}, "warm")
    client.load("warm")
    before = peak()
    rec = client.save_version(model, "big-client", compress=False)
    saved = peak()
    back = client.load("big-client")
    loaded = peak()
assert np.array_equal(back["weights"], model["weights"])
print(json.dumps({"size": rec.artifact.size, "before": before, "saved": saved, "loaded": loaded}))
"""


def test_a_large_transfer_keeps_the_client_in_bounded_memory(http_server: HttpServer) -> None:
    """256 MiB saved and loaded through the server by a client process: the save adds far less
    than the artifact to its peak memory (the bytes stream from its scratch file), and the load
    about one artifact (the arrays it returns), not two (nothing holds the bytes besides them)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CLIENT, http_server.url, http_server.token],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    size = 256 * MiB
    assert rss["size"] > size
    save_grew, load_grew = rss["saved"] - rss["before"], rss["loaded"] - rss["saved"]
    print(f"client peak RSS grew by {save_grew / MiB:.0f} MiB (save), then {load_grew / MiB:.0f} MiB (load)")
    assert save_grew < 64 * MiB, f"the save grew the client's peak memory by {save_grew / MiB:.0f} MiB"
    assert load_grew < size + 64 * MiB, f"the load grew the client's peak memory by {load_grew / MiB:.0f} MiB"


@pytest.mark.parametrize("whole", [False, True])
def test_a_server_killed_during_a_presigned_upload_commits_nothing(
    whole: bool, tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL + S3: the server dies while the client sends parts straight to the bucket (to
    the version's final key, under the claim the plan took), once the first part's URL is out:
    sent in parts as it is serialized, the next part's URL cannot be had; by a whole-file plan,
    the commit cannot happen. Either way a one-line StorageError; the claim and the open multipart
    upload are gc's once the server is back, and the save succeeds when tried again."""
    from tests.conftest import PG_URL, postgres_schema

    if PG_URL is None:
        pytest.fail("set MODELKEEP_TEST_POSTGRES_URL: this test needs PostgreSQL")
    model = {"w": np.random.default_rng(5).random(20 * MiB // 8)}  # two parts: a multipart upload
    with postgres_schema() as schema:
        side = ServerSide(s3_bucket.url(), PG_URL, schema, s3_bucket.storage_options)
        with running_server(side, tmp_path / "first") as server, server.client() as client:
            whole_file(client, whole)
            with monkeypatch.context() as m:
                # the first part's URL is out; the parts go to the bucket without the server
                before_first_part(m, lambda _url: server.kill())
                with pytest.raises(StorageError) as caught:
                    client.save_version(model, "big", compress=False)
            assert "\n" not in str(caught.value) and server.url in str(caught.value)
        with running_server(side, tmp_path / "second") as server, server.client() as client:
            assert "big" not in client.list_models()
            with server.direct() as direct:
                report = direct.gc(min_age_seconds=0)
                # the parts went to the version's final key under the claim the plan took: the
                # dead server's claim is released and its open upload aborted, its bytes reported
                assert [c for c in report.released_claims if c.startswith("save of big 1.0.0 ")], report
                aborted = [i for i in report.removed if i.key.startswith("big/1.0.0/") and "upload" in i.key]
                assert len(aborted) == 1 and aborted[0].size > 0, report
                assert direct.verify().ok
            rec = client.save_version(model, "big", compress=False)
            assert rec.version == "1.0.0"
            assert np.array_equal(client.load("big")["w"], model["w"])
