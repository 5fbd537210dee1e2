"""Hooks into a client's presigned uploads, for tests that tamper with them or act mid-upload.

Both ways a client sends a large artifact to the bucket go through them: the whole-file plan of
``POST /uploads/presigned`` (:func:`~modelkeep.storage.presigned_client.upload_plan`, what an older
client does, and a file of one part) and the upload in parts of ``POST /uploads/parts``, sent as
the artifact is serialized (:class:`~modelkeep.storage.presigned_client.PartSender`). A test takes
the whole-file way with :func:`whole_file` (the client then behaves as against an older server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from modelkeep.storage import presigned_client


def whole_file(client: Any, whole: bool = True) -> None:
    """Make ``client`` send large artifacts by the whole-file plan (``whole``) or in parts."""
    client._parts_ok = not whole


def tamper_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part (or single ``PUT``) is sent with its middle byte flipped: bytes that do not
    match the SHA-256 its URL was signed with."""
    put = presigned_client._put_part

    def tampered(client: Any, url: str, headers: dict[str, str], body: memoryview, *args: Any) -> str:
        evil = bytearray(body)
        evil[len(evil) // 2] ^= 0xFF
        return put(client, url, headers, memoryview(evil), *args)

    monkeypatch.setattr(presigned_client, "_put_part", tampered)


def before_first_part(monkeypatch: pytest.MonkeyPatch, act: Callable[[str], None]) -> None:
    """Call ``act(url)`` once, before the first part (or single ``PUT``) of a save is sent."""
    put = presigned_client._put_part
    lock, done = threading.Lock(), []

    def watched(client: Any, url: str, *args: Any) -> str:
        with lock:
            if not done:
                done.append(url)
                act(url)
        return put(client, url, *args)

    monkeypatch.setattr(presigned_client, "_put_part", watched)


def send_other_bytes(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """An upload in parts declares and sends, for byte ``at`` of the artifact, another value than
    the one serialized (and hashed into the record): parts of another file than the record names."""
    write = presigned_client.PartSender.write

    def other(self: presigned_client.PartSender, data: Any) -> None:
        view = memoryview(data).cast("B")
        pos = getattr(self, "_test_written", 0)
        self._test_written = pos + view.nbytes  # type: ignore[attr-defined]
        if pos <= at < pos + view.nbytes:
            evil = bytearray(view)
            evil[at - pos] ^= 0xFF
            view = memoryview(evil)
        write(self, view)

    monkeypatch.setattr(presigned_client.PartSender, "write", other)
