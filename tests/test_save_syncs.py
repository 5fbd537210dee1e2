"""The durable writes of a save on the embedded default (SQLite + local folder), and why the
one it no longer waits for is safe to skip.

A save makes four syncs: the staged artifact and the sidecar are each ``fsync``'ed, their
version folder is ``fsync``'ed once for both renames, and the row's commit syncs the WAL.
The write claim commits with ``synchronous = NORMAL`` (no WAL sync): it survives the crash
of its process, and a power cut, which may undo it, also ends the process it fenced for.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelkeep import ModelPersistence, VersionExistsError
from modelkeep.index.claims import list_claims
from modelkeep.maintenance import CORRUPT, MISSING, ORPHANED, SIGNATURE

from ._workers import CTX, payload, save_then_die


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelPersistence]:
    p = ModelPersistence(models_dir=tmp_path / "models")
    p.ensure_registry()
    yield p
    p.close()


def _count_syncs(p: ModelPersistence, monkeypatch: pytest.MonkeyPatch, model: Any) -> Counter[str]:
    """Save ``model`` once and count file and folder fsyncs and commits by their sync level."""
    counts: Counter[str] = Counter()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        counts["folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"] += 1
        real_fsync(fd)

    def on_commit(conn: Any) -> None:
        level = conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
        counts["commit FULL" if level == 2 else f"commit level {level}"] += 1

    monkeypatch.setattr(os, "fsync", fsync)
    event.listen(p.index.engine, "commit", on_commit)
    try:
        p.save(model, "counted")
    finally:
        event.remove(p.index.engine, "commit", on_commit)
        monkeypatch.setattr(os, "fsync", real_fsync)
    return counts


def test_a_small_save_makes_four_syncs(registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.save(payload(0, 0), "counted")  # the model's folder and the WAL exist from here on
    counts = _count_syncs(registry, monkeypatch, payload(0, 1))
    assert counts == {"file": 2, "folder": 1, "commit FULL": 1, "commit level 1": 1}, counts
    # Every pooled connection is back at FULL: the claim's relaxed level never leaks to a row.
    conns = [registry.index.engine.raw_connection() for _ in range(2)]
    try:
        assert [c.cursor().execute("PRAGMA synchronous").fetchone()[0] for c in conns] == [2, 2]
    finally:
        for c in conns:
            c.close()


def test_the_folder_sync_runs_beside_the_row_and_ends_before_its_commit(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version folder's fsync runs on a helper thread while the row's statements are sent,
    and the row's COMMIT waits for it: slowed down, it still ends before the commit that names
    the files, so a power cut can never leave a committed row whose files' renames are undone."""
    registry.save(payload(0, 0), "counted")
    order: list[str] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            time.sleep(0.3)  # a slow disk: the row's statements are long sent by now
            order.append(f"folder synced on {threading.current_thread().name.split('_')[0]}")

    def on_statement(statement: str) -> None:  # the driver's trace: the row's statements skip SQLAlchemy
        if statement.startswith("INSERT INTO modelkeep_history"):
            order.append("history row sent")

    def on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.set_trace_callback(on_statement)

    def on_commit(conn: Any) -> None:
        if conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] == 2:
            order.append("row committed")

    monkeypatch.setattr(os, "fsync", slow_fsync)
    registry.index.engine.pool.dispose()  # the save's connection is a new one, traced
    event.listen(registry.index.engine, "connect", on_connect)
    event.listen(registry.index.engine, "commit", on_commit)
    try:
        registry.save(payload(0, 1), "counted")
    finally:
        event.remove(registry.index.engine, "connect", on_connect)
        event.remove(registry.index.engine, "commit", on_commit)
        registry.index.engine.pool.dispose()
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert order == ["history row sent", "folder synced on modelkeep-sync", "row committed"], order


def test_a_claim_that_fails_leaves_its_connection_at_full(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim transaction raises (the version exists): its connection goes back to the pool
    at FULL, and the next save's row commit still syncs the WAL."""
    registry.save(payload(0, 0), "counted", "1.0.0")
    with pytest.raises(VersionExistsError), registry.index.claim("counted", "1.0.0"):
        pass
    counts = _count_syncs(registry, monkeypatch, payload(0, 2))
    assert counts == {"file": 2, "folder": 1, "commit FULL": 1, "commit level 1": 1}, counts


def _kill_after_artifact(models: Path, url: str) -> None:
    proc = CTX.Process(target=save_then_die, args=(str(models), url, None, "commit", None))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL


def test_a_claim_survives_the_crash_of_its_process(tmp_path: Path) -> None:
    """synchronous=NORMAL in WAL mode: a committed claim outlives a SIGKILL of its writer."""
    models, url = tmp_path / "models", f"sqlite:///{tmp_path / 'registry.db'}"
    with ModelPersistence(models_dir=models, registry_url=url) as p:
        p.save(payload(0, 0), "victim")
    _kill_after_artifact(models, url)
    with ModelPersistence(models_dir=models, registry_url=url) as p:
        held = list_claims(p.index, "victim")
        assert [(c.model_name, c.version) for c in held] == [("victim", "1.0.1")]
        # The next writer sees that its process is gone and takes the version.
        assert p.save(payload(0, 2), "victim") == models / "victim" / "1.0.1" / "victim_v1.0.1.joblib"
        assert p.load("victim", "1.0.1")["seq"] == 2
        assert list_claims(p.index) == []


def test_a_claim_undone_by_a_power_cut_leaves_only_orphans(tmp_path: Path) -> None:
    """The worst a power cut can do to an unsynced claim: the writer placed its sidecar and
    artifact (both synced) and the claim is gone (its WAL frames never reached the disk).
    Nothing registered points at those files, verify calls them orphans, a new save takes the
    version over, and gc leaves a clean registry."""
    models, url = tmp_path / "models", f"sqlite:///{tmp_path / 'registry.db'}"
    with ModelPersistence(models_dir=models, registry_url=url) as p:
        p.save(payload(0, 0), "victim")
    _kill_after_artifact(models, url)
    # The power cut: the claim's commit is undone, the files that were fsync'ed stay.
    with sqlite3.connect(tmp_path / "registry.db") as db:
        assert db.execute("DELETE FROM modelkeep_claims").rowcount == 1
    left = sorted(path.name for path in (models / "victim" / "1.0.1").iterdir())
    assert left == ["victim_v1.0.1.joblib", "victim_v1.0.1_metadata.json"]

    with ModelPersistence(models_dir=models, registry_url=url) as p:
        assert p.list_versions("victim") == ["1.0.0"]
        report = p.verify()
        assert report.of_kind(MISSING, CORRUPT, SIGNATURE) == []
        assert {pr.kind for pr in report.problems} == {ORPHANED}
        assert p.save(payload(0, 3), "victim") == models / "victim" / "1.0.1" / "victim_v1.0.1.joblib"
        assert p.load("victim", "1.0.1")["seq"] == 3
        p.save(payload(0, 4), "victim")
        p.gc(min_age_seconds=0)
        final = p.verify()
        assert final.ok, final.to_dict()
        assert [p.load("victim", v)["seq"] for v in p.list_versions("victim")] == [0, 3, 4]
        assert p.reindex() == 3


def test_a_duplicate_staged_copy_is_unlinked_after_the_row_commits(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of bytes already stored links them and drops its own staged copy, but only once
    its row is committed: unlinking a large file journals the freeing of its blocks, and the
    folder's fsync and the row's WAL sync would wait for that journal commit. The copy is
    still removed by the end of the save's background work."""
    from modelkeep.storage import local

    model = payload(1, 2, nbytes=(8 << 20) + 1)  # large enough for the background unlink
    registry.save(model, "dup", "1.0.0")
    order: list[str] = []
    real_unlink = local._unlink_quietly

    def unlink(path: str) -> None:
        order.append("staged copy unlinked")
        real_unlink(path)

    def on_commit(conn: Any) -> None:
        if conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] == 2:
            order.append("row committed")

    monkeypatch.setattr(local, "_unlink_quietly", unlink)
    event.listen(registry.index.engine, "commit", on_commit)
    try:
        registry.save(model, "dup", "2.0.0")
        local.wait_for_background_unlinks()
    finally:
        event.remove(registry.index.engine, "commit", on_commit)
    assert order == ["row committed", "staged copy unlinked"], order
    assert registry.store.list_keys(".tmp") == []
    first, second = (registry.get_metadata("dup", v).artifact for v in ("1.0.0", "2.0.0"))  # type: ignore[union-attr]
    assert first is not None and second is not None
    assert os.path.samefile(registry.store.full_path(first.key), registry.store.full_path(second.key))


def test_a_copied_version_s_folder_is_synced_before_its_row_commits(
    registry: ModelPersistence, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``copy_registry`` into a local registry puts each version's files in place as a save does
    (one folder ``fsync`` for both renames, on a helper thread): the copied row's COMMIT waits for
    it, so a power cut cannot leave a committed row whose renames are undone."""
    from modelkeep.copying import copy_registry

    registry.save(payload(0, 0), "copied")
    order: list[str] = []
    real_fsync = os.fsync

    with ModelPersistence(models_dir=tmp_path / "dest") as dest:
        dest.ensure_registry()

        def slow_fsync(fd: int) -> None:
            real_fsync(fd)
            if stat.S_ISDIR(os.fstat(fd).st_mode) and threading.current_thread() is not threading.main_thread():
                time.sleep(0.3)  # a slow disk: the copied row's statements are long sent by now
                order.append("folder synced")

        def on_commit(conn: Any) -> None:
            level = conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
            order.append("row committed" if level == 2 else f"commit level {level}")

        monkeypatch.setattr(os, "fsync", slow_fsync)
        event.listen(dest.index.engine, "commit", on_commit)
        try:
            copy_registry(registry, dest, with_aliases=False)
        finally:
            event.remove(dest.index.engine, "commit", on_commit)
            monkeypatch.setattr(os, "fsync", real_fsync)
        # the claim (no WAL sync), the folder's fsync, then the copied row's commit (and the
        # history it carries, committed after it)
        assert order[:3] == ["commit level 1", "folder synced", "row committed"], order
        assert dest.load("copied", "1.0.0")["seq"] == 0
