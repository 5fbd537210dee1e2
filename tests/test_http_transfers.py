"""Saves and loads through a registry server: every format round trip, the upload/commit protocol
as an attacker would drive it with raw HTTP, and signatures end to end against a compromised server.

The server runs in this process (tests/_http_server.py, ``in_process=True``); the fault tests that
kill it are in test_http_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelkeep import ModelPersistence, keys
from modelkeep.api.client_transfers import STREAMED_PART
from modelkeep.api.transfers import EXPECTED_HEADER, UPLOAD_CHUNK
from modelkeep.errors import (
    IntegrityError,
    MetadataError,
    SignatureError,
    VersionExistsError,
)
from modelkeep.index.claims import list_claims
from modelkeep.layout import TMP_DIR

from ._http_server import HttpServer, ServerSide, running_server
from ._presigned_hooks import tamper_parts, whole_file

FORMATS = ["joblib", "pickle", "skops", "native"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with running_server(ServerSide(str(tmp_path / "models")), tmp_path / "server", in_process=True) as srv:
        yield srv


def _pipeline() -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), X


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = keys.generate(name)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    assert keys.write_key_file(private, key.pem())
    keys.write_key_file(public, key.public.pem(), mode=0o644)
    return private, public


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_through_the_server(server: HttpServer, fmt: str) -> None:
    pipe, X = _pipeline()
    arrays = {"weights": np.arange(50_000, dtype=np.float64), "small": np.array([1, 2, 3])}
    with server.client() as c:
        rec = c.save_version(pipe, "pipe", serialization_format=fmt, accuracy=0.93)
        assert rec.version == "1.0.0" and rec.artifact is not None and rec.artifact.format == fmt
        assert rec.metadata["accuracy"] == 0.93
        loaded, meta = c.load("pipe", return_metadata=True)
        assert (loaded.predict(X) == pipe.predict(X)).all()
        assert meta.artifact is not None and meta.artifact.sha256 == rec.artifact.sha256
        if fmt != "skops":  # skops stores only the types it knows; a dict of arrays is not a model
            c.save_version(arrays, "arrays", serialization_format=fmt)
            back = c.load("arrays")
            assert np.array_equal(back["weights"], arrays["weights"]) and list(back["small"]) == [1, 2, 3]
    with server.direct() as d:  # what the server committed is a normal version, loadable directly
        assert (d.load("pipe").predict(X) == pipe.predict(X)).all()
        assert d.verify().ok


def test_versions_overwrites_and_history_match_a_local_save(server: HttpServer) -> None:
    with server.client() as c:
        assert c.save_version({"a": 1}, "m").version == "1.0.0"
        assert c.save_version({"a": 2}, "m").version == "1.0.1"
        assert c.save_version({"a": 3}, "m", "2.0.0").version == "2.0.0"
        with pytest.raises(VersionExistsError):
            c.save_version({"a": 4}, "m", "2.0.0")
        rec = c.save_version({"a": 5}, "m", "2.0.0", overwrite=True)
        assert rec.artifact is not None and ".r" in rec.artifact.key  # a fresh revision key, never in place
        assert c.load("m", "2.0.0") == {"a": 5}
        assert c.list_versions("m") == ["1.0.0", "1.0.1", "2.0.0"]
        where = c.save({"b": 1}, "other")
        assert isinstance(where, str) and where.startswith(server.url)
        fetched = httpx.get(where, headers={"Authorization": f"Bearer {server.token}"}, follow_redirects=True)
        other = c.get_version("other")
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == other.artifact.sha256  # type: ignore[union-attr]
    with server.direct() as d:
        assert d.verify().ok
        assert {h.actor for h in d.history("m")} == {"admin"}  # the authenticated user, not the server


def test_export_import_and_read_file_through_the_server(server: HttpServer, tmp_path: Path) -> None:
    pipe, X = _pipeline()
    with server.client() as c:
        c.save(pipe, "pipe")
        out = c.export_file("pipe", None, tmp_path / "pipe.joblib")
        rec = c.import_file(out, "imported")
        assert rec.version == "1.0.0"
        assert (c.load("imported").predict(X) == pipe.predict(X)).all()
        assert (c.read_file(out).predict(X) == pipe.predict(X)).all()


def test_a_taken_version_is_signed_again_for_the_next_one(server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer takes the planned version between the upload and the commit: the server
    answers 409 and the client signs the next version and commits the same upload."""
    from modelkeep.api.client_transfers import TransferMixin

    original = TransferMixin._signed
    raced: list[str] = []

    def racing(self: Any, draft: Any, version: str, key: str) -> Any:
        if not raced:
            raced.append(version)
            with server.direct() as d:
                d.save({"rival": True}, "m", version)
        return original(self, draft, version, key)

    monkeypatch.setattr(TransferMixin, "_signed", racing)
    with server.client() as c:
        rec = c.save_version({"mine": True}, "m")
    assert raced == ["1.0.0"] and rec.version == "1.0.1"
    with server.client() as c:
        assert c.load("m", "1.0.1") == {"mine": True} and c.load("m", "1.0.0") == {"rival": True}
        assert c.keyring.check(c.get_version("m", "1.0.1")).trusted


# -- the protocol as an attacker drives it -------------------------------------------------------
def _raw(server: HttpServer) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {server.token}"})


def _upload(http: httpx.Client, data: bytes, announced: bytes | None = None, **params: str) -> httpx.Response:
    body = announced if announced is not None else data
    expected = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return http.post("/uploads", content=data, headers={EXPECTED_HEADER: json.dumps(expected)}, params=params)


def test_bytes_that_differ_from_their_announced_digest_are_refused_and_removed(server: HttpServer) -> None:
    with _raw(server) as http:
        answer = _upload(http, b"evil bytes!", announced=b"good bytes!")
        assert answer.status_code == 422 and answer.json()["error"]["class"] == "IntegrityError"
        longer = _upload(http, b"x" * 100, announced=b"x" * 10)
        assert longer.status_code == 422
    tmp = Path(server.side.models_dir) / TMP_DIR
    assert not tmp.exists() or not any(tmp.iterdir())


def _staged(server: HttpServer) -> list[Path]:
    tmp = Path(server.side.models_dir) / TMP_DIR
    return sorted(tmp.iterdir()) if tmp.exists() else []


def test_an_upload_of_many_batches_is_checked_as_it_streams_and_leaves_nothing_when_refused(
    server: HttpServer,
) -> None:
    """Bodies of several :data:`UPLOAD_CHUNK` batches (each written and hashed on a thread while
    the next arrives): longer than announced (found on that thread, mid-body), other bytes than
    announced (found once all are written), or cut off by the client: refused, and nothing stays
    staged. The same bytes announced truly are staged whole."""
    import socket

    data = np.random.default_rng(5).bytes(3 * UPLOAD_CHUNK + 12345)
    with _raw(server) as http:
        try:
            longer = _upload(http, data, announced=data[: UPLOAD_CHUNK + 1])
        except httpx.TransportError:  # refused while the client was still sending
            pass
        else:
            assert longer.status_code == 422 and longer.json()["error"]["class"] == "IntegrityError"
        assert _staged(server) == []
        flipped = bytearray(data)
        flipped[-1] ^= 1
        other = _upload(http, bytes(flipped), announced=data)
        assert other.status_code == 422 and other.json()["error"]["class"] == "IntegrityError"
        assert _staged(server) == []

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    expected = json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    head = (
        f"POST /api/v1/uploads HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}\r\n"
        f"{EXPECTED_HEADER}: {expected}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + data[: 2 * UPLOAD_CHUNK + 1000])  # then the client goes away
    for _ in range(300):  # the server notices the closed connection and removes what it staged
        if not _staged(server):
            break
        time.sleep(0.05)
    assert _staged(server) == []

    with _raw(server) as http:
        accepted = _upload(http, data)
    assert accepted.status_code == 201 and accepted.json()["sha256"] == hashlib.sha256(data).hexdigest()
    staged = _staged(server)
    assert len(staged) == 1 and staged[0].read_bytes() == data


def _client_record(server: HttpServer, tmp_path: Path) -> tuple[dict[str, Any], bytes]:
    """A genuine record and artifact, made by a local registry as a client would."""
    with ModelPersistence(tmp_path / "scratch") as local:
        rec = local.save_version({"a": np.arange(5)}, "m")
        assert rec.artifact is not None
        data = (tmp_path / "scratch" / rec.artifact.key).read_bytes()
        return rec.to_dict(), data


def test_a_commit_is_checked_against_what_was_uploaded(server: HttpServer, tmp_path: Path) -> None:
    record, data = _client_record(server, tmp_path)
    blake = record["artifact"]["extra"].get("blake3")
    with _raw(server) as http:

        def upload() -> str:
            expected = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "blake3": blake}
            answer = http.post("/uploads", content=data, headers={EXPECTED_HEADER: json.dumps(expected)})
            assert answer.status_code == 201, answer.text
            return str(answer.json()["upload"])

        def commit(rec: dict[str, Any], upload_id: str, name: str = "m") -> httpx.Response:
            return http.post(f"/models/{name}/commit", json={"upload": upload_id, "record": rec, "auto_version": True})

        upload_id = upload()
        swapped = json.loads(json.dumps(record))
        swapped["artifact"]["sha256"] = "0" * 64  # a record for other bytes than those uploaded
        assert commit(swapped, upload_id).json()["error"]["class"] == "IntegrityError"
        assert commit(record, upload_id, name="other").json()["error"]["class"] == "MetadataError"
        escaping = json.loads(json.dumps(record))
        escaping["artifact"]["key"] = "../../../../tmp/owned.joblib"
        refused = commit(escaping, upload_id)
        assert refused.status_code == 409 and refused.json()["error"]["class"] == "VersionExistsError"
        unknown = json.loads(json.dumps(record))
        unknown["artifact"]["format"] = "evil"
        assert commit(unknown, upload_id).status_code == 400
        assert commit(record, "not-an-upload").json()["error"]["class"] == "MetadataError"
        ok = commit(record, upload_id)
        assert ok.status_code == 201, ok.text
        assert commit(record, upload_id).json()["error"]["class"] == "MetadataError"  # used once
    assert not (tmp_path / "owned.joblib").exists() and not Path("/tmp/owned.joblib").exists()
    with server.direct() as d:
        got = d.get_version("m", "1.0.0")
        assert got.signature == record["signature"]  # the client's signature, kept as it was made
        assert d.load("m")["a"].tolist() == [0, 1, 2, 3, 4]
        assert d.verify().ok


def test_another_users_upload_cannot_be_committed(server: HttpServer, tmp_path: Path) -> None:
    record, data = _client_record(server, tmp_path)
    other = server.add_user("mallory", "admin")
    with _raw(server) as http:
        expected = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "blake3": record["artifact"]["extra"].get("blake3"),
        }
        upload_id = http.post("/uploads", content=data, headers={EXPECTED_HEADER: json.dumps(expected)}).json()[
            "upload"
        ]
    with httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {other}"}) as mallory:
        answer = mallory.post("/models/m/commit", json={"upload": upload_id, "record": record, "auto_version": True})
        assert answer.status_code == 400 and answer.json()["error"]["class"] == "MetadataError"


def test_a_blob_must_hash_to_its_name_and_only_listed_blobs_are_served(server: HttpServer) -> None:
    with _raw(server) as http:
        wrong = http.put("/blobs/" + "a" * 64, content=b"not those bytes")
        assert wrong.status_code == 422
        data = b"z" * 70_000
        sha = hashlib.sha256(data).hexdigest()
        assert http.put(f"/blobs/{sha}", content=data).status_code == 201
        assert http.post("/blobs/missing", json={"blobs": [[sha, len(data)]]}).json()["missing"] == []
    with server.client() as c:
        c.save_version({"x": np.arange(10)}, "n", serialization_format="native")
    with _raw(server) as http:
        stray = http.get(f"/models/n/versions/1.0.0/blobs/{sha}")  # stored, but not this version's
        assert stray.status_code == 400 and stray.json()["error"]["class"] == "MetadataError"


# -- signatures end to end: a compromised server --------------------------------------------------
def _signed_client(server: HttpServer, tmp_path: Path, **kwargs: Any) -> Any:
    private, public = key_pair(tmp_path, "alice")
    return server.client(signing_key_file=str(private), trusted_keys=[str(public)], **kwargs)


def test_a_server_that_swaps_the_artifact_bytes_is_caught(server: HttpServer, tmp_path: Path) -> None:
    with _signed_client(server, tmp_path) as c:
        rec = c.save_version({"w": np.arange(100)}, "m")
        assert rec.artifact is not None
        path = Path(server.side.models_dir) / rec.artifact.key
        other = tmp_path / "other"
        with ModelPersistence(other) as evil:
            evil_rec = evil.save_version({"w": np.zeros(100)}, "m")
            assert evil_rec.artifact is not None
            path.chmod(0o644)
            path.write_bytes((other / evil_rec.artifact.key).read_bytes())
        with pytest.raises(IntegrityError):
            c.load("m")


def test_a_server_that_re_signs_a_swapped_record_with_its_own_key_is_refused(
    server: HttpServer, tmp_path: Path
) -> None:
    with _signed_client(server, tmp_path, require_signatures=True) as c:
        c.save_version({"w": "genuine"}, "m")
        assert c.load("m") == {"w": "genuine"}
        evil_private, _ = key_pair(tmp_path, "server-admin")
        with server.direct(signing_key_file=str(evil_private)) as evil:  # whoever runs the server
            evil.save_version({"w": "forged"}, "m", "1.0.0", overwrite=True)
        with pytest.raises(SignatureError):
            c.load("m")


def test_a_server_that_strips_the_signature_is_refused_when_signatures_are_required(
    server: HttpServer, tmp_path: Path
) -> None:
    with _signed_client(server, tmp_path, require_signatures=True) as c:
        rec = c.save_version({"w": "genuine"}, "m")
        with server.direct() as d:
            stripped = d.get_version("m", rec.version)
            stripped.signature = None
            d.index.put(stripped)
        with pytest.raises(SignatureError):
            c.load("m")


def test_a_viewer_without_sight_of_a_model_cannot_fetch_its_artifact(server: HttpServer) -> None:
    with server.client() as c:
        c.save_version({"secret": 1}, "m")
    with httpx.Client(base_url=server.url + "/api/v1") as anonymous:
        assert anonymous.get("/models/m/versions/1.0.0/artifact").status_code == 401
    bad = httpx.get(server.url + "/api/v1/models/m/versions/1.0.0/artifact", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_a_malformed_record_is_a_clear_error(server: HttpServer) -> None:
    with _raw(server) as http:
        answer = http.post("/models/m/commit", json={"upload": "x", "record": "not a record"})
        assert answer.status_code == 400
    with server.client() as c, pytest.raises(MetadataError):
        c.request("POST", "/models/m/commit", json={"upload": "x", "record": []})


# -- PostgreSQL + S3: presigned uploads and downloads ----------------------------------------------
def test_large_saves_and_loads_go_straight_to_the_bucket(
    http_server_pg_s3: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over PostgreSQL + (moto) S3, a large artifact is uploaded with presigned part URLs and
    downloaded with a presigned ranged GET; small ones stream through the server."""
    from modelkeep.storage import presigned_client

    used: list[str] = []
    put_part, download_ranges = presigned_client._put_part, presigned_client.download_ranges
    monkeypatch.setattr(presigned_client, "_put_part", lambda *a, **k: used.append("put") or put_part(*a, **k))
    monkeypatch.setattr(
        presigned_client, "download_ranges", lambda *a, **k: used.append("get") or download_ranges(*a, **k)
    )
    big = {"w": np.random.default_rng(3).random(40 * (1 << 20) // 8)}  # 40 MiB: three 16 MiB parts
    pipe, X = _pipeline()
    with http_server_pg_s3.client(cache_max_bytes=0) as c:
        for fmt in FORMATS:
            c.save_version(pipe, f"pipe-{fmt}", serialization_format=fmt)
            assert (c.load(f"pipe-{fmt}").predict(X) == pipe.predict(X)).all()
        assert used == []  # small artifacts stream through the server, both ways
        rec = c.save_version(big, "big", compress=False)
        assert used.count("put") == -(-rec.artifact.size // STREAMED_PART)  # its parts, sent as serialized
        assert np.array_equal(c.load("big")["w"], big["w"])
        assert "get" in used
        assert c.keyring.check(c.get_version("big")).trusted
    with http_server_pg_s3.direct() as d:
        assert d.verify().ok
        assert d.get_version("big").signature == rec.signature


@pytest.mark.parametrize(("mib", "whole"), [(10, True), (20, False), (20, True)])
def test_a_presigned_upload_of_other_bytes_is_refused_at_the_commit(
    mib: int, whole: bool, http_server_pg_s3: HttpServer, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto does not enforce the signed checksums: the server reads the upload back and refuses
    bytes other than those declared, and nothing is committed. 10 MiB by a whole-file plan is one
    presigned PUT, staged under .tmp/; 20 MiB is a multipart upload to the version's final key under its claim (sent in
    parts as it is serialized, or by a whole-file plan), whose object the refusal removes, releasing
    the claim (the version is free for the next save)."""
    tamper_parts(monkeypatch)
    big = {"w": np.random.default_rng(4).random(mib * (1 << 20) // 8)}
    with http_server_pg_s3.client() as c:
        whole_file(c, whole)
        with pytest.raises(IntegrityError):
            c.save_version(big, "big", compress=False)
        assert "big" not in c.list_models()
    assert s3_bucket.pending_uploads() == []
    assert not [k for k in s3_bucket.object_keys("models/") if k.startswith(("models/big/", f"models/{TMP_DIR}/"))]
    with http_server_pg_s3.direct() as d:
        assert d.verify().ok
        assert list_claims(d.index) == []
    monkeypatch.undo()
    with http_server_pg_s3.client() as c:
        assert c.save_version(big, "big", compress=False).version == "1.0.0"


@pytest.mark.parametrize(
    "name", ["save", "save_version", "load", "read_file", "import_file", "export_file", "check_input"]
)
def test_transfer_methods_take_the_arguments_of_a_local_registry(name: str) -> None:
    """User code written for ModelPersistence runs unchanged against a server."""
    import inspect

    from modelkeep.api.client import HttpRegistry

    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(getattr(HttpRegistry, name)) == params(getattr(ModelPersistence, name))


@pytest.mark.postgres
def test_the_pg_s3_conformance_variant_moves_bytes_through_presigned_urls(
    pg_schema: str, request: pytest.FixtureRequest, tmp_path: Path, s3_bucket: Any
) -> None:
    """The ``http-pg-s3`` way to ``persistence`` (conftest) lowers the presigned threshold so the
    suites' small models take presigned URLs; counted from the server's answers, and the bytes
    are in the bucket. Its exit check refuses any upload or download streamed by the server."""
    from ._http_server import over_http_pg_s3
    from .conftest import PG_URL, IndexTarget

    assert PG_URL is not None
    target = IndexTarget("postgresql", PG_URL, pg_schema)
    with (
        pytest.raises(AssertionError, match="uploads streamed through the server"),
        over_http_pg_s3(target, request, tmp_path / "server") as registry,
    ):
        registry.save({"v": 1}, "m", "1.0.0")
        assert registry.load("m") == {"v": 1}
        counts = registry.counts
        assert counts is not None
        assert (counts.presigned_uploads, counts.streamed_uploads) == (1, 0)
        assert (counts.presigned_downloads, counts.streamed_downloads) == (1, 0)
        record = registry.get_version("m", "1.0.0")
        assert record.artifact is not None and f"models/{record.artifact.key}" in s3_bucket.object_keys()
        counts.streamed_uploads += 1  # as if a save had streamed: the exit check refuses it
