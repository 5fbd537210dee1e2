"""``save_many``: many small versions in few transactions, each with everything ``save`` gives
a version; a bad item is named and leaves nothing behind; a batch killed at any step registers
nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, insert

from modelkeep import (
    BatchItemError,
    InvalidNameError,
    MetadataError,
    ModelPersistence,
    SaveItem,
    SerializationError,
    VersionExistsError,
)
from modelkeep.errors import SaveInProgressError
from modelkeep.index.claims import list_claims
from modelkeep.index.schema import claims
from modelkeep.layout import EVENT_DIR, sidecar_key
from modelkeep.maintenance import CORRUPT, MISSING, SIGNATURE

from ._workers import BATCH_PHASES, CTX, batch_items, save_many_then_die
from .conftest import IndexTarget


class Unpicklable:
    """An object no format can store (pickling it fails)."""

    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def _files(p: ModelPersistence) -> list[str]:
    """Every key in the store, except the event files (which a failed batch never writes)."""
    return sorted(k for k in p.store.list_keys("") if not k.startswith(EVENT_DIR))


def test_a_batch_saves_every_version_as_save_does(persistence: ModelPersistence) -> None:
    p = persistence
    weights = np.arange(12.0).reshape(3, 4)
    records = p.save_many(
        [
            {"model": {"w": weights}, "model_name": "cust-a", "auc": 0.91, "dataset": "v7"},
            SaveItem({"w": weights + 1}, "cust-b", "2.0.0", {"auc": 0.82}),
            {"model": {"w": weights + 2}, "model_name": "cust-a", "metadata": {"auc": 0.93}},
            {"model": {"w": weights}, "model_name": "cust-c", "created_at": "2025-01-02T03:04:05+00:00"},
        ]
    )
    # In the order given, with versions allocated as save() would (the same model twice: two patches).
    assert [(r.model_name, r.version) for r in records] == [
        ("cust-a", "1.0.0"),
        ("cust-b", "2.0.0"),
        ("cust-a", "1.0.1"),
        ("cust-c", "1.0.0"),
    ]
    assert records[3].created_at == "2025-01-02T03:04:05+00:00"
    assert p.list_versions("cust-a") == ["1.0.0", "1.0.1"]
    np.testing.assert_array_equal(p.load("cust-a", "1.0.1")["w"], weights + 2)
    np.testing.assert_array_equal(p.load("cust-b", "2.0.0")["w"], weights + 1)
    # Custom metadata is searchable, the record is signed, the sidecar and history are written.
    assert [(r.model_name, r.version) for r in p.search_versions("auc > 0.9", order_by="-auc").items] == [
        ("cust-a", "1.0.1"),
        ("cust-a", "1.0.0"),
    ]
    assert p.get_version("cust-a", "1.0.0").metadata["dataset"] == "v7"
    for r in records:
        assert p.signature_status(r.model_name, r.version).trusted
        assert p.store.exists(sidecar_key(r.model_name, r.version))
        assert [(e.action, e.version) for e in p.history(r.model_name) if e.version == r.version] == [
            ("save", r.version)
        ]
    # Identical bytes are stored once (cust-c's model equals cust-a 1.0.0's).
    assert records[3].artifact is not None and records[0].artifact is not None
    assert records[3].artifact.sha256 == records[0].artifact.sha256
    assert p.verify().ok
    # The store alone rebuilds the same index (sidecars and event files were written).
    assert p.reindex() == 4
    assert p.list_versions("cust-a") == ["1.0.0", "1.0.1"]
    assert [s.name for s in p.model_summaries()] == ["cust-a", "cust-b", "cust-c"]


def test_a_batch_commits_in_a_few_transactions(persistence: ModelPersistence) -> None:
    p = persistence
    p.save_many(batch_items(2))  # the registry exists and has its first rows
    commits: list[str] = []

    def count(conn: Any) -> None:
        commits.append("commit")

    event.listen(p.index.engine, "commit", count)
    try:
        p.save_many(batch_items(40)[2:], batch_size=19)
    finally:
        event.remove(p.index.engine, "commit", count)
    # Two batches: each one claim transaction and one commit of its rows (reads commit nothing).
    assert len(p.model_summaries()) == 40
    assert len(commits) <= 2 * 2 + 2, commits


def test_a_batch_allocates_versions_as_saves_one_after_another_would(persistence: ModelPersistence) -> None:
    p = persistence
    p.save({"w": 0}, "epochs", "1.0.0")
    # Another writer, alive on another machine, holds 1.0.1: automatic versions skip it.
    with p.index.engine.begin() as conn:
        conn.execute(
            insert(claims),
            {
                "model_name": "epochs",
                "version": "1.0.1",
                "token": "f" * 32,
                "owner": "elsewhere/pid:[1]/42/1",
                "claimed_at": "2026-01-01T00:00:00+00:00",
                "purpose": "save",
            },
        )
    wanted: list[str | None] = [None, None, "5.0.0", None, "2.0.0", None]
    records = p.save_many([{"model": {"w": i}, "model_name": "epochs", "version": v} for i, v in enumerate(wanted)])
    assert [r.version for r in records] == ["1.0.2", "1.0.3", "5.0.0", "5.0.1", "2.0.0", "5.0.2"]
    # The other writer's claim still holds its version, which the batch left alone.
    with pytest.raises(SaveInProgressError, match=r"version '1\.0\.1' is in progress .*pid 42 on elsewhere"):
        p.save_many([{"model": {"w": 9}, "model_name": "epochs", "version": "1.0.1"}])
    assert [c.version for c in list_claims(p.index)] == ["1.0.1"]


def test_a_batch_reads_each_models_claims_once(tmp_path: Path) -> None:
    """n versions of one model in a batch: one read of that model's claims, not one per version
    (which made a batch of n versions of one model cost n²/2 claim rows and process checks)."""
    p = ModelPersistence(models_dir=tmp_path / "models")
    p.save({"w": 0}, "epochs")
    sent: list[str] = []

    def on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.set_trace_callback(sent.append)

    p.index.engine.pool.dispose()
    event.listen(p.index.engine, "connect", on_connect)
    try:
        records = p.save_many([{"model": {"w": i}, "model_name": "epochs"} for i in range(60)])
    finally:
        event.remove(p.index.engine, "connect", on_connect)
    assert [r.version for r in records] == [f"1.0.{i}" for i in range(1, 61)]
    claim_reads = [s for s in sent if s.lstrip().startswith("SELECT") and "modelkeep_claims" in s]
    # take_many reads the model's claims once; check_many checks the batch's tokens in one query.
    assert len(claim_reads) <= 3, claim_reads


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        ({"model": {"w": 1}, "model_name": "../escape"}, InvalidNameError, "model name"),
        ({"model": {"w": 1}}, MetadataError, "missing 'model_name'"),
        ("not an item", MetadataError, "expected a SaveItem or a mapping"),
        ({"model": Unpicklable(), "model_name": "cust-bad"}, SerializationError, "refuses to be pickled"),
        ({"model": {"w": 1}, "model_name": "cust-001", "version": "1.0.0"}, VersionExistsError, "also items[1]"),
        ({"model": {"w": 1}, "model_name": "taken", "version": "1.0.0"}, VersionExistsError, "already exists"),
    ],
    ids=["bad-name", "no-name", "not-a-mapping", "unpicklable", "twice-in-batch", "already-saved"],
)
def test_a_bad_item_is_named_and_nothing_of_its_batch_is_written(
    persistence: ModelPersistence, bad: Any, error: type[Exception], words: str
) -> None:
    p = persistence
    p.save({"w": 0}, "taken", "1.0.0")
    before = _files(p)
    items: list[Any] = [
        {"model": {"w": i}, "model_name": f"cust-{i:03d}", "version": "1.0.0" if i == 1 else None} for i in range(5)
    ]
    items[3] = bad
    with pytest.raises(error) as caught:
        p.save_many(items)
    assert str(caught.value).startswith("items[3] ("), str(caught.value)
    assert words in str(caught.value)
    assert caught.value.item == 3  # type: ignore[attr-defined]
    # Nothing registered, no file left (staged files and sidecars included), no claim held.
    assert p.list_models() == ["taken"]
    assert _files(p) == before
    assert list_claims(p.index) == []
    # The same batch without the bad item goes through.
    del items[3]
    assert [r.model_name for r in p.save_many(items)] == ["cust-000", "cust-001", "cust-002", "cust-004"]


def test_a_later_batch_failing_keeps_the_earlier_ones_whole(persistence: ModelPersistence) -> None:
    p = persistence
    items: list[Any] = batch_items(6)
    items[4] = {"model": Unpicklable(), "model_name": "batch-004"}
    with pytest.raises(SerializationError) as caught:
        p.save_many(items, batch_size=3)
    assert caught.value.item == 4  # type: ignore[attr-defined]
    assert [r.model_name for r in caught.value.registered] == ["batch-000", "batch-001", "batch-002"]  # type: ignore[attr-defined]
    assert p.list_models() == ["batch-000", "batch-001", "batch-002"]
    assert p.verify().ok


def test_batch_size_and_metadata_are_checked(persistence: ModelPersistence) -> None:
    with pytest.raises(MetadataError, match="batch_size must be a positive integer"):
        persistence.save_many(batch_items(1), batch_size=0)
    with pytest.raises(MetadataError, match=r"^items\[0\] \(model 'ok'\): 'metadata' must be a mapping"):
        persistence.save_many([{"model": 1, "model_name": "ok", "metadata": 5}])
    assert persistence.save_many([]) == []


def test_an_unexpected_failure_of_an_item_is_a_batch_item_error(persistence: ModelPersistence) -> None:
    class NotReallyAMapping:
        def keys(self) -> list[str]:
            return ["model"]

        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("broken mapping")

    with pytest.raises(BatchItemError, match=r"^items\[0\] \(model None\): broken mapping") as caught:
        persistence.save_many([NotReallyAMapping()])
    assert isinstance(caught.value, ValueError) and caught.value.item == 0


@pytest.mark.parametrize("phase", BATCH_PHASES)
def test_a_batch_killed_mid_way_registers_nothing(index_target: IndexTarget, tmp_path: Path, phase: str) -> None:
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        p.save({"w": 0}, "survivor", "1.0.0")
    proc = CTX.Process(target=save_many_then_die, args=(str(models), index_target.url, index_target.schema, phase, 12))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode

    with index_target.persistence(models) as p:
        assert p.list_models() == ["survivor"], "a killed batch registered a version"
        report = p.verify()
        assert report.of_kind(MISSING, CORRUPT, SIGNATURE) == [], report.to_dict()
        if phase != "claimed":
            assert report.problems, "the killed batch's files should show up as leftovers"
        # The dead process's claims do not block the same batch now.
        records = p.save_many(batch_items(12))
        assert [r.version for r in records] == ["1.0.0"] * 12
        assert p.load("batch-007", "1.0.0")["seq"] == 7
        p.gc(min_age_seconds=0)
        final = p.verify()
        assert final.ok, final.to_dict()
        assert p.store.list_keys(".tmp") == []
        assert p.reindex() == 13


def test_a_batch_on_s3_uploads_on_threads_and_loads_back(s3_bucket: Any, tmp_path: Path) -> None:
    """The staging threads share one S3 store: every artifact and sidecar lands whole."""
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_bucket.storage_options,
    )
    records = p.save_many(batch_items(10))
    assert p.list_models() == [f"batch-{i:03d}" for i in range(10)]
    for r in records:
        assert p.load(r.model_name, r.version)["seq"] == int(r.model_name[-3:])
        assert p.store.exists(sidecar_key(r.model_name, r.version))
    assert p.verify().ok
    assert not [k for k in s3_bucket.object_keys() if "/.tmp/" in k]
    p.close()
