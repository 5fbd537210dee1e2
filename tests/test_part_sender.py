"""PartSender (the client half of an upload in parts) cutting a file into parts as it is written:
each part hashed and signed for its own bytes, whatever the writes' sizes and kinds; nothing
started for a file under one part; a failure kept for ``finish`` and the started upload dropped.

The signing is the test's (the server's is in test_http_presigned_claims.py); the PUTs go to a
loopback HTTP server that keeps the bodies it gets.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from modelkeep.errors import StorageError
from modelkeep.storage.presigned_client import PartSender

PART = 1 << 16


@pytest.fixture
def bucket() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback server that stores each PUT's body under its path (a 500 for paths with 'fail')."""
    got: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:
            return None

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 500 if "fail" in self.path else 200
            if status == 200:
                got[self.path] = body
            self.send_response(status)
            self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def _sender(url: str, log: list[Any], *, fail_part: int | None = None) -> PartSender:
    def start() -> dict[str, str]:
        log.append("start")
        return {"upload": "u1"}

    def sign(started: dict[str, str], number: int, size: int, sha256: str) -> dict[str, Any]:
        log.append((number, size, sha256))
        path = "fail" if number == fail_part else f"{started['upload']}/{number}"
        return {"url": f"{url}/{path}", "headers": {}}

    return PartSender(start, sign, lambda started: log.append(("drop", started)), PART, max_in_flight=2, retries=0)


def test_parts_are_cut_hashed_and_sent_whatever_the_writes(bucket: tuple[str, dict[str, bytes]]) -> None:
    url, got = bucket
    data = np.random.default_rng(0).bytes(5 * PART + 123)
    log: list[Any] = []
    sender = _sender(url, log)
    pos = 0
    for size, kind in [(100, bytearray), (3 * PART, bytes), (PART // 3, memoryview), (2 * PART, bytes)]:
        piece = data[pos : pos + size]
        sender.write(kind(piece))
        pos += size
    sender.write(data[pos:])
    assert sender.finish() == {"upload": "u1"}
    numbers = sorted(entry for entry in log if isinstance(entry, tuple))
    expected = [data[i : i + PART] for i in range(0, len(data), PART)]
    assert numbers == [(n, len(p), hashlib.sha256(p).hexdigest()) for n, p in enumerate(expected, 1)]
    assert [got[f"/u1/{n}"] for n in range(1, len(expected) + 1)] == expected
    assert log.count("start") == 1


def test_a_file_under_one_part_starts_nothing(bucket: tuple[str, dict[str, bytes]]) -> None:
    log: list[Any] = []
    sender = _sender(bucket[0], log)
    sender.write(b"x" * (PART - 1))
    assert sender.finish() is None and not sender.started and log == []


def test_a_small_file_holds_its_own_bytes_not_a_part_buffer(bucket: tuple[str, dict[str, bytes]]) -> None:
    """The tee of every save through a server: a file far under one part allocates about its
    own size (the first part's buffer grows as written), and is still sent whole once it fills
    a part."""
    import tracemalloc

    big = PartSender(lambda: None, lambda *_: {}, lambda _: None, 64 * PART)
    tracemalloc.start()
    try:
        for _ in range(4):
            big.write(bytearray(1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert big.finish() is None and not big.started
    assert peak < 64 * 1000, f"4 writes of 1000 bytes held {peak} bytes"
    url, got = bucket
    data = np.random.default_rng(1).bytes(2 * PART + 5)
    log: list[Any] = []
    sender = _sender(url, log)
    for start in range(0, len(data), 1000):  # small writes the caller reuses
        sender.write(bytearray(data[start : start + 1000]))
    assert sender.finish() == {"upload": "u1"}
    assert [got[f"/u1/{n}"] for n in (1, 2, 3)] == [data[:PART], data[PART : 2 * PART], data[2 * PART :]]


def test_a_failed_part_is_raised_by_finish_and_the_upload_is_dropped(bucket: tuple[str, dict[str, bytes]]) -> None:
    log: list[Any] = []
    sender = _sender(bucket[0], log, fail_part=2)
    for _ in range(6):  # writes go on (and are dropped) after the failure: a file write never fails for it
        sender.write(bytearray(PART))
    with pytest.raises(StorageError, match="upload part 2"):
        sender.finish()
    sender.abort()
    assert ("drop", {"upload": "u1"}) in log


def test_a_server_that_takes_no_parts_costs_one_part_buffer_and_signs_nothing() -> None:
    """``start()`` answers ``None`` (a folder store's server): the second part waits for that
    answer rather than filling more buffers, and nothing after is copied, hashed or signed, so
    the writes of a large file hold about one part (the bytes then go through the server)."""
    import time
    import tracemalloc

    log: list[Any] = []

    def start() -> None:
        time.sleep(0.2)  # slower than the writes: without the wait, every write would fill a part
        log.append("start")

    def sign(*args: Any) -> dict[str, Any]:
        log.append(args)
        raise AssertionError("a part was signed although the server takes none")

    sender = PartSender(start, sign, lambda started: log.append(("drop", started)), PART, max_in_flight=8)
    chunk = bytearray(PART // 2)
    tracemalloc.start()
    try:
        for _ in range(40):  # 20 parts' worth, in writes the caller reuses
            sender.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sender.finish() is None
    assert log == ["start"]
    assert peak < 3 * PART, f"the writes held {peak / PART:.1f} parts"
