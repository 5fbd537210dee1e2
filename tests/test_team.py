"""The team registry: PostgreSQL for the index, S3 (moto on loopback) for the artifacts.

Covers the round trip, configuration (YAML, environment, the remote-without-
shared-index refusal), 8 processes on 2 "machines" saving at once, an S3
failure mid-upload, and PostgreSQL connections dropped mid-save.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, event, text

from modelkeep import ModelPersistence
from modelkeep.config import load_settings
from modelkeep.errors import ClaimLostError, ConfigError, StorageError
from modelkeep.index.claims import list_claims
from modelkeep.index.sql import normalize_url
from modelkeep.storage import ArtifactStore
from tests._workers import run_in_processes, save_team_versions, team_model
from tests.s3_server import FaultProxy, S3Bucket, s3_options

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

PG_URL = os.environ.get("MODELKEEP_TEST_POSTGRES_URL")
ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@pytest.fixture
def team(s3_bucket: S3Bucket, pg_schema: str) -> Iterator[ModelPersistence]:
    """A ModelPersistence on PostgreSQL + S3."""
    with team_persistence(s3_bucket, pg_schema) as p:
        p.ensure_registry()
        yield p


def team_persistence(bucket: S3Bucket, schema: str, endpoint_url: str | None = None, **kw: Any) -> ModelPersistence:
    assert PG_URL
    return ModelPersistence(
        models_dir=bucket.url(),
        registry_url=PG_URL,
        storage_options=s3_options(endpoint_url or bucket.endpoint_url),
        index_schema=schema,
        **kw,
    )


def big_model(mib: int, seed: int = 0) -> dict[str, Any]:
    return {"seed": seed, "weights": np.random.default_rng(seed).integers(0, 255, mib * MiB, dtype=np.uint8)}


# -- round trip and configuration -------------------------------------------------------
def test_save_list_load_delete_round_trip(
    team: ModelPersistence, s3_bucket: S3Bucket, classifier: Any, iris_data: Any
) -> None:
    X, _ = iris_data
    path = team.save(classifier, "iris", accuracy=0.97)
    assert path == f"{s3_bucket.url()}/iris/1.0.0/iris_v1.0.0.joblib"  # a URL string, not a mangled Path
    team.save(classifier, "iris", accuracy=0.98)
    assert team.list_models() == ["iris"]
    assert team.list_versions("iris") == ["1.0.0", "1.0.1"]
    loaded, meta = team.load("iris", return_metadata=True)
    assert meta.version == "1.0.1" and meta.metadata["accuracy"] == 0.98
    assert (loaded.predict(X) == classifier.predict(X)).all()
    assert team.model_summaries()[0].version_count == 2
    keys = s3_bucket.object_keys()
    assert [k for k in keys if not k.startswith("models/.events/")] == [
        "models/iris/1.0.0/iris_v1.0.0.joblib",
        "models/iris/1.0.0/iris_v1.0.0_metadata.json",
        "models/iris/1.0.1/iris_v1.0.1.joblib",
        "models/iris/1.0.1/iris_v1.0.1_metadata.json",
    ]
    assert len([k for k in keys if k.startswith("models/.events/iris/")]) == 2  # one event file per save
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="models/iris/1.0.0/iris_v1.0.0_metadata.json")["Body"]
    sidecar = json.loads(body.read())
    assert sidecar["artifact"]["sha256"] == team.get_version("iris", "1.0.0").artifact.sha256  # type: ignore[union-attr]
    team.delete("iris", "1.0.0")
    assert team.list_versions("iris") == ["1.0.1"]
    team.purge("iris", "1.0.0")
    assert [k for k in s3_bucket.object_keys() if "/1.0.0/" in k] == []


def test_large_artifact_is_uploaded_in_parts_with_progress(
    s3_bucket: S3Bucket, pg_schema: str, fault_proxy: FaultProxy
) -> None:
    events: list[tuple[str, int | None, int]] = []

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done = [0]
        yield lambda n: done.__setitem__(0, done[0] + n)
        events.append((description, total, done[0]))

    model = big_model(20)
    with team_persistence(s3_bucket, pg_schema, fault_proxy.endpoint_url, compress=False, progress=progress) as p:
        rec = p.save_version(model, "big")
        assert rec.artifact is not None and rec.artifact.size > 20 * MiB
        parts = [path for m, path in fault_proxy.requests if m == "PUT" and "partNumber=" in path]
        # parts of at least 8 MiB, uploaded while joblib was still writing (a whole 16 MiB chunk
        # of joblib's goes up as one part, uncopied: storage/s3.py ParallelUpload)
        assert len(parts) >= 2
        loaded = p.load("big")
    assert np.array_equal(loaded["weights"], model["weights"])
    assert events == [("saving big", None, rec.artifact.size), ("loading big", rec.artifact.size, rec.artifact.size)]


def test_remote_models_dir_needs_a_shared_index_or_an_explicit_local_one(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="remote but no registry_url"):
        ModelPersistence(models_dir=s3_bucket.url(), storage_options=s3_bucket.storage_options)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"persistence:\n  models_dir: {s3_bucket.url()}\n")
    with pytest.raises(ConfigError, match="registry_url"):
        ModelPersistence.from_settings(load_settings(cfg, storage_options=s3_bucket.storage_options))
    # the per-machine index is possible, but only when asked for by name
    with ModelPersistence(
        models_dir=s3_bucket.url(), registry_path=tmp_path / "idx", storage_options=s3_bucket.storage_options
    ) as p:
        p.save({"a": 1}, "solo")
        assert p.index.dialect == "sqlite" and (tmp_path / "idx" / "registry.db").exists()
        assert p.load("solo") == {"a": 1}


def test_team_config_from_yaml_and_environment(
    s3_bucket: S3Bucket, pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's team setup: YAML for the URLs, environment for the endpoint (and credentials)."""
    assert PG_URL
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"  # the libpq way to put the tables in a schema
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "persistence:\n"
        f"  registry_url: {url}\n"
        f"  models_dir: {s3_bucket.url('team')}\n"
        "  storage_options:\n"
        "    client_kwargs:\n"
        "      endpoint_url: http://wrong.invalid:1\n"
    )
    monkeypatch.setenv("MODELKEEP_STORAGE_OPTIONS", json.dumps(s3_bucket.storage_options))  # env beats YAML
    with ModelPersistence.from_settings(load_settings(cfg)) as p:
        p.save({"w": [1, 2, 3]}, "cfg-model", owner="team")
        assert p.load("cfg-model") == {"w": [1, 2, 3]}
        assert p.index.dialect == "postgresql"
    assert "team/cfg-model/1.0.0/cfg-model_v1.0.0.joblib" in s3_bucket.object_keys()
    engine = create_engine(normalize_url(PG_URL))
    with engine.connect() as conn:
        assert conn.execute(text(f'SELECT count(*) FROM "{pg_schema}".modelkeep_versions')).scalar() == 1
    engine.dispose()


# -- concurrency --------------------------------------------------------------------------
def test_eight_processes_on_two_machines_save_distinct_loadable_versions(
    team: ModelPersistence, s3_bucket: S3Bucket, pg_schema: str, tmp_path: Path
) -> None:
    assert PG_URL
    machines = [str(tmp_path / ("machine-a" if worker < 4 else "machine-b")) for worker in range(8)]
    results = run_in_processes(
        save_team_versions,
        [(s3_bucket.url(), PG_URL, pg_schema, worker, 3, s3_bucket.storage_options) for worker in range(8)],
        machines=machines,
        timeout=120,
    )
    saved = [(worker, s["i"], s["version"], s["sha256"]) for worker, done in results.items() for s in done]
    versions = [v for _, _, v, _ in saved]
    assert len(versions) == 24 and len(set(versions)) == 24
    assert team.list_versions("shared") == [f"1.0.{i}" for i in range(24)]
    for worker, i, version, sha in saved:
        model, meta = team.load("shared", version, return_metadata=True)
        assert meta.artifact is not None and meta.artifact.sha256 == sha
        assert meta.metadata["worker"] == worker and model["i"] == i
        assert np.array_equal(model["weights"], team_model(worker, i)["weights"])
    assert {m.metadata["cwd"].rsplit("/", 1)[-1] for m in team.list_version_records("shared")} == {
        "machine-a",
        "machine-b",
    }
    assert not [k for k in s3_bucket.object_keys() if "/.tmp/" in k]  # every staged upload was committed and removed


# -- S3 failures -----------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500 on a part", "connection dropped on a part", "500 on commit"])
def test_s3_failure_mid_save_registers_nothing(
    fault: str, s3_bucket: S3Bucket, pg_schema: str, fault_proxy: FaultProxy
) -> None:
    def inject(method: str, path: str) -> int | None:
        if fault == "500 on commit":
            return 500 if method == "PUT" and path.split("?")[0].endswith(".joblib") else None
        if method == "PUT" and "partNumber=2" in path:
            return 500 if fault == "500 on a part" else 0  # 0: close the connection without an answer
        return None

    with team_persistence(s3_bucket, pg_schema, fault_proxy.endpoint_url, compress=False) as p:
        p.store.fs.retries = 2  # s3fs's own retries on dropped connections (5 by default), for speed
        fault_proxy.fault = inject
        with pytest.raises(StorageError):
            p.save(big_model(12), "fragile")
        assert fault_proxy.injected
        assert p.list_models() == []
        assert p.get_metadata("fragile") is None
        assert [k for k in s3_bucket.object_keys() if k.endswith(".joblib") or "/.tmp/" in k] == []
        assert s3_bucket.pending_uploads() == []
        fault_proxy.fault = lambda _m, _p: None
        rec = p.save_version(big_model(12, seed=1), "fragile")
        assert rec.version == "1.0.0"
        assert p.load("fragile")["seed"] == 1


# -- PostgreSQL connection drops ------------------------------------------------------------
def _admin() -> Any:
    import psycopg

    assert PG_URL
    return psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _lock_waiter(admin: Any, model_name: str, exclude: set[int], timeout: float = 20) -> int:
    """The pid of the backend waiting for ``model_name``'s write lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND ((classid::bigint << 32) | objid::bigint) = hashtext(%s)::bigint AND pid <> ALL(%s)",
            ("modelkeep:" + model_name, list(exclude)),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError(f"no backend is waiting for the lock of {model_name!r}")


def _save_in_thread(p: ModelPersistence, model_name: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["record"] = p.save_version({"v": 1}, model_name)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("drops", [1, 4])
def test_connection_dropped_while_waiting_for_the_lock(
    drops: int, team: ModelPersistence, caplog: pytest.LogCaptureFixture
) -> None:
    """Drops before anything is written are retried on a new connection (3 times); a 4th one fails cleanly."""
    name = f"locked-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.WARNING, logger="modelkeep")
    with _admin() as admin:
        admin.execute("SELECT pg_advisory_lock(hashtext(%s))", ("modelkeep:" + name,))
        thread, outcome = _save_in_thread(team, name)
        killed: set[int] = set()
        for _ in range(drops):
            pid = _lock_waiter(admin, name, killed)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.add(pid)
        if drops == 1:
            _lock_waiter(admin, name, killed)  # the retry is queued behind our lock again
        admin.execute("SELECT pg_advisory_unlock(hashtext(%s))", ("modelkeep:" + name,))
        thread.join(30)
    assert any("retrying on a new connection" in r.getMessage() for r in caplog.records)
    if drops == 1:
        assert outcome["record"].version == "1.0.0"
        assert team.load(name) == {"v": 1}
    else:
        assert isinstance(outcome["error"], StorageError) and "lost the connection" in str(outcome["error"])
        assert team.list_versions(name) == []
        assert list_claims(team.index) == []
        assert team.save_version({"v": 2}, name).version == "1.0.0"  # the pool recovered


def test_a_save_whose_claim_was_released_registers_nothing_and_touches_nothing(
    team: ModelPersistence, s3_bucket: S3Bucket, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence: A's claim is released under it (as gc does with a stale claim) and B saves the
    same version; A then stops before writing its artifact, and B's version stays whole."""
    other = team_persistence(s3_bucket, pg_schema)
    store_class = type(team.store)  # the backend's own write_bytes (object stores override it)
    write_bytes = store_class.write_bytes
    b_records: list[Any] = []

    def hooked(self: ArtifactStore, key: str, data: bytes) -> None:
        write_bytes(self, key, data)
        if self is team.store and key.endswith("_metadata.json") and not b_records:
            with _admin() as admin:
                admin.execute(f'DELETE FROM "{pg_schema}".modelkeep_claims')
            b_records.append(other.save_version({"writer": "B"}, "fenced", "1.0.0"))

    monkeypatch.setattr(store_class, "write_bytes", hooked)
    with pytest.raises(ClaimLostError, match="released"):
        team.save_version({"writer": "A"}, "fenced", "1.0.0")
    monkeypatch.undo()
    assert team.list_versions("fenced") == ["1.0.0"]
    assert team.load("fenced", "1.0.0") == {"writer": "B"}
    assert team.verify().ok, team.verify().to_dict()
    other.close()


def test_connections_dropped_between_saves_are_replaced(team: ModelPersistence) -> None:
    pids: set[int] = set()
    event.listen(team.index.engine.pool, "checkout", lambda dbapi, _rec, _proxy: pids.add(dbapi.info.backend_pid))
    team.save({"v": 1}, "between")
    assert pids
    with _admin() as admin:
        for pid in pids:  # every pooled connection of this registry
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert team.list_versions("between") == ["1.0.0"]  # pool_pre_ping swaps in a live connection
    team.save({"v": 2}, "between")
    assert team.load("between") == {"v": 2}
