"""A large save through a registry server on PostgreSQL + S3: the version is claimed when the
presigned multipart upload is planned, the parts go straight to the version's final key, and the
commit completes the upload there (no staged object, no server-side copy).

The server runs in this process (``in_process=True``) so that the store it uses can be watched;
the test that kills the server is in test_http_faults.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from modelkeep.errors import (
    AuthenticationError,
    IntegrityError,
    MetadataError,
    PermissionDeniedError,
    SaveInProgressError,
    SerializationError,
    UploadTooLargeError,
)
from modelkeep.index import claims
from modelkeep.index.claims import list_claims
from modelkeep.layout import TMP_DIR
from modelkeep.storage import S3Store, presigned, presigned_client
from modelkeep.storage.s3 import MIN_PART_SIZE

from ._http_server import HttpServer, ServerSide, running_server
from ._presigned_hooks import before_first_part, whole_file

MiB = 1 << 20
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_s3_server(tmp_path: Path, s3_bucket: Any) -> Iterator[HttpServer]:
    """An in-process server on PostgreSQL (a private schema) + a moto S3 bucket."""
    from tests.conftest import PG_URL, postgres_schema

    if PG_URL is None:
        pytest.fail("set MODELKEEP_TEST_POSTGRES_URL: this test needs PostgreSQL")
    with postgres_schema() as schema:
        side = ServerSide(s3_bucket.url(), PG_URL, schema, s3_bucket.storage_options)
        with running_server(side, tmp_path / "server", in_process=True) as server:
            yield server


def _big(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).random(20 * MiB // 8)}  # over one part either way: multipart


@pytest.mark.parametrize("whole", [False, True])  # sent in parts as serialized; by a whole-file plan
def test_a_large_save_claims_its_version_at_the_plan_and_uploads_to_its_final_key(
    whole: bool, pg_s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the client uploads, its version is claimed (a second client asking for it gets the
    usual conflict; an automatic version skips it) and the parts go to the version's final key;
    the commit completes them there: nothing is staged under .tmp/, nothing is copied."""
    moved: list[tuple[str, str]] = []
    move = S3Store.move
    monkeypatch.setattr(S3Store, "move", lambda self, a, b: moved.append((a, b)) or move(self, a, b))
    seen: dict[str, Any] = {}
    model = _big(1)

    with pg_s3_server.client(cache_max_bytes=0) as c, pg_s3_server.client(cache_max_bytes=0) as other:
        whole_file(c, whole)

        def watched(url: str) -> None:
            seen["url"] = url
            assert pg_s3_server.served is not None
            seen["claims"] = [(i.model_name, i.version) for i in list_claims(pg_s3_server.served.index)]
            with pytest.raises(SaveInProgressError, match="in progress"):
                other.save_version({"w": np.zeros(3)}, "big", version="1.0.0")
            seen["auto"] = other.save_version({"w": np.zeros(3)}, "big").version

        with monkeypatch.context() as m:
            before_first_part(m, watched)
            rec = c.save_version(model, "big", version="1.0.0", compress=False)
        assert np.array_equal(c.load("big", "1.0.0")["w"], model["w"])
        assert c.keyring.check(c.get_version("big", "1.0.0")).trusted

    assert rec.artifact.key == "big/1.0.0/big_v1.0.0.joblib"
    assert presigned_client.where(seen["url"]).endswith("/models/big/1.0.0/big_v1.0.0.joblib")
    assert {"uploadId", "partNumber"} <= set(parse_qs(urlsplit(seen["url"]).query))  # a multipart upload's part
    assert seen["claims"] == [("big", "1.0.0")] and seen["auto"] == "1.0.1"
    assert [m for m in moved if rec.artifact.key in m] == []  # completed in place, not copied there
    assert s3_bucket.pending_uploads() == []
    assert not [k for k in s3_bucket.object_keys() if f"/{TMP_DIR}/" in f"/{k}"]
    with pg_s3_server.direct() as d:
        assert list_claims(d.index) == []
        assert d.verify().ok


def test_an_upload_never_committed_leaves_nothing_and_frees_its_version(
    pg_s3_server: HttpServer, s3_bucket: Any, tmp_path: Path
) -> None:
    """A client that plans and uploads but never commits (it drops the upload): the claim is
    released, the multipart upload aborted, nothing is under the key, and the version is free."""
    data = np.random.default_rng(2).bytes(2 * MIN_PART_SIZE + 1)
    source = tmp_path / "f.bin"
    source.write_bytes(data)
    dec = presigned_client.declare(source, MIN_PART_SIZE)
    body = {
        "model": "m",
        "version": "2.0.0",
        "extension": ".joblib",
        "size": dec.size,
        "sha256": dec.sha256,
        "part_size": dec.part_size,
        "part_sha256s": dec.part_sha256s,
    }
    with pg_s3_server.client() as c:
        answer = c.request("POST", "/uploads/presigned", json=body)
        assert answer["plan"] == {"version": "2.0.0", "key": "m/2.0.0/m_v2.0.0.joblib"}
        with pytest.raises(SaveInProgressError):
            c.request("POST", "/uploads/presigned", json=body)  # the same version, planned again
        presigned_client.upload_plan(answer["presigned"], source)
        assert s3_bucket.pending_uploads() == ["models/m/2.0.0/m_v2.0.0.joblib"]
        c.request("DELETE", f"/uploads/{answer['upload']}")
        assert s3_bucket.pending_uploads() == []
        assert not s3_bucket.object_keys("models/m/")
        with pg_s3_server.direct() as d:
            assert list_claims(d.index) == []
        again = c.request("POST", "/uploads/presigned", json=body)  # the version is free again
        assert again["plan"]["version"] == "2.0.0"
        c.request("DELETE", f"/uploads/{again['upload']}")


def test_the_server_keeps_a_pending_uploads_claim_alive(
    pg_s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request reaches the server while the client sends its parts: the server renews the
    claim's lease itself, so a long upload's claim never goes stale under it."""
    monkeypatch.setattr(claims, "CLAIM_RENEW_SECONDS", 0.05)
    data = b"x" * (MIN_PART_SIZE + 1)
    part_sha256s = [hashlib.sha256(data[:MIN_PART_SIZE]).hexdigest(), hashlib.sha256(data[MIN_PART_SIZE:]).hexdigest()]
    body = {
        "model": "m",
        "extension": ".joblib",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "part_size": MIN_PART_SIZE,
        "part_sha256s": part_sha256s,
    }
    with pg_s3_server.client() as c, pg_s3_server.direct() as d:
        answer = c.request("POST", "/uploads/presigned", json=body)
        (first,) = list_claims(d.index)
        renewed = None
        for _ in range(400):  # the lease is renewed every 0.05 s: give it up to 20 s under load
            (now,) = list_claims(d.index)
            if now.claimed_at != first.claimed_at:
                renewed = now
                break
            time.sleep(0.05)
        assert renewed is not None and renewed.token == first.token
        c.request("DELETE", f"/uploads/{answer['upload']}")
        assert list_claims(d.index) == []
    assert s3_bucket.pending_uploads() == []  # the dropped upload was aborted: its part URLs lead nowhere


def test_an_expired_upload_releases_its_claim_and_aborts_its_parts(
    pg_s3_server: HttpServer, s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload whose client went away: once it is older than ``UPLOAD_TTL`` the next upload
    request drops it (its multipart upload aborted, its claim released), so its version is free."""
    from modelkeep.api import transfers

    source = tmp_path / "f.bin"
    source.write_bytes(np.random.default_rng(6).bytes(MIN_PART_SIZE + 1))
    dec = presigned_client.declare(source, MIN_PART_SIZE)
    body = {
        "extension": ".joblib",
        "size": dec.size,
        "sha256": dec.sha256,
        "part_size": dec.part_size,
        "part_sha256s": dec.part_sha256s,
    }
    with pg_s3_server.client() as c, pg_s3_server.direct() as d:
        gone = c.request("POST", "/uploads/presigned", json={**body, "model": "gone", "version": "1.0.0"})
        presigned_client.upload_plan(gone["presigned"], source)
        monkeypatch.setattr(transfers, "UPLOAD_TTL", 0.0)
        kept = c.request("POST", "/uploads/presigned", json={**body, "model": "kept"})  # expires the first
        monkeypatch.setattr(transfers, "UPLOAD_TTL", 3600.0)
        for _ in range(400):  # dropped on a thread of its own: give it up to 20 s under load
            if [i.model_name for i in list_claims(d.index)] == ["kept"]:
                break
            time.sleep(0.05)
        assert [i.model_name for i in list_claims(d.index)] == ["kept"]
        assert s3_bucket.pending_uploads() == ["models/kept/1.0.0/kept_v1.0.0.joblib"]
        assert not s3_bucket.object_keys("models/gone/")
        with pytest.raises(MetadataError, match="no pending upload"):
            c.request("POST", "/models/gone/commit", json={"upload": gone["upload"], "record": {}})
        c.request("DELETE", f"/uploads/{kept['upload']}")


def test_a_large_overwrite_needs_a_maintainer_and_replaces_the_artifact_in_place(
    pg_s3_server: HttpServer, s3_bucket: Any
) -> None:
    """Replacing a version with a large artifact: a writer is refused when the upload is planned
    (no claim is left, nothing uploaded); a maintainer's upload goes to a fresh revision key under
    the claim, and the replaced artifact is removed once the new row is committed."""
    old, new = _big(7), _big(8)
    writer = pg_s3_server.add_user("wendy", "writer")
    with pg_s3_server.client(cache_max_bytes=0) as c:
        first = c.save_version(old, "big", version="1.0.0", compress=False)
    with pg_s3_server.client(writer) as w, pytest.raises(PermissionDeniedError, match="maintainer"):
        w.save_version(new, "big", version="1.0.0", overwrite=True, compress=False)
    with pg_s3_server.direct() as d:
        assert list_claims(d.index) == []
    assert s3_bucket.pending_uploads() == []
    with pg_s3_server.client(cache_max_bytes=0) as c:
        second = c.save_version(new, "big", version="1.0.0", overwrite=True, compress=False)
        assert second.artifact.key != first.artifact.key and second.artifact.key.startswith("big/1.0.0/")
        assert np.array_equal(c.load("big", "1.0.0")["w"], new["w"])
        assert c.keyring.check(c.get_version("big", "1.0.0")).trusted
    keys = s3_bucket.object_keys("models/big/")
    assert f"models/{second.artifact.key}" in keys and f"models/{first.artifact.key}" not in keys
    with pg_s3_server.direct() as d:
        assert list_claims(d.index) == []
        assert d.verify().ok


# -- an upload in parts: each part's URL asked for (and signed with its SHA-256) as it is serialized --


def _part(data: bytes, number: int, part_size: int) -> dict[str, Any]:
    chunk = data[(number - 1) * part_size : number * part_size]
    return {"number": number, "size": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()}


def test_part_urls_are_signed_one_by_one_for_their_upload_and_owner_only(
    pg_s3_server: HttpServer, s3_bucket: Any
) -> None:
    """``POST /uploads/parts`` claims the version and starts the multipart upload at its final key
    with no part URL; each part's URL is then signed for the SHA-256 and size declared for it.
    Refused: a part number out of S3's range, a part larger than the part size, a malformed
    SHA-256, a part declared again with other bytes, another user's request, and any part once
    the upload was dropped (its multipart upload aborted, its claim released)."""
    data = np.random.default_rng(11).bytes(MIN_PART_SIZE + 7)
    start = {"model": "m", "version": "3.0.0", "extension": ".joblib", "part_size": MIN_PART_SIZE}
    writer = pg_s3_server.add_user("wanda", "writer")
    with pg_s3_server.client() as c, pg_s3_server.client(writer) as other, pg_s3_server.direct() as d:
        started = c.request("POST", "/uploads/parts", json=start)
        assert started["plan"] == {"version": "3.0.0", "key": "m/3.0.0/m_v3.0.0.joblib"}
        assert [(i.model_name, i.version) for i in list_claims(d.index)] == [("m", "3.0.0")]
        assert s3_bucket.pending_uploads() == ["models/m/3.0.0/m_v3.0.0.joblib"]
        parts = f"/uploads/{started['upload']}/parts"
        first = _part(data, 1, MIN_PART_SIZE)
        for bad in ({**first, "number": 0}, {**first, "number": 10_001}, {**first, "size": MIN_PART_SIZE + 1}):
            with pytest.raises(MetadataError):
                c.request("POST", parts, json=bad)
        with pytest.raises(MetadataError):
            c.request("POST", parts, json={**first, "sha256": "not hex"})
        signed = c.request("POST", parts, json=first)
        assert signed["number"] == 1 and "X-Amz-Signature=" in signed["url"]
        assert signed["headers"]["x-amz-checksum-sha256"] == presigned.b64_sha256(first["sha256"])
        assert c.request("POST", parts, json=first)["headers"] == signed["headers"]  # asked again: same part
        with pytest.raises(MetadataError, match="other bytes"):
            c.request("POST", parts, json={**first, "sha256": hashlib.sha256(b"other").hexdigest()})
        with pytest.raises(MetadataError, match="no pending upload"):
            other.request("POST", parts, json=_part(data, 2, MIN_PART_SIZE))  # not its upload
        c.request("DELETE", f"/uploads/{started['upload']}")
        with pytest.raises(MetadataError, match="no pending upload"):
            c.request("POST", parts, json=_part(data, 2, MIN_PART_SIZE))
        assert s3_bucket.pending_uploads() == [] and list_claims(d.index) == []


def test_a_save_in_parts_with_a_part_never_sent_commits_nothing_and_its_parts_close_at_the_commit(
    pg_s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose second part's URL was signed but whose bytes never reached the bucket: the
    commit finds the part missing, aborts the upload and releases the claim; nothing is committed.
    An honest save then commits, and its upload takes no part URL any more."""
    put = presigned_client._put_part

    def lost(client: Any, url: str, *args: Any) -> str:
        if parse_qs(urlsplit(url).query)["partNumber"] == ["2"]:
            return '"lost"'
        return put(client, url, *args)

    model = _big(12)
    with pg_s3_server.client(cache_max_bytes=0) as c:
        with monkeypatch.context() as m:
            m.setattr(presigned_client, "_put_part", lost)
            with pytest.raises(IntegrityError, match=r"part\(s\) \[2\] of \d+ were never uploaded"):
                c.save_version(model, "big", compress=False)
        assert "big" not in c.list_models()
        assert s3_bucket.pending_uploads() == [] and not s3_bucket.object_keys("models/big/")
        sent: list[dict[str, Any]] = []
        finish = presigned_client.PartSender.finish
        monkeypatch.setattr(presigned_client.PartSender, "finish", lambda self: sent.append(finish(self)) or sent[-1])
        assert c.save_version(model, "big", compress=False).version == "1.0.0"
        with pytest.raises(MetadataError, match="no pending upload"):
            c.request("POST", f"/uploads/{sent[0]['upload']}/parts", json=_part(b"x" * 9, 1, MIN_PART_SIZE))
        assert np.array_equal(c.load("big")["w"], model["w"])
    with pg_s3_server.direct() as d:
        assert list_claims(d.index) == [] and d.verify().ok


def test_an_upload_in_parts_is_held_to_the_upload_cap_part_by_part(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's cap holds before any byte goes to the bucket: no part URL is signed for bytes
    past it (413, naming the limit), and a save over it fails in one line with its claim released."""
    side = ServerSide(s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_bucket.storage_options)
    with running_server(side, tmp_path / "server", args=("--max-upload-size", "24MiB")) as server:
        with server.client(cache_max_bytes=0) as c, server.direct() as d:
            start = {"model": "m", "extension": ".joblib", "part_size": MIN_PART_SIZE}
            started = c.request("POST", "/uploads/parts", json=start)
            parts = f"/uploads/{started['upload']}/parts"
            data = b"y" * MIN_PART_SIZE
            for n in range(1, 5):  # 20 MiB: under the cap
                c.request("POST", parts, json=_part(data * 5, n, MIN_PART_SIZE))
            with pytest.raises(UploadTooLargeError, match="--max-upload-size"):
                c.request("POST", parts, json=_part(data * 5, 5, MIN_PART_SIZE))
            c.request("DELETE", f"/uploads/{started['upload']}")
            with pytest.raises(UploadTooLargeError) as caught:
                c.save_version({"w": np.random.default_rng(13).random(40 * MiB // 8)}, "big", compress=False)
            assert "\n" not in str(caught.value)
            assert "big" not in c.list_models() and list_claims(d.index) == []
        assert s3_bucket.pending_uploads() == []


def test_a_save_that_fails_to_serialize_after_its_first_parts_leaves_no_claim_and_no_upload(
    pg_s3_server: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload in parts starts (the version claimed, parts sent) before the artifact is whole: a
    model whose serialization fails after 20 MiB went out drops the upload, so its parts are
    aborted, its claim released and the version free for the next save."""

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("not today")

    sent: list[str] = []
    with pg_s3_server.client(cache_max_bytes=0) as c, pg_s3_server.direct() as d:
        with monkeypatch.context() as m, pytest.raises(SerializationError, match="not today"):
            before_first_part(m, sent.append)
            c.save_version({**_big(14), "z": Unpicklable()}, "big", version="1.0.0", compress=False)
        assert len(sent) == 1  # a part had gone to the bucket
        assert list_claims(d.index) == [] and "big" not in d.list_models()
        assert s3_bucket.pending_uploads() == [] and not s3_bucket.object_keys("models/big/")
        assert c.save_version(_big(14), "big", version="1.0.0", compress=False).version == "1.0.0"


def test_a_revoked_token_gets_no_more_part_urls_and_cannot_commit(pg_s3_server: HttpServer, s3_bucket: Any) -> None:
    """Every request of an upload in parts checks the bearer token (the upload is bound to its
    user too, not to the token): once the token is revoked, neither another part's URL nor the
    commit is given, and another user cannot sign parts of the upload."""
    data = np.random.default_rng(22).bytes(2 * MIN_PART_SIZE)
    writer = pg_s3_server.add_user("wes", "writer")
    start = {"model": "m", "extension": ".joblib", "part_size": MIN_PART_SIZE}
    with pg_s3_server.client(writer) as w, pg_s3_server.client() as admin, pg_s3_server.direct() as d:
        started = w.request("POST", "/uploads/parts", json=start)
        parts = f"/uploads/{started['upload']}/parts"
        w.request("POST", parts, json=_part(data, 1, MIN_PART_SIZE))
        assert admin.users.revoke_tokens("wes") == 1
        with pytest.raises(AuthenticationError):
            w.request("POST", parts, json=_part(data, 2, MIN_PART_SIZE))
        with pytest.raises(AuthenticationError):
            w.request("POST", "/models/m/commit", json={"upload": started["upload"]})
        with pytest.raises(MetadataError, match="no pending upload"):  # bound to its user, not to any token
            admin.request("POST", parts, json=_part(data, 2, MIN_PART_SIZE))
        assert [(i.model_name, i.version) for i in list_claims(d.index)] == [("m", "1.0.0")]
        assert "m" not in d.list_models()
