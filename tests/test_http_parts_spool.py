"""A large save through a registry server whose store is S3 keeps its artifact off the client's
disk: the scratch file gets the bytes only until the server takes the upload in parts
(``_UntilTaken``); then every byte goes to the bucket from the part buffers and is hashed as written.
A server that declines (a folder store) still gets every byte from the scratch file."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from modelkeep.api import client_transfers
from modelkeep.api.client_transfers import STREAMED_PART, _UntilTaken
from modelkeep.errors import StorageError
from modelkeep.storage import presigned_client

from ._http_server import HttpServer, ServerSide, running_server

MiB = 1 << 20


class _Sender:
    """A stand-in for a PartSender: keeps what it is given; ``taken`` once ``take_at`` bytes came."""

    def __init__(self, take_at: int | None) -> None:
        self.got = bytearray()
        self.take_at = take_at

    def write(self, data: Any) -> None:
        self.got += memoryview(data).cast("B")

    @property
    def taken(self) -> bool:
        return self.take_at is not None and len(self.got) >= self.take_at


@pytest.mark.parametrize("take_at", [None, 30, 0])
def test_the_scratch_file_holds_every_byte_until_the_upload_is_taken_and_none_after(take_at: int | None) -> None:
    """Unanswered or declined: the file holds every byte, and is whole. Taken (after the second
    write, or before the first): the file is emptied and is not whole, and the sender got every byte."""
    raw = io.BytesIO()
    sender = _Sender(take_at)
    spool = _UntilTaken(sender)
    assert spool.around(raw) is spool  # type: ignore[comparison-overlap]
    writes = [b"a" * 10, bytearray(b"b" * 25), memoryview(b"c" * 40)]
    for data in writes:
        assert spool.write(data) == len(data)
    every = b"".join(bytes(d) for d in writes)
    assert bytes(sender.got) == every
    if take_at is None:
        assert spool.complete and raw.getvalue() == every
    else:
        assert not spool.complete and raw.getvalue() == b""


@pytest.fixture
def s3_server(tmp_path: Path, s3_bucket: Any) -> Iterator[HttpServer]:
    """A server on SQLite + a moto S3 bucket: it takes large saves in parts."""
    side = ServerSide(s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_bucket.storage_options)
    with running_server(side, tmp_path / "server") as server:
        yield server


def _watch_the_scratch_file(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The largest size the scratch file of a save in parts reached, its size after the last write,
    and the files (whether each stayed whole)."""
    seen: dict[str, Any] = {"peak": 0, "last": 0, "spools": []}
    write = _UntilTaken.write

    def watched(self: _UntilTaken, data: Any) -> int:
        n = write(self, data)
        assert self._raw is not None
        seen["last"] = os.fstat(self._raw.fileno()).st_size
        seen["peak"] = max(seen["peak"], seen["last"])
        if self not in seen["spools"]:
            seen["spools"].append(self)
        return n

    monkeypatch.setattr(_UntilTaken, "write", watched)
    return seen


def test_a_save_in_parts_writes_at_most_its_first_parts_to_the_scratch_file(
    s3_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 MiB saved in parts: the scratch file never holds more than what was written before the
    server took the upload (two parts at most: the second waits for the answer), it is emptied
    then, and the record's digests, measured from the bytes as written, are those a load checks
    before parsing."""
    seen = _watch_the_scratch_file(monkeypatch)
    model = {"w": np.random.default_rng(21).random(40 * MiB // 8)}
    with s3_server.client(cache_max_bytes=0) as c:
        rec = c.save_version(model, "big", compress=False)
        assert rec.artifact is not None and rec.artifact.size > 40 * MiB
        [spool] = seen["spools"]
        assert not spool.complete and seen["peak"] <= 2 * STREAMED_PART
        assert seen["last"] == 0
        assert np.array_equal(c.load("big")["w"], model["w"])
    with s3_server.direct() as d:
        assert d.verify().ok


def test_a_server_that_takes_no_parts_gets_the_whole_scratch_file(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder-store server declines the upload in parts: the scratch file keeps every byte (the
    upload through the server reads it), and the model round trips."""
    seen = _watch_the_scratch_file(monkeypatch)
    model = {"w": np.random.default_rng(22).random(20 * MiB // 8)}
    with http_server.client(cache_max_bytes=0) as c:
        rec = c.save_version(model, "big", compress=False)
        assert rec.artifact is not None
        [spool] = seen["spools"]
        assert spool.complete and seen["peak"] == rec.artifact.size
        assert np.array_equal(c.load("big")["w"], model["w"])


def test_a_part_that_fails_once_the_upload_is_taken_fails_the_save_and_commits_nothing(
    s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third part's PUT fails on every attempt after the server took the upload (the scratch
    file no longer holds the artifact): the save fails in one line, with nothing committed, no
    upload left open and the version free; no other path sends the incomplete file."""
    put = presigned_client._put_part

    def failing(client: Any, url: str, *args: Any) -> str:
        if parse_qs(urlsplit(url).query)["partNumber"] == ["3"]:
            raise StorageError("cannot upload part 3: the connection dropped")
        return put(client, url, *args)

    streamed: list[Any] = []
    upload = client_transfers.TransferMixin._upload_and_commit

    def watched_upload(self: Any, path: Path, *args: Any, **kwargs: Any) -> Any:
        streamed.append(path)
        return upload(self, path, *args, **kwargs)

    model = {"w": np.random.default_rng(23).random(40 * MiB // 8)}
    with s3_server.client(cache_max_bytes=0) as c:
        with monkeypatch.context() as m:
            seen = _watch_the_scratch_file(m)
            m.setattr(presigned_client, "_put_part", failing)
            m.setattr(client_transfers.TransferMixin, "_upload_and_commit", watched_upload)
            with pytest.raises(StorageError, match="part 3") as caught:
                c.save_version(model, "big", compress=False)
        assert "\n" not in str(caught.value)
        assert streamed == [] and not seen["spools"][0].complete
        assert "big" not in c.list_models()
        assert s3_bucket.pending_uploads() == []
        assert c.save_version(model, "big", compress=False).version == "1.0.0"
        assert np.array_equal(c.load("big")["w"], model["w"])


def test_a_sender_that_gives_no_plan_for_a_taken_upload_is_a_bug_not_a_user_error(
    s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the sender ever answer no plan once the server took the upload (the scratch file is
    not whole then), the save stops with a RuntimeError naming a bug, and drops the upload, rather
    than send the incomplete file another way."""
    finish = presigned_client.PartSender.finish
    monkeypatch.setattr(presigned_client.PartSender, "finish", lambda self: finish(self) and None)
    with s3_server.client(cache_max_bytes=0) as c:
        with pytest.raises(RuntimeError, match="modelkeep bug"):
            c.save_version({"w": np.random.default_rng(24).random(20 * MiB // 8)}, "big", compress=False)
        assert "big" not in c.list_models()
    assert s3_bucket.pending_uploads() == []
