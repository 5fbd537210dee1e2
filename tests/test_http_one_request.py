"""Small saves and loads through a registry server in one request each (issue #28, "within 5 ms").

A small save sends its signed record and the artifact in one ``POST /models/{name}/save``; a load
gets the record and a small artifact in one ``GET .../load``. These tests drive a real in-process
server, count the requests the client makes, and attack the one-request routes with raw HTTP: the
guarantees of the two-request protocol (roles before staging, digests before the commit, the
client's own digest and signature checks before parsing) must all still hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest

from modelkeep import ModelPersistence, keys
from modelkeep.api.transfers import BUNDLE_TYPE, EXPECTED_HEADER, INLINE_MAX, RECORD_LENGTH_HEADER
from modelkeep.errors import (
    IntegrityError,
    ModelNotFoundError,
    PermissionDeniedError,
    VersionExistsError,
)
from modelkeep.layout import TMP_DIR

from ._http_server import HttpServer, ServerSide, running_server
from .s3_server import FaultProxy, S3Bucket, s3_options

API = "/api/v1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with running_server(ServerSide(str(tmp_path / "models")), tmp_path / "server", in_process=True) as srv:
        yield srv


def _signed_client(server: HttpServer, tmp_path: Path, **kwargs: Any) -> Any:
    key = keys.generate("alice")
    private, public = tmp_path / "alice.pem", tmp_path / "alice.pub.pem"
    keys.write_key_file(private, key.pem())
    keys.write_key_file(public, key.public.pem(), mode=0o644)
    return server.client(signing_key_file=str(private), trusted_keys=[str(public)], require_signatures=True, **kwargs)


def _requests(client: Any) -> list[str]:
    """Every request ``client`` sends from now on, as ``"METHOD /path?query"`` (without the API prefix)."""
    seen: list[str] = []

    def note(response: httpx.Response) -> None:
        url = response.request.url
        path = url.path.removeprefix(API)
        seen.append(f"{response.request.method} {path}" + (f"?{url.query.decode()}" if url.query else ""))

    client.event_hooks["response"].append(note)
    return seen


def _nothing_staged(server: HttpServer) -> bool:
    tmp = Path(server.side.models_dir) / TMP_DIR
    return not tmp.exists() or not any(tmp.iterdir())


def test_a_small_save_and_load_take_one_request_each_and_stay_signed(server: HttpServer, tmp_path: Path) -> None:
    with _signed_client(server, tmp_path) as c:
        seen = _requests(c)
        first = c.save_version({"w": np.arange(10)}, "m")
        second = c.save_version({"w": np.arange(20)}, "m")
        assert (first.version, second.version) == ("1.0.0", "1.0.1")
        assert seen == ["POST /models/m/save", "POST /models/m/save"]
        seen.clear()
        model, record = c.load("m", return_metadata=True)
        assert model["w"].tolist() == list(range(20)) and record.version == "1.0.1"
        c.set_alias("m", "prod", "1.0.0")
        seen.clear()
        assert c.load("m@prod")["w"].tolist() == list(range(10))
        assert c.load("m", "1.0.1")["w"].tolist() == list(range(20))
        # By alias: what its move is judged with (here, with this client's keys) and the artifact
        # in one request; by version: one request.
        assert seen == ["GET /models/m/aliases/prod/load", "GET /models/m/versions/1.0.1/load"], seen
        assert c.signature_status("m", "1.0.0").trusted
    with server.direct() as d:
        assert d.get_version("m", "1.0.1").signature == second.signature  # the client's own, kept as made
        assert d.verify().ok
    assert _nothing_staged(server)


def test_a_version_another_writer_took_is_signed_again_without_sending_the_bytes_again(
    server: HttpServer, tmp_path: Path
) -> None:
    with _signed_client(server, tmp_path) as c, server.client() as other:
        c.save_version({"w": 1}, "m")  # 1.0.0: this client now expects to get 1.0.1 next
        other.save_version({"w": 2}, "m")  # ... which another writer takes
        seen = _requests(c)
        mine = c.save_version({"w": 3}, "m")
        assert mine.version == "1.0.2"
        assert seen == ["POST /models/m/save", "POST /models/m/commit"]  # the bytes were sent once
        assert c.load("m") == {"w": 3}  # signed for 1.0.2 and its key: the trusted signature checks
        seen.clear()
        overwritten = c.save_version({"w": 4}, "m", "1.0.0", overwrite=True)  # a fresh key: planned again
        assert seen == ["POST /models/m/save", "POST /models/m/commit"]
        assert overwritten.artifact is not None and overwritten.artifact.key != "m/1.0.0/m_v1.0.0.joblib"
        assert c.load("m", "1.0.0") == {"w": 4}
        with pytest.raises(VersionExistsError):
            c.save_version({"w": 5}, "m", "1.0.1")
    assert _nothing_staged(server)


def test_tampered_bytes_in_a_one_request_load_are_refused_by_the_client(server: HttpServer, tmp_path: Path) -> None:
    with _signed_client(server, tmp_path) as c:
        rec = c.save_version({"w": np.arange(100)}, "m")
        assert rec.artifact is not None
        path = Path(server.side.models_dir) / rec.artifact.key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one byte changed: what a compromised server would send
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        with httpx.Client(base_url=server.url + API, headers={"Authorization": f"Bearer {server.token}"}) as raw:
            sent = raw.get("/models/m/versions/latest/load")
            assert sent.headers["content-type"].startswith(BUNDLE_TYPE)
            assert sent.content.endswith(bytes(data))  # the server does send the swapped bytes inline
        seen = _requests(c)
        with pytest.raises(IntegrityError):
            c.load("m")
        assert seen == ["GET /models/m/versions/latest/load"]  # refused from that response, before parsing


def test_a_load_by_alias_judges_the_move_and_checks_the_bytes_that_came_with_it(
    server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer of ``GET .../aliases/{alias}/load`` is judged as ``.../state``'s was: a record
    other than the one the alias points at is refused, and bytes swapped on the server are
    refused from that one response, before anything is parsed."""
    with _signed_client(server, tmp_path) as c:
        rec = c.save_version({"w": np.arange(100)}, "m")
        c.save_version({"w": np.arange(5)}, "m")
        c.set_alias("m", "prod", rec.version)
        assert server.served is not None
        real = server.served.get_version
        monkeypatch.setattr(server.served, "get_version", lambda name, version=None, **kw: real(name, "1.0.1", **kw))
        seen = _requests(c)
        with pytest.raises(IntegrityError, match="not of the version the alias points at"):
            c.load("m@prod")
        assert seen == ["GET /models/m/aliases/prod/load"]
        monkeypatch.undo()
        assert rec.artifact is not None
        path = Path(server.side.models_dir) / rec.artifact.key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        seen.clear()
        with pytest.raises(IntegrityError):
            c.load("m@prod", require_signed_alias=True)
        assert seen == ["GET /models/m/aliases/prod/load"]


def _one_request(record: dict[str, Any], data: bytes, announced: bytes | None = None, **form: Any) -> dict[str, Any]:
    """The pieces of a raw one-request save of ``data`` (announced as ``announced``)."""
    body = announced if announced is not None else data
    expected = {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "blake3": record["artifact"]["extra"].get("blake3"),
    }
    head = json.dumps({"record": record, "auto_version": True, "extension": ".joblib", **form}).encode()
    return {
        "content": head + data,
        "headers": {EXPECTED_HEADER: json.dumps(expected), RECORD_LENGTH_HEADER: str(len(head))},
    }


def _client_record(tmp_path: Path) -> tuple[dict[str, Any], bytes]:
    """A genuine record and artifact for model ``m`` version 1.0.0, made as a client makes them."""
    with ModelPersistence(tmp_path / "scratch") as local:
        rec = local.save_version({"a": np.arange(5)}, "m")
        assert rec.artifact is not None
        return rec.to_dict(), (tmp_path / "scratch" / rec.artifact.key).read_bytes()


def test_a_viewers_one_request_save_stores_nothing(server: HttpServer, tmp_path: Path) -> None:
    record, data = _client_record(tmp_path)
    viewer = server.add_user("vic", "viewer")
    with httpx.Client(base_url=server.url + API, headers={"Authorization": f"Bearer {viewer}"}) as raw:
        answer = raw.post("/models/m/save", **_one_request(record, data))
        assert answer.status_code == 403 and answer.json()["error"]["class"] == "PermissionDeniedError"
    with server.client(token=viewer) as c, pytest.raises(PermissionDeniedError):
        c.save_version({"a": 1}, "m")
    assert _nothing_staged(server)
    with server.direct() as d:
        assert d.list_models() == []


def test_a_one_request_save_checks_the_bytes_and_bounds_before_committing(server: HttpServer, tmp_path: Path) -> None:
    record, data = _client_record(tmp_path)
    evil = bytes(b ^ 1 for b in data)
    with httpx.Client(base_url=server.url + API, headers={"Authorization": f"Bearer {server.token}"}) as raw:
        swapped = raw.post("/models/m/save", **_one_request(record, evil, announced=data))
        assert swapped.status_code == 422 and swapped.json()["error"]["class"] == "IntegrityError"
        other = json.loads(json.dumps(record))
        other["artifact"]["sha256"] = hashlib.sha256(evil).hexdigest()  # a record for other bytes
        mismatched = raw.post("/models/m/save", **_one_request(other, data))
        assert mismatched.status_code == 422 and mismatched.json()["error"]["class"] == "IntegrityError"
        too_big = _one_request(record, data)
        too_big["headers"][EXPECTED_HEADER] = json.dumps({"size": INLINE_MAX + 1, "sha256": "0" * 64})
        answer = raw.post("/models/m/save", **too_big)
        assert answer.status_code == 400 and "limited" in answer.json()["error"]["message"]
        short = _one_request(record, data)
        short["content"] = short["content"][:-1]
        assert raw.post("/models/m/save", **short).json()["error"]["class"] == "RequestError"
        no_head = _one_request(record, data)
        del no_head["headers"][RECORD_LENGTH_HEADER]
        assert raw.post("/models/m/save", **no_head).json()["error"]["class"] == "RequestError"
        assert _nothing_staged(server)
        ok = raw.post("/models/m/save", **_one_request(record, data))
        assert ok.status_code == 201, ok.text
        assert ok.json()["record"]["signature"] == record["signature"]
    with server.direct() as d:
        assert d.load("m")["a"].tolist() == [0, 1, 2, 3, 4] and d.verify().ok
    assert _nothing_staged(server)


def test_an_artifact_over_the_threshold_still_streams(server: HttpServer, tmp_path: Path) -> None:
    big = {"w": np.random.default_rng(0).random(INLINE_MAX // 8 + 1000)}  # just over the one-request limit
    with _signed_client(server, tmp_path) as c:
        seen = _requests(c)
        rec = c.save_version(big, "m", compress=False)
        assert rec.artifact is not None and rec.artifact.size > INLINE_MAX
        assert [s.split("?")[0] for s in seen] == ["POST /uploads", "POST /models/m/commit"]
        seen.clear()
        assert np.array_equal(c.load("m")["w"], big["w"])
        assert seen == ["GET /models/m/versions/latest/load", "GET /models/m/versions/1.0.0/artifact"]
    with httpx.Client(base_url=server.url + API, headers={"Authorization": f"Bearer {server.token}"}) as raw:
        answer = raw.get("/models/m/versions/latest/load")
        assert answer.headers["content-type"] == "application/json"  # the record only
        assert answer.json()["record"]["version"] == "1.0.0"


def test_a_one_request_load_of_a_model_out_of_sight_answers_as_a_missing_one(server: HttpServer) -> None:
    with server.client() as c:
        c.save_version({"secret": 1}, "fraud")
        c.save_version({"open": 1}, "churn")
    with server.direct() as p:
        p.users.add("gus", None, "none")
        p.users.grant("gus", "churn", "viewer")
        token = p.users.new_token("gus", "tests")
    with server.client(token) as gus:
        with pytest.raises(ModelNotFoundError):
            gus.load("fraud")
        assert gus.load("churn") == {"open": 1}
    with httpx.Client(base_url=server.url + API) as anonymous:
        assert anonymous.get("/models/churn/versions/latest/load").status_code == 401
    with httpx.Client(base_url=server.url + API, headers={"Authorization": f"Bearer {token}"}) as raw:
        hidden, missing = raw.get("/models/fraud/versions/1.0.0/load"), raw.get("/models/fraux/versions/1.0.0/load")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text == missing.text.replace("fraux", "fraud")  # nothing says it exists


def test_a_small_load_from_s3_is_one_get_of_the_object_and_a_small_save_is_not_presigned(
    s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Behind the server, S3 sees one GET for a small load (the record gives the size: no HEAD
    first), and a small save goes through the server in one request, not through presigned URLs."""
    side = ServerSide(
        s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_options(fault_proxy.endpoint_url)
    )
    with running_server(side, tmp_path / "server", in_process=True) as server, server.client(cache_max_bytes=0) as c:
        seen = _requests(c)
        rec = c.save_version({"w": np.arange(50)}, "m")
        assert rec.artifact is not None and seen == ["POST /models/m/save"]
        seen.clear()
        fault_proxy.requests.clear()
        assert c.load("m")["w"].tolist() == list(range(50))
        assert seen == ["GET /models/m/versions/latest/load"]
        reads = [method for method, path in fault_proxy.requests if unquote(path).endswith(rec.artifact.key)]
        assert reads == ["GET"]


def test_a_server_without_the_one_request_routes_is_used_the_two_request_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client talking to an older server (no ``/save`` or ``/load`` route: a plain 404) falls back
    to upload-then-commit and record-then-artifact, and stays there."""
    from modelkeep.api import transfers

    every = transfers.transfer_endpoints
    monkeypatch.setattr(
        transfers, "transfer_endpoints", lambda api: [e for e in every(api) if not e.path.endswith(("/save", "/load"))]
    )
    side = ServerSide(str(tmp_path / "models"))
    with running_server(side, tmp_path / "server", in_process=True) as server, _signed_client(server, tmp_path) as c:
        seen = _requests(c)
        c.save_version({"w": 1}, "m")
        assert [s.split("?")[0] for s in seen] == ["POST /models/m/save", "POST /uploads", "POST /models/m/commit"]
        seen.clear()
        assert c.load("m") == {"w": 1}
        c.save_version({"w": 2}, "m")
        assert [s.split("?")[0] for s in seen] == [
            "GET /models/m/versions/latest",
            "GET /models/m/versions/1.0.0/artifact",
            "POST /uploads",
            "POST /models/m/commit",
        ]
        c.set_alias("m", "prod", "1.0.0")
        seen.clear()
        assert c.load("m@prod") == {"w": 1}
        assert c.load("m@prod") == {"w": 1}
        prod = "GET /models/m/aliases/prod"
        # the artifact from the client's cache (read above); no /load asked for again
        assert seen == [f"{prod}/load", f"{prod}/state", f"{prod}/state"]


@pytest.fixture
def s3_server(s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path) -> Iterator[HttpServer]:
    """An in-process server on an S3 store (behind the fault proxy) with a SQLite index."""
    side = ServerSide(
        s3_bucket.url(), f"sqlite:///{tmp_path / 'index.db'}", storage_options=s3_options(fault_proxy.endpoint_url)
    )
    with running_server(side, tmp_path / "server", in_process=True) as server:
        yield server


def test_a_small_save_to_s3_puts_its_bytes_straight_at_their_key(
    s3_server: HttpServer, s3_bucket: S3Bucket, fault_proxy: FaultProxy
) -> None:
    """As a direct save does: one PUT of the final key under the claim, nothing staged, no copy."""
    with s3_server.client(cache_max_bytes=0) as c:
        c.save_version({"w": 0}, "warm")
        fault_proxy.requests.clear()
        fault_proxy.copies.clear()
        rec = c.save_version({"w": np.arange(50)}, "m")
        assert rec.artifact is not None and c.load("m")["w"].tolist() == list(range(50))
    paths = [(method, unquote(path).split("?")[0]) for method, path in fault_proxy.requests]
    assert [m for m, p in paths if p.endswith(rec.artifact.key)] == ["PUT", "GET"]  # the save's PUT, the load's GET
    assert not [p for _m, p in paths if f"/{TMP_DIR}/" in p] and fault_proxy.copies == []
    assert not [k for k in s3_bucket.object_keys() if f"/{TMP_DIR}/" in k] and s3_bucket.pending_uploads() == []


def test_a_one_request_save_to_s3_with_bytes_not_those_announced_leaves_nothing_after_gc(
    s3_server: HttpServer, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Swapped bytes, a record for other bytes, and a final PUT the store fails: no version, and
    no object at the final key (nor staged, nor a pending upload) once gc has run."""
    record, data = _client_record(tmp_path)
    key = record["artifact"]["key"]
    evil = bytes(b ^ 1 for b in data)
    other = json.loads(json.dumps(record))
    other["artifact"]["sha256"] = hashlib.sha256(evil).hexdigest()
    with httpx.Client(base_url=s3_server.url + API, headers={"Authorization": f"Bearer {s3_server.token}"}) as raw:
        swapped = raw.post("/models/m/save", **_one_request(record, evil, announced=data))
        mismatched = raw.post("/models/m/save", **_one_request(other, data))
        assert [swapped.status_code, mismatched.status_code] == [422, 422]
        assert {swapped.json()["error"]["class"], mismatched.json()["error"]["class"]} == {"IntegrityError"}
        fault_proxy.fault = lambda method, path: 500 if method == "PUT" and unquote(path).endswith(key) else None
        failed = raw.post("/models/m/save", **_one_request(record, data))
        assert failed.status_code >= 500 and [p for m, p, _s in fault_proxy.injected if m == "PUT"]
    fault_proxy.fault = lambda _method, _path: None
    with s3_server.direct() as d:
        d.gc(min_age_seconds=0)
        assert d.list_models() == [] and d.index.get("m", "1.0.0") is None
    assert not [k for k in s3_bucket.object_keys() if k.endswith(key) or f"/{TMP_DIR}/" in k]
    assert s3_bucket.pending_uploads() == []


def test_a_crashed_saves_leftover_at_the_key_does_not_fail_a_small_save_to_s3(
    s3_server: HttpServer, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """An object left at the usual key by a crashed save (no row names it, gc has not run): the
    upload never replaces it blindly; the failed attempt removes it, and the client signs again."""
    with _signed_client(s3_server, tmp_path, cache_max_bytes=0) as c:
        seen = _requests(c)
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/m/1.0.0/m_v1.0.0.joblib", Body=b"leftover")
        rec = c.save_version({"w": np.arange(7)}, "m")
        assert rec.version == "1.0.0" and seen == ["POST /models/m/save", "POST /models/m/commit"]
        assert c.load("m")["w"].tolist() == list(range(7))  # the signed bytes, not the leftover
    with s3_server.direct() as d:
        assert d.verify().ok
