"""Presigned S3 transfers (issue 28, storage layer): the server plans and checks, a client with
no credentials moves the bytes with httpx straight to and from the bucket (moto on loopback).

moto enforces neither the signed ``x-amz-checksum-sha256`` nor a URL's expiry, so tampering is
shown twice: against plain moto, where :func:`complete_upload` reading the staged object back
is what refuses it, and through a proxy that answers as S3 does (``BadDigest``, ``Request has
expired``), where the client must say what the refusal means.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.errors import ConfigError, IntegrityError, StorageError
from modelkeep.storage import S3Store, open_store, presigned
from modelkeep.storage.hashing import Expected, HashingWriter
from modelkeep.storage.presigned import (
    UploadPlan,
    abort_upload,
    b64_sha256,
    complete_upload,
    composite,
    enforces_checksums,
    measures_checksums,
    plan_upload,
    presign_get,
)
from modelkeep.storage.presigned_client import UrlSource, declare, download_ranges, upload_plan
from tests._http_server import HttpServer, ServerSide, running_server
from tests._presigned_hooks import send_other_bytes, tamper_parts, whole_file
from tests.s3_proxy import s3_rules
from tests.s3_server import FaultProxy, S3Bucket, s3_options

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.s3


def _store(bucket: S3Bucket, endpoint: str | None = None) -> S3Store:
    store = open_store(bucket.url(), s3_options(endpoint or bucket.endpoint_url))
    assert isinstance(store, S3Store)
    return store


def _data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def _file(tmp_path: Path, data: bytes, name: str = "artifact.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _stored(bucket: S3Bucket, key: str) -> bytes:
    body: bytes = bucket.client.get_object(Bucket=bucket.name, Key=f"models/{key}")["Body"].read()
    return body


def _plan(store: S3Store, path: Path, *, multipart: bool, expires: int = 600) -> UploadPlan:
    dec = declare(path, PART)
    if multipart:
        return plan_upload(
            store, dec.size, sha256=dec.sha256, part_sha256s=dec.part_sha256s, part_size=PART, expires=expires
        )
    return plan_upload(store, dec.size, sha256=dec.sha256, expires=expires)


# -- round trips ----------------------------------------------------------------------------


def test_single_put_round_trip(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """One presigned PUT with its SHA-256 in the signed headers, completed and read back by
    the server, then loaded by a client through the checked load path."""
    store = _store(s3_bucket)
    data = _data(3 * MiB + 7)
    path = _file(tmp_path, data)
    plan = _plan(store, path, multipart=False)
    assert plan.kind == "single" and plan.key.startswith(".tmp/") and len(plan.parts) == 1
    query = parse_qs(urlsplit(plan.parts[0].url).query)
    assert "x-amz-checksum-sha256" in query["X-Amz-SignedHeaders"][0].split(";")  # S3 checks the bytes
    assert plan.parts[0].headers == {"x-amz-checksum-sha256": b64_sha256(hashlib.sha256(data).hexdigest())}
    sent: list[int] = []
    etags = upload_plan(json.loads(json.dumps(plan.to_json())), path, progress=sent.append)
    assert len(etags) == 1 and etags[0] and sent == [len(data)]
    done = complete_upload(store, plan)
    assert (
        done.key != plan.key
        and done.key.startswith(".tmp/")
        and done.sha256 == hashlib.sha256(data).hexdigest()
        and done.size == len(data)
    )
    assert _stored(s3_bucket, done.key) == data
    # the PUT URL still works, but the checked bytes live under a key it does not name
    _put(plan.parts[0].url, data[::-1], plan.parts[0].headers)
    assert _stored(s3_bucket, done.key) == data

    url = presign_get(store, done.key, expires=600)
    source = UrlSource(url, len(data), part_size=MiB, max_concurrency=3)
    with source.open_artifact(Expected(done.sha256 or "", len(data))) as art:
        assert art.file.read() == data
    assert "X-Amz-Signature" not in source.display_path()


def test_multipart_round_trip_with_blake3_record(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Parts in parallel, each with its own signed checksum; the server's read-back (asked for:
    moto's composite checksum spares it by default) gives the per-part digests and the BLAKE3
    record a load checks, computed from the stored bytes."""
    store = _store(s3_bucket)
    data = _data(3 * PART + 12345, seed=1)
    path = _file(tmp_path, data)
    dec = declare(path, PART)
    plan = plan_upload(store, dec.size, sha256=dec.sha256, part_sha256s=dec.part_sha256s, part_size=PART)
    assert plan.kind == "multipart" and plan.upload_id and [p.number for p in plan.parts] == [1, 2, 3, 4]
    assert [(p.start, p.end) for p in plan.parts][-1] == (3 * PART, len(data))
    assert UploadPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    sent: list[int] = []
    with open(path, "rb") as reader:  # a reader works as well as a path
        etags = upload_plan(plan, reader, max_concurrency=3, progress=sent.append)
    assert len(set(etags)) == 4 and sum(sent) == len(data)
    ranges = [[100, 200, PART + 50], [2 * PART, 2 * PART + 8, 3 * PART]]
    done = complete_upload(store, plan, ranges=ranges, verify=True)
    assert done.part_sha256s == dec.part_sha256s and done.sha256 == dec.sha256
    # the record the save path (HashingWriter with the same payload ranges) would have written
    writer = HashingWriter(io.BytesIO())
    pos = 0
    for start, data_start, end in ranges:
        writer.write(data[pos:start])
        with writer.payload(end - data_start):
            writer.write(data[start:end])
        pos = end
    writer.write(data[pos:])
    writer.done_writing()
    assert done.blake3 == writer.blake3_record()
    assert s3_bucket.pending_uploads() == []
    assert _stored(s3_bucket, plan.key) == data

    url = presign_get(store, plan.key)
    chunks = list(download_ranges(url, len(data), part_size=3 * MiB, max_concurrency=4))
    assert b"".join(chunks) == data and max(len(c) for c in chunks) <= 3 * MiB
    expected = Expected.of(done.sha256 or "", len(data), {"blake3": done.blake3})
    assert expected.fast  # the BLAKE3 record is one a load accepts
    with UrlSource(url, len(data)).open_artifact(expected) as art:
        assert bytes(art.file.read(100)) == data[:100]


def test_a_saved_version_loads_through_a_url_as_through_the_store(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A version saved by the registry (joblib, uncompressed: payload ranges, BLAKE3 record) read by a
    client with only a URL: the same checked bytes, payload buffers and ranges as the store's
    own verified read; one flipped byte in the bucket is refused by both."""
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,
        cache_max_bytes=0,
    )
    p.ensure_registry()
    model = {"w": np.random.default_rng(14).standard_normal(300_000), "name": "m"}
    rec = p.save_version(model, "m", serialization_format="joblib", compress=False)
    art = rec.artifact
    assert art is not None
    expected = Expected.of(art.sha256, art.size, art.extra)
    assert expected.fast and expected.ranges  # the load checks BLAKE3 by payload ranges
    source = UrlSource(presign_get(p.store, art.key), art.size, part_size=MiB)
    with source.open_artifact(expected) as by_url, p.store.open_artifact(art.key, expected) as by_store:
        assert by_url.ranges == by_store.ranges and by_url.ranges
        assert by_url.file.read() == by_store.file.read()
        assert {k: bytes(v) for k, v in by_url.buffers.items()} == {k: bytes(v) for k, v in by_store.buffers.items()}
    stored = bytearray(_stored(s3_bucket, art.key))
    stored[-10] ^= 1
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"models/{art.key}", Body=bytes(stored))
    with pytest.raises(IntegrityError, match="differ from those saved"), source.open_artifact(expected):
        pass
    p.close()


def test_empty_file_round_trip(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    path = _file(tmp_path, b"")
    plan = _plan(store, path, multipart=False)
    upload_plan(plan, path)
    done = complete_upload(store, plan)
    assert done.sha256 == hashlib.sha256(b"").hexdigest()
    assert list(download_ranges(presign_get(store, done.key), 0)) == [b""]


# -- tampering, against plain moto: the server's read-back refuses it --------------------------


def _put(url: str, body: bytes, headers: dict[str, str]) -> None:
    httpx.put(url, content=body, headers=headers, timeout=60).raise_for_status()


@pytest.mark.parametrize("multipart", [False, True])
def test_wrong_bytes_for_their_declared_digest_are_refused(
    multipart: bool, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """A client sends other bytes of the same size with the declared checksum header (moto
    takes them): completing refuses, and nothing stays staged."""
    store = _store(s3_bucket)
    data = _data(2 * PART + 10, seed=2)
    plan = _plan(store, _file(tmp_path, data), multipart=multipart)
    evil = bytearray(data)
    evil[PART + 3] ^= 1
    for part in plan.parts:
        _put(part.url, bytes(evil[part.start : part.end]), part.headers)
    with pytest.raises(IntegrityError, match="refusing the upload") as info:
        complete_upload(store, plan)
    assert "hash to" in str(info.value) and "\n" not in str(info.value)
    assert s3_bucket.object_keys("models/.tmp/") == [] and s3_bucket.pending_uploads() == []


def test_swapped_parts_are_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    data = _data(2 * PART, seed=3)
    plan = _plan(store, _file(tmp_path, data), multipart=True)
    one, two = plan.parts
    _put(one.url, data[two.start : two.end], one.headers)
    _put(two.url, data[one.start : one.end], two.headers)
    with pytest.raises(IntegrityError, match=r"its bytes hash to .*, declared"):
        complete_upload(store, plan)
    assert s3_bucket.object_keys("models/") == []
    # without a whole-file SHA-256 declared, each part is read back and checked on its own
    dec = declare(_file(tmp_path, data, "parts.bin"), PART)
    parts_only = plan_upload(store, dec.size, part_sha256s=dec.part_sha256s, part_size=PART)
    one, two = parts_only.parts
    _put(one.url, data[two.start : two.end], one.headers)
    _put(two.url, data[one.start : one.end], two.headers)
    with pytest.raises(IntegrityError, match=r"part 1's bytes hash to"):
        complete_upload(store, parts_only)
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []


def test_missing_part_is_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    data = _data(3 * PART, seed=4)
    plan = _plan(store, _file(tmp_path, data), multipart=True)
    for part in (plan.parts[0], plan.parts[2]):
        _put(part.url, data[part.start : part.end], part.headers)
    with pytest.raises(IntegrityError, match=r"part\(s\) \[2\] of 3 were never uploaded"):
        complete_upload(store, plan)
    assert s3_bucket.pending_uploads() == []  # aborted: no billed parts left behind


def test_part_added_after_the_plan_is_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Someone able to upload parts (a leaked credential) adds part 3 to a two-part plan."""
    store = _store(s3_bucket)
    data = _data(2 * PART, seed=5)
    plan = _plan(store, _file(tmp_path, data), multipart=True)
    for part in plan.parts:
        _put(part.url, data[part.start : part.end], part.headers)
    s3_bucket.client.upload_part(
        Bucket=s3_bucket.name, Key=f"models/{plan.key}", UploadId=plan.upload_id, PartNumber=3, Body=b"payload"
    )
    with pytest.raises(IntegrityError, match=r"part\(s\) \[3\] were not in the plan"):
        complete_upload(store, plan)
    assert s3_bucket.pending_uploads() == [] and s3_bucket.object_keys("models/") == []


def test_a_listing_asked_for_before_the_completion_is_checked_as_one_asked_for_then(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """A claimed commit asks for the parts' listing as it begins (list_parts_soon): a part it
    shows missing still refuses the upload, and a part sent again with other bytes after it
    was taken makes S3 refuse the completion (the listed ETag is no longer the part's), so
    nothing appears under the key."""
    from modelkeep.storage.presigned import list_parts_soon

    store = _store(s3_bucket)
    data = _data(2 * PART + 10, seed=8)
    plan = _plan(store, _file(tmp_path, data), multipart=True)
    for part in plan.parts:
        _put(part.url, data[part.start : part.end], part.headers)
    listing = list_parts_soon(store, plan)
    done = complete_upload(store, plan, listing=listing)
    assert _stored(s3_bucket, done.key) == data
    store.delete(done.key)

    missing = _plan(store, _file(tmp_path, data, "missing.bin"), multipart=True)
    _put(missing.parts[0].url, data[:PART], missing.parts[0].headers)
    early = list_parts_soon(store, missing)
    for part in missing.parts[1:]:  # sent after the listing was asked for and answered
        early.result()
        _put(part.url, data[part.start : part.end], part.headers)
    with pytest.raises(IntegrityError, match=r"part\(s\) \[2, 3\] of 3 were never uploaded"):
        complete_upload(store, missing, listing=early)

    resent = _plan(store, _file(tmp_path, data, "resent.bin"), multipart=True)
    for part in resent.parts:
        _put(part.url, data[part.start : part.end], part.headers)
    early = list_parts_soon(store, resent)
    early.result()
    other = bytearray(data[:PART])
    other[0] ^= 0xFF
    _put(resent.parts[0].url, bytes(other), resent.parts[0].headers)  # moto takes it (S3 would refuse)
    with pytest.raises(StorageError, match="cannot complete the upload"):
        complete_upload(store, resent, listing=early)
    abort_upload(store, resent)
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []


def test_resized_part_and_nothing_uploaded_are_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    data = _data(2 * PART + 100, seed=6)
    plan = _plan(store, _file(tmp_path, data), multipart=True)
    for part in plan.parts:
        body = data[part.start : part.end]
        _put(part.url, body + b"!" if part.number == 3 else body, part.headers)
    with pytest.raises(IntegrityError, match="part 3 has 101 bytes, declared 100"):
        complete_upload(store, plan)
    single = _plan(store, _file(tmp_path, data[:1000], "small.bin"), multipart=False)
    with pytest.raises(IntegrityError, match="nothing was uploaded"):
        complete_upload(store, single)
    grown = _plan(store, _file(tmp_path, data[:1000], "small.bin"), multipart=False)
    _put(grown.parts[0].url, data[:1001], grown.parts[0].headers)
    with pytest.raises(IntegrityError, match="1001 bytes, declared 1000"):
        complete_upload(store, grown)
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []


# -- what S3 itself refuses (moto does not): a proxy that answers as S3 does -------------------


@pytest.fixture
def strict_s3(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    fault_proxy.refuse = s3_rules
    yield fault_proxy


@pytest.mark.parametrize("multipart", [False, True])
def test_s3_refusal_of_tampered_bytes_is_a_clear_error(
    multipart: bool, s3_bucket: S3Bucket, strict_s3: FaultProxy, tmp_path: Path
) -> None:
    """The plan signs each declared checksum, so S3 refuses other bytes at the PUT; the client
    says so in one line without the URL's signature, and does not retry a refusal."""
    store = _store(s3_bucket, strict_s3.endpoint_url)
    data = _data(2 * PART + 1, seed=7)
    path = _file(tmp_path, data)
    plan = _plan(store, path, multipart=multipart)
    evil = bytearray(data)
    evil[-1] ^= 0xFF
    path.write_bytes(evil)
    with pytest.raises(StorageError, match="did not match their declared SHA-256") as info:
        upload_plan(plan, path, max_concurrency=2)
    message = str(info.value)
    assert "BadDigest" in message and "X-Amz-Signature" not in message and "\n" not in message
    assert [status for _, _, status in strict_s3.injected] == [400]  # refused once, not retried
    abort_upload(store, plan)
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []
    # the same check refuses a client that leaves the signed header out
    clean = _plan(store, _file(tmp_path, data, "clean.bin"), multipart=multipart)
    refused = httpx.put(clean.parts[0].url, content=data[: clean.parts[0].end])
    assert refused.status_code == 403
    abort_upload(store, clean)


def test_read_back_only_where_the_store_does_not_enforce_checksums(
    s3_bucket: S3Bucket, strict_s3: FaultProxy, tmp_path: Path
) -> None:
    """The probe finds that moto takes mismatched bytes and that S3 (as the proxy answers)
    refuses them; only for the former does completing read the staged object back."""
    assert enforces_checksums(_store(s3_bucket)) is False
    store = _store(s3_bucket, strict_s3.endpoint_url)
    assert enforces_checksums(store) is True
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []
    data = _data(2 * PART + 1, seed=13)
    path = _file(tmp_path, data)
    plan = _plan(store, path, multipart=True)
    upload_plan(plan, path)
    strict_s3.requests.clear()
    done = complete_upload(store, plan)
    reads = [r for r in strict_s3.requests if r[0] == "GET" and "uploadId=" not in r[1]]  # not ListParts
    assert not reads  # no byte came through the server
    assert done.key == plan.key and done.sha256 is None and done.part_sha256s == declare(path, PART).part_sha256s
    assert _stored(s3_bucket, done.key) == data
    single = _plan(store, path, multipart=False)
    upload_plan(single, path)
    checked = complete_upload(store, single, verify=True)  # asked for: read back
    assert checked.sha256 == hashlib.sha256(data).hexdigest()


def _uploaded(store: S3Store, path: Path) -> UploadPlan:
    """A multipart plan for ``path``, its parts uploaded (not completed)."""
    plan = _plan(store, path, multipart=True)
    upload_plan(plan, path)
    return plan


def _object_reads(proxy: FaultProxy) -> list[str]:
    """Paths of GETs of objects through ``proxy`` (not ListParts, not listings): bytes read back."""
    return [p for method, p in proxy.requests if method == "GET" and "uploadId=" not in p and "list-type=" not in p]


def test_where_the_store_measures_the_parts_their_composite_checksum_spares_the_read_back(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto takes a part whose bytes do not match its signed checksum, but the composite SHA-256
    it reports for a completed upload is of the bytes it holds (the probe sends a part with the
    wrong checksum to find so). A composite equal to the declared parts' says every stored part
    is the one declared: nothing is read back. Another composite is read back, which says what
    differs and refuses it. A store that reports the composite of the checksums it was told, not
    of its bytes, fails the probe, and its uploads are read back."""
    store = _store(s3_bucket, fault_proxy.endpoint_url)
    assert enforces_checksums(store) is False and measures_checksums(store) is True
    assert s3_bucket.object_keys("models/") == [] and s3_bucket.pending_uploads() == []  # the probes cleaned up
    path = _file(tmp_path, data := _data(2 * PART + 1, seed=31))
    plan = _uploaded(store, path)
    fault_proxy.requests.clear()
    done = complete_upload(store, plan)
    assert _object_reads(fault_proxy) == []  # no byte came through the server
    assert done.sha256 is None and done.part_sha256s == [p.sha256 for p in plan.parts]
    assert _stored(s3_bucket, done.key) == data

    evil = bytearray(data)
    evil[PART + 5] ^= 1  # the second part's bytes are not those declared
    bad = _plan(store, path, multipart=True)
    for part in bad.parts:
        _put(part.url, bytes(evil[part.start : part.end]), part.headers)
    fault_proxy.requests.clear()
    with pytest.raises(IntegrityError, match=r"refusing the upload .*hash to"):
        complete_upload(store, bad)
    assert _object_reads(fault_proxy)  # the composite differed: read back, to say what
    assert s3_bucket.pending_uploads() == [] and not s3_bucket.object_keys(f"models/{bad.key}")

    echoing = _store(s3_bucket, fault_proxy.endpoint_url)
    told = composite([hashlib.sha256(b"declared").hexdigest()])  # what the probe's part declared
    monkeypatch.setattr(presigned, "stored_composite", lambda *_args: told)
    assert measures_checksums(echoing) is False
    monkeypatch.undo()
    again = _uploaded(echoing, path)
    fault_proxy.requests.clear()
    assert complete_upload(echoing, again).sha256 == hashlib.sha256(data).hexdigest()  # read back
    assert _object_reads(fault_proxy)


# -- through ``modelkeep server``, against a store that enforces the signed checksums ------------


@pytest.fixture
def strict_server(s3_bucket: S3Bucket, strict_s3: FaultProxy, tmp_path: Path) -> Iterator[HttpServer]:
    """A server whose S3 store (behind the proxy) refuses bodies that do not match their signed
    checksums, as S3 does: it finds so with its probe, and reads nothing back at the commit."""
    side = ServerSide(
        s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_options(strict_s3.endpoint_url)
    )
    with running_server(side, tmp_path / "server", in_process=True) as server:
        yield server


def _staged_reads(proxy: FaultProxy) -> list[str]:
    """Paths of GETs of objects (not ListParts) under ``.tmp/``: the server reading an upload back."""
    return [path for method, path in proxy.requests if method == "GET" and "/.tmp/" in path and "uploadId=" not in path]


@pytest.mark.parametrize(
    ("mib", "whole"),
    [(10, True), (40, False), (40, True)],  # one PUT; parts, sent as serialized or by a whole-file plan
)
def test_through_the_server_s3_refuses_other_bytes_than_declared_and_nothing_is_committed(
    mib: int,
    whole: bool,
    strict_server: HttpServer,
    strict_s3: FaultProxy,
    s3_bucket: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that declares its file's digests (or each part's, as it sends them) and PUTs other
    bytes by the presigned URLs: the enforcing store refuses them (so the server, which reads nothing
    back there, never sees them), the save fails in one line, nothing is committed or left staged,
    the version's claim is released; honest bytes then save and load, with no byte read back."""
    big = {"w": np.random.default_rng(mib).random(mib * MiB // 8)}
    with strict_server.client(cache_max_bytes=0) as c:
        whole_file(c, whole)
        with monkeypatch.context() as m:
            tamper_parts(m)
            with pytest.raises(StorageError, match="did not match their declared SHA-256") as info:
                c.save_version(big, "big", compress=False)
        assert "\n" not in str(info.value) and "X-Amz-Signature" not in str(info.value)
        assert "big" not in c.list_models()
        assert {status for _, _, status in strict_s3.injected} == {400}  # BadDigest, from the store
        assert s3_bucket.pending_uploads() == []
        assert not [k for k in s3_bucket.object_keys("models/") if "/.tmp/" in f"/{k}" or "big" in k]
        strict_s3.requests.clear()
        rec = c.save_version(big, "big", compress=False)
        assert rec.version == "1.0.0"  # the failed save's claim was released
        assert _staged_reads(strict_s3) == []  # S3 checked the bytes; the server read none back
        assert np.array_equal(c.load("big")["w"], big["w"])
    with strict_server.direct() as d:
        assert d.get_version("big").artifact.sha256 == rec.artifact.sha256  # type: ignore[union-attr]
        assert d.verify().ok


def _declare_other_bytes(monkeypatch: pytest.MonkeyPatch, whole: bool) -> None:
    """A writer that declares (and sends) the parts of another file than the one its record names:
    by the whole-file plan, or as it serializes (byte 20 MiB flipped, in the second part)."""
    if not whole:
        send_other_bytes(monkeypatch, 20 * MiB)
        return
    from modelkeep.storage import presigned_client

    honest_declare, honest_upload = presigned_client.declare, presigned_client.upload_plan

    def declare_other(source: Any, part_size: int, *, sha256: str | None = None) -> Any:
        data = bytearray(Path(source).read_bytes())
        data[len(data) // 2] ^= 0xFF
        Path(source).with_suffix(".evil").write_bytes(bytes(data))
        return honest_declare(Path(source).with_suffix(".evil"), part_size, sha256=sha256)  # the record's SHA-256

    def upload_other(plan: Any, source: Any, **kwargs: Any) -> Any:
        return honest_upload(plan, Path(source).with_suffix(".evil"), **kwargs)

    monkeypatch.setattr(presigned_client, "declare", declare_other)
    monkeypatch.setattr(presigned_client, "upload_plan", upload_other)


@pytest.mark.parametrize("whole", [False, True])
def test_parts_declared_for_other_bytes_than_the_record_commit_nothing_a_load_takes(
    whole: bool, strict_server: HttpServer, strict_s3: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where S3 checks each part, the server reads nothing back, so the whole file's digests
    in the record are the writer's word: a writer that declares the parts of other bytes than
    those its record names gets them stored (S3 checked only the parts), and no load, through
    the server or direct, ever returns them; ``verify`` reports the version."""
    _declare_other_bytes(monkeypatch, whole)
    big = {"w": np.random.default_rng(9).random(40 * MiB // 8)}
    with strict_server.client(cache_max_bytes=0) as c:
        whole_file(c, whole)
        c.save_version(big, "big", compress=False)
        assert [status for *_, status in strict_s3.injected] == [400, 400]  # only the server's probe of the store
        assert _staged_reads(strict_s3) == []  # S3 took the parts (they match their checksums), nothing read back
        with pytest.raises(IntegrityError):
            c.load("big")
    with strict_server.direct() as d:
        with pytest.raises(IntegrityError):
            d.load("big")
        assert not d.verify().ok


@pytest.fixture
def lenient_server(s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path) -> Iterator[HttpServer]:
    """A server on plain moto (behind a proxy that only counts requests): its store takes parts
    whose bytes do not match their signed checksums, and reports composite checksums of what it holds."""
    side = ServerSide(
        s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_options(fault_proxy.endpoint_url)
    )
    with running_server(side, tmp_path / "server", in_process=True) as server:
        yield server


@pytest.mark.parametrize("whole", [False, True])
def test_on_a_lenient_store_the_parts_are_checked_by_their_composite_and_the_record_is_the_writers_word(
    whole: bool, lenient_server: HttpServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the server need not read a large upload back on a store that does not enforce the signed
    checksums but measures them (moto): what it must not commit is parts other than those planned
    (missing, added, resized, or, by the store's composite SHA-256 of what it holds, other bytes
    than declared: refused at the commit, test_a_presigned_upload_of_other_bytes_is_refused_at_the_commit).
    The whole file's SHA-256 and BLAKE3 record are the writer's signed word, as on S3 (which checks
    only the parts): no hash of the parts binds them, so only reading every byte could, and every
    load reads and checks them anyway. A writer that declares the parts of other bytes than its
    record names gets them committed with no byte read back, and no load returns them;
    ``verify`` reports the version. An honest save reads nothing back either."""
    big = {"w": np.random.default_rng(10).random(40 * MiB // 8)}
    with lenient_server.client(cache_max_bytes=0) as c:
        whole_file(c, whole)
        fault_proxy.requests.clear()
        c.save_version(big, "honest", compress=False)
        assert _object_reads(fault_proxy) == []  # the parts' composite matched: nothing read back
        assert np.array_equal(c.load("honest")["w"], big["w"])
        _declare_other_bytes(monkeypatch, whole)
        fault_proxy.requests.clear()
        c.save_version(big, "big", compress=False)
        assert _object_reads(fault_proxy) == []  # the parts are those declared: nothing read back
        with pytest.raises(IntegrityError):
            c.load("big")
    with lenient_server.direct() as d:
        with pytest.raises(IntegrityError):
            d.load("big")
        assert [(problem.kind, problem.model_name) for problem in d.verify().problems] == [("corrupt", "big")]


@pytest.mark.parametrize("multipart", [False, True])
def test_a_raw_client_that_commits_after_s3_refused_its_bytes_is_refused(
    multipart: bool, strict_server: HttpServer, strict_s3: FaultProxy, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """An attacker with raw HTTP: it asks for a plan declaring one file's digests, PUTs other
    bytes with the signed header (S3 says BadDigest) and without it (S3 says the signature does
    not match), then commits anyway. The server finds the parts missing, aborts, commits nothing."""
    data = _data(2 * PART + 1, seed=21)
    dec = declare(_file(tmp_path, data), PART)
    parts = dec.part_sha256s if multipart else [dec.sha256]
    evil = bytearray(data)
    evil[PART + 7] ^= 0xFF  # in the second part
    with strict_server.client() as c:
        answer = c.request(
            "POST",
            "/uploads/presigned",
            json={
                "model": "m",
                "extension": ".joblib",
                "size": dec.size,
                "sha256": dec.sha256,
                "part_size": PART if multipart else dec.size,
                "part_sha256s": parts,
            },
        )
        plan = UploadPlan.from_json(answer["presigned"])
        assert plan.kind == ("multipart" if multipart else "single")
        for part in plan.parts:
            body = bytes(evil[part.start : part.end])
            assert httpx.put(part.url, content=body, headers=part.headers).status_code in (200, 400)
            assert httpx.put(part.url, content=body).status_code == 403  # the signed header left out
        refused = [status for _, _, status in strict_s3.injected]
        assert refused.count(400) == 1 and refused.count(403) == len(plan.parts)  # BadDigest once: one part differs
        missing = r"part\(s\) \[2\] of 3 were never uploaded" if multipart else "nothing was uploaded"
        with pytest.raises(IntegrityError, match=missing):
            c.request("POST", "/models/m/commit", json={"upload": answer["upload"], "record": {}})
        assert "m" not in c.list_models()
    assert s3_bucket.pending_uploads() == []
    assert not [k for k in s3_bucket.object_keys("models/") if "/.tmp/" in f"/{k}" or k.startswith("models/m/")]


def test_expired_urls_are_refused(s3_bucket: S3Bucket, strict_s3: FaultProxy, tmp_path: Path) -> None:
    store = _store(s3_bucket, strict_s3.endpoint_url)
    data = _data(1000)
    path = _file(tmp_path, data)
    plan = _plan(store, path, multipart=False, expires=1)
    time.sleep(2.2)
    with pytest.raises(StorageError, match="presigned URL expired"):
        upload_plan(plan, path)
    fresh = _plan(store, path, multipart=False)
    upload_plan(fresh, path)
    done = complete_upload(store, fresh)
    url = presign_get(store, done.key, expires=1)
    time.sleep(2.2)
    with pytest.raises(StorageError, match="presigned URL expired"):
        list(download_ranges(url, len(data)))
    with pytest.raises(ConfigError, match="expires must be 1 to 604800"):
        presign_get(store, done.key, expires=0)


# -- downloads refuse an object of another size -----------------------------------------------


@pytest.mark.parametrize("change", [-1, +1, -3 * MiB, +3 * MiB])
def test_download_refuses_truncated_or_grown_object(change: int, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    size = 4 * MiB + 3
    data = _data(size, seed=8)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/m/1/m.bin", Body=data)
    url = presign_get(store, "m/1/m.bin")
    assert b"".join(download_ranges(url, size, part_size=MiB)) == data
    changed = data[: size + change] if change < 0 else data + _data(change, seed=9)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/m/1/m.bin", Body=changed)
    with pytest.raises(IntegrityError, match="shorter" if change < 0 else "longer"):
        b"".join(download_ranges(url, size, part_size=MiB, max_concurrency=2))
    with pytest.raises(IntegrityError), UrlSource(url, size).open_artifact(hashlib.sha256(data).hexdigest()):
        pass


def test_download_refuses_same_size_other_bytes_through_urlsource(s3_bucket: S3Bucket) -> None:
    store = _store(s3_bucket)
    data = _data(2 * MiB, seed=10)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/m/1/m.bin", Body=data[::-1])
    source = UrlSource(presign_get(store, "m/1/m.bin"), len(data), part_size=MiB)
    with (
        pytest.raises(IntegrityError, match="differ from those saved"),
        source.open_artifact(hashlib.sha256(data).hexdigest()),
    ):
        pass


def test_cut_body_is_retried_then_a_storage_error(s3_bucket: S3Bucket, fault_proxy: FaultProxy) -> None:
    """A GET whose body stops short of its Content-Length is retried; if it keeps happening
    the download fails with one StorageError (never returns short bytes)."""
    store = _store(s3_bucket, fault_proxy.endpoint_url)
    data = _data(3 * MiB, seed=11)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/m/1/m.bin", Body=data)
    url = presign_get(store, "m/1/m.bin")
    cuts = iter([100])  # the first GET is cut, its retry is whole
    fault_proxy.truncate = lambda m, p: next(cuts, None) if m == "GET" else None
    assert b"".join(download_ranges(url, len(data), part_size=MiB, max_concurrency=1)) == data
    assert [s for *_, s in fault_proxy.injected] == [-100]
    fault_proxy.truncate = lambda m, p: 100 if m == "GET" else None
    with pytest.raises(StorageError, match="after 2 attempts"):
        list(download_ranges(url, len(data), part_size=MiB, retries=1))


# -- housekeeping ---------------------------------------------------------------------------------


def test_abandoned_presigned_multipart_upload_is_aborted_by_gc(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A client that never finishes leaves a billed, invisible multipart upload under .tmp/:
    gc keeps it while young (its age comes from the staged key's name) and aborts it after."""
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,
    )
    p.ensure_registry()
    assert isinstance(p.store, S3Store)
    data = _data(2 * PART, seed=12)
    plan = _plan(p.store, _file(tmp_path, data), multipart=True)
    first = plan.parts[0]
    _put(first.url, data[first.start : first.end], first.headers)
    assert s3_bucket.pending_uploads() == [f"models/{plan.key}"]
    young = p.gc()
    assert [i for i in young.kept if plan.upload_id and plan.upload_id in i.key]
    report = p.gc(min_age_seconds=0)
    aborted = [i for i in report.removed if plan.upload_id and plan.upload_id in i.key]
    assert len(aborted) == 1 and aborted[0].size == PART and report.ok
    assert s3_bucket.pending_uploads() == []
    abort_upload(p.store, plan)  # already gone: not an error
    p.close()


@pytest.mark.parametrize("n", [0, 1, PART - 1, PART, 3 * PART, 3 * PART + 7])
def test_declare_hashes_every_part_and_takes_a_known_whole_digest(n: int, tmp_path: Path) -> None:
    """The parts are hashed on helper threads, in order; a SHA-256 the caller already has (a
    save's) is taken as the whole file's instead of hashing every byte a second time."""
    data = _data(n, seed=n % 97)
    path = _file(tmp_path, data)
    cuts = range(0, max(n, 1), PART)
    want = [hashlib.sha256(data[start : start + PART]).hexdigest() for start in cuts]
    dec = declare(path, PART)
    assert (dec.size, dec.sha256, dec.part_sha256s) == (n, hashlib.sha256(data).hexdigest(), want)
    with open(path, "rb") as f:
        known = declare(f, PART, sha256=dec.sha256)
    assert known == dec


def test_bad_input_is_refused_clearly(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    store = _store(s3_bucket)
    digest = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(ConfigError, match="need an S3 store"):
        plan_upload(open_store(tmp_path), 1, sha256=digest)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs the file's sha256"):
        plan_upload(store, 10)
    with pytest.raises(ConfigError, match="make 2 parts, but 1 part_sha256s"):
        plan_upload(store, PART + 1, part_sha256s=[digest], part_size=PART)
    with pytest.raises(ConfigError, match="part_size must be"):
        plan_upload(store, 10, part_sha256s=[digest], part_size=1024)
    with pytest.raises(ConfigError, match="not a hex SHA-256"):
        plan_upload(store, 10, sha256="../../etc")
    with pytest.raises(ConfigError, match=r"staged under \.tmp/"):
        plan_upload(store, 1, sha256=digest, staging_key="m/1/m.bin")
    with pytest.raises(ConfigError, match="not an upload plan"):
        UploadPlan.from_json({"kind": "single"})
    plan = plan_upload(store, 1, sha256=digest)
    with pytest.raises(ConfigError, match="has 2 bytes, the plan 1"):
        upload_plan(plan, _file(tmp_path, b"xy"))
    assert s3_bucket.pending_uploads() == []


# -- memory ---------------------------------------------------------------------------------------

UPLOADER = """
import json, sys, resource
from modelkeep.storage.presigned import UploadPlan
from modelkeep.storage.presigned_client import upload_plan
import httpx

spec = json.loads(sys.argv[1])
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
with httpx.Client() as warm:  # load httpx's lazily imported parts before the baseline
    pass
before = rss("VmRSS:")
upload_plan(UploadPlan.from_json(spec["plan"]), spec["path"], max_concurrency=spec["concurrency"])
print(json.dumps({"before": before, "peak": rss("VmHWM:")}))
"""


def test_upload_memory_is_bounded_by_parts_in_flight(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """A 64 MiB upload in 5 MiB parts, 2 in flight, in a process of its own: its peak RSS grows
    by a few parts, not by the file."""
    store = _store(s3_bucket)
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for seed in range(16):
            f.write(_data(4 * MiB, seed=seed))
    plan = _plan(store, path, multipart=True)
    assert len(plan.parts) == 13
    spec = {"plan": plan.to_json(), "path": str(path), "concurrency": 2}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", UPLOADER, json.dumps(spec)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout)
    grown = rss["peak"] - rss["before"]
    print(f"peak RSS grew by {grown / MiB:.1f} MiB for a 64 MiB upload (2 x 5 MiB parts in flight)")
    assert grown < (2 + 1) * PART + 16 * MiB  # parts in flight + the one being read + slack
    done = complete_upload(store, plan, verify=True)  # read back: the stored bytes are the file's
    assert done.size == 64 * MiB and done.sha256 == declare(path, PART).sha256
