"""The server's upload cap (``modelkeep server --max-upload-size`` / ``server.max_upload_bytes``),
driven as an attacker would: bodies over the cap with an honest ``Content-Length``, with one that
lies, and chunked with none. Each is refused with HTTP 413 and leaves no staged file behind; the
client refuses to send what the server would refuse, naming the limit and how to raise it.

The server is a real ``modelkeep server`` process (its ``TMPDIR`` a folder of the test's).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.api.transfers import EXPECTED_HEADER
from modelkeep.config import Settings
from modelkeep.errors import UploadTooLargeError
from modelkeep.layout import TMP_DIR

from ._http_server import HttpServer, ServerSide, running_server

CAP = 64 << 10


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[HttpServer]:
    (tmp_path / "server-tmp").mkdir()
    with running_server(
        ServerSide(str(tmp_path / "models")),
        tmp_path / "server",
        args=("--max-upload-size", "64KiB"),
        env={"TMPDIR": str(tmp_path / "server-tmp")},
    ) as srv:
        yield srv


def leftovers(server: HttpServer, tmp_path: Path) -> list[str]:
    """Staged files in the store's ``.tmp/`` and the server's temporary folder."""
    staged = Path(server.side.models_dir) / TMP_DIR
    found = [p.name for p in staged.rglob("*") if p.is_file()] if staged.exists() else []
    return found + [p.name for p in (tmp_path / "server-tmp").rglob("*") if p.is_file()]


def auth(server: HttpServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["class"] == "UploadTooLargeError"
    assert "64.0 KiB" in error["message"] and "--max-upload-size" in error["message"]
    assert "server.max_upload_bytes" in error["message"]


def raw_request(server: HttpServer, head: str, body: bytes) -> bytes:
    """Send ``head`` and ``body`` on a bare socket (no client library to keep the headers honest);
    the server's answer, as far as it wrote one."""
    where = urlsplit(server.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as s:
        with contextlib.suppress(OSError):  # the server answered and closed before taking it all
            s.sendall(head.encode() + body)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def test_bodies_over_the_cap_are_refused_with_413_and_nothing_staged(capped: HttpServer, tmp_path: Path) -> None:
    big = b"x" * (1 << 20)
    expected = json.dumps({"size": len(big), "sha256": "0" * 64})
    honest = httpx.post(
        f"{capped.url}/api/v1/uploads",
        params={"model": "m", "extension": ".joblib"},
        content=big,
        headers={**auth(capped), EXPECTED_HEADER: expected},
        timeout=60,
    )
    assert_413(honest)
    blob = httpx.put(f"{capped.url}/api/v1/blobs/{'a' * 64}", content=big, headers=auth(capped), timeout=60)
    assert_413(blob)

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length for the server to refuse up front
        for _ in range(16):
            yield b"y" * (64 << 10)

    chunked = httpx.post(
        f"{capped.url}/api/v1/bundles", params={"models": "m"}, content=chunks(), headers=auth(capped), timeout=60
    )
    assert "content-length" not in chunked.request.headers
    assert_413(chunked)
    assert leftovers(capped, tmp_path) == []
    with capped.direct() as d:
        assert d.list_models() == []


def test_a_lying_content_length_gets_no_more_than_it_declared_stored(capped: HttpServer, tmp_path: Path) -> None:
    """Declared over the cap, sent small: refused at once. Declared small, sent 200 KiB: the server
    reads what was declared (not a bundle: refused), and the rest is never a body of this request."""
    host = urlsplit(capped.url).netloc
    head = (
        f"POST /api/v1/bundles?models=m HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {capped.token}\r\n"
        "Content-Type: application/x-tar\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    over = raw_request(capped, head.replace("{length}", str(10 << 30)), b"tiny")
    assert over.startswith(b"HTTP/1.1 413") and b"UploadTooLargeError" in over
    under = raw_request(capped, head.replace("{length}", "1000"), b"z" * (200 << 10))
    assert under.startswith(b"HTTP/1.1 422") and b"BundleError" in under
    assert leftovers(capped, tmp_path) == []
    with capped.direct() as d:
        assert d.list_models() == []


def test_the_client_names_the_limit_before_sending(capped: HttpServer, tmp_path: Path) -> None:
    big = {"w": np.random.default_rng(0).random(40_000)}  # ~320 KB, over the cap
    with ModelPersistence(tmp_path / "local") as local:
        local.save({"w": 1}, "small", "1.0.0")
        local.save(big, "big", "1.0.0", compress=False)
        small_bundle = local.export_bundle("small", tmp_path / "small.mkb")
        big_bundle = local.export_bundle("big", tmp_path / "big.mkb")
    with capped.client() as c:
        assert c.server_info()["max_upload_bytes"] == CAP
        with pytest.raises(UploadTooLargeError, match=r"64.0 KiB.*--max-upload-size"):
            c.import_bundle(big_bundle)
        with pytest.raises(UploadTooLargeError, match=r"64.0 KiB.*--max-upload-size"):
            c.save(big, "big", compress=False)
        assert c.import_bundle(small_bundle).imported == [("small", "1.0.0")]  # under the cap: fine
        c.save({"w": 2}, "small")
        assert c.list_versions("small") == ["1.0.0", "1.0.1"]
    assert leftovers(capped, tmp_path) == []


@pytest.mark.parametrize(("text", "expected"), [("10GiB", 10 << 30), (1024, 1024), ("none", None), (None, None)])
def test_the_config_key_takes_sizes(text: Any, expected: int | None) -> None:
    assert Settings.model_validate({"server": {"max_upload_bytes": text}}).server.max_upload_bytes == expected


def test_a_bad_config_value_names_the_key(tmp_path: Path) -> None:
    from modelkeep.config import load_settings
    from modelkeep.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("server:\n  max_upload_bytes: lots\n")
    with pytest.raises(ConfigError, match=r"server\.max_upload_bytes"):
        load_settings(config)
