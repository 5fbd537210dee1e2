"""Fault injection (issue 11): the database connection dies at each step of a save, on SQLite and
PostgreSQL, while another writer saves to the same model; and 8 writers under random kills.

After every kill, each save that reported success loads and verifies, nothing reported saved is
missing, no sidecar is missing, and no write claim is left behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelkeep import ModelPersistence
from modelkeep.errors import CommitUnknownError, ConnectionLostError, ModelKeepError, SaveInProgressError, StorageError
from modelkeep.index import claims as claims_mod
from modelkeep.index.claims import VersionClaim, list_claims
from modelkeep.index.sql import Reservation
from modelkeep.maintenance import CLAIM, CORRUPT, MISSING, SIDECAR
from modelkeep.storage import ArtifactStore, HashingWriter, StagedArtifact

from ._faults import ConnectionKiller, model_for
from .conftest import PG_URL, IndexTarget

ROOT = Path(__file__).resolve().parent.parent

#: Where the saver's connection is killed, in the order a save passes them.
STEPS = (
    "before-claim",  # the reservation: nothing claimed yet
    "after-claim",  # claimed, before any byte under the version's folder
    "upload",  # half-way through writing the staged artifact
    "sidecar",  # sidecar written, artifact not yet in place (the issue's reproduction)
    "commit",  # the COMMIT of the version row never reaches the server
    "commit-ack-lost",  # the COMMIT went through, but its answer was lost with the connection
    "cleanup",  # the save failed, and the connection dies while it cleans up
)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A private PostgreSQL schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip("MODELKEEP_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    from sqlalchemy import create_engine, text

    from modelkeep.index.sql import normalize_url

    schema = f"mk_fault_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        engine = create_engine(normalize_url(PG_URL))
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _admin_url() -> str | None:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://") if PG_URL else None


class Saver:
    """Writer B: a separate registry object (own engine) that saves whole versions in a thread."""

    def __init__(self, target: IndexTarget, models: Path) -> None:
        self.p = target.persistence(models)
        self.outcomes: list[tuple[str | None, Any]] = []

    def save_now(self, model_name: str, version: str | None, seq: int) -> None:
        """Run one complete save to its end (in another thread, as another process would)."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["record"] = self.p.save_version(
                    model_for(2, seq), model_name, version, overwrite=version is not None
                )
            except ModelKeepError as exc:
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "writer B hung"
        self.outcomes.append((version, result.get("record", result.get("error"))))


def _install(
    step: str, a: ModelPersistence, killer: ConnectionKiller, fire: Callable[[], None], mp: pytest.MonkeyPatch
) -> None:
    """Make A's save call ``fire`` (kill A's connections, let B save) once, at ``step``."""
    if step == "before-claim":
        take = claims_mod.take

        def hooked_take(index: Any, *args: Any, **kwargs: Any) -> Any:
            if index is a.index:
                fire()
            return take(index, *args, **kwargs)

        mp.setattr(claims_mod, "take", hooked_take)
    elif step == "after-claim":
        check = VersionClaim.check

        def hooked_check(self: VersionClaim, **options: Any) -> None:
            if self.index is a.index:
                fire()
            check(self, **options)

        mp.setattr(VersionClaim, "check", hooked_check)
    elif step == "upload":
        write = HashingWriter.write
        seen: list[HashingWriter] = []

        def hooked_write(self: HashingWriter, data: Any) -> int:
            n = write(self, data)
            if not seen:
                seen.append(self)
            if self is seen[0]:
                fire()
            return n

        mp.setattr(HashingWriter, "write", hooked_write)
    elif step == "sidecar":
        store_class = type(a.store)  # the backend's own write_bytes (object stores override it)
        write_bytes = store_class.write_bytes

        def hooked_write_bytes(self: ArtifactStore, key: str, data: bytes) -> None:
            write_bytes(self, key, data)
            if self is a.store and key.endswith("_metadata.json"):
                fire()

        mp.setattr(store_class, "write_bytes", hooked_write_bytes)
    elif step in ("commit", "commit-ack-lost"):
        in_put: list[bool] = []
        put = Reservation.put

        def hooked_put(self: Reservation, record: Any) -> None:
            put(self, record)
            if self._index is a.index:
                in_put.append(True)

        mp.setattr(Reservation, "put", hooked_put)
        if step == "commit":

            def before_commit(_conn: Any) -> None:
                if in_put:
                    in_put.clear()
                    fire()

            event.listen(a.index.engine, "commit", before_commit)
        else:
            dialect = a.index.engine.dialect
            do_commit = dialect.do_commit

            def commit_then_drop(dbapi_conn: Any) -> None:
                do_commit(dbapi_conn)
                if in_put:
                    in_put.clear()
                    fire()
                    killer.raise_disconnect(dbapi_conn)

            mp.setattr(dialect, "do_commit", commit_then_drop)
    elif step == "cleanup":
        commit = StagedArtifact.commit

        def failing_commit(self: StagedArtifact, key: str) -> None:
            if self.store is a.store and not key.endswith(".json"):
                commit(self, key)  # the artifact is in place: cleanup has something to remove
                raise StorageError("injected: the store failed while committing the artifact")
            commit(self, key)

        mp.setattr(StagedArtifact, "commit", failing_commit)
        remove = a._remove_quietly

        def hooked_remove(key: str) -> None:
            fire()
            remove(key)

        mp.setattr(a, "_remove_quietly", hooked_remove)
    else:
        raise ValueError(step)


def assert_nothing_lost(
    p: ModelPersistence,
    saved: list[tuple[str, str, str]],
    *,
    claims_left: bool = False,
    unknown: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Every ``(model, version, sha256)`` reported saved is listed, loads and verifies; no sidecar
    is missing; no claim is left (``claims_left``: claims of failed saves whose writers are gone
    may remain, and gc releases them). A version saved more than once holds one of its saves, or
    one of the ``unknown`` ones: saves that raised :class:`CommitUnknownError` naming that record
    (the library said it may have landed; every other failed save must not own the version)."""
    reported: dict[tuple[str, str], set[str]] = {}
    for name, version, sha in saved:
        reported.setdefault((name, version), set()).add(sha)
    maybe: dict[tuple[str, str], set[str]] = {}
    for name, version, sha in unknown:
        maybe.setdefault((name, version), set()).add(sha)
    for (name, version), shas in reported.items():
        assert version in p.list_versions(name), f"{name} {version} was reported saved and is missing"
        record = p.get_version(name, version)
        allowed = shas | maybe.get((name, version), set())
        assert record.artifact is not None and record.artifact.sha256 in allowed, f"{name} {version} holds other bytes"
        p.load(name, version)  # re-hashes before unpickling
    report = p.verify()
    assert report.of_kind(MISSING, CORRUPT, SIDECAR) == [], report.to_dict()
    if claims_left:
        p.gc(min_age_seconds=0)  # the writers have exited: their claims are provably stale
        report = p.verify()
        assert report.of_kind(MISSING, CORRUPT, SIDECAR) == [], report.to_dict()
    assert report.of_kind(CLAIM) == [], report.to_dict()
    assert list_claims(p.index) == [], "a write claim was left behind"


@pytest.mark.parametrize("b_mode", ["next-version", "same-version"])
@pytest.mark.parametrize("a_mode", ["new", "overwrite"])
@pytest.mark.parametrize("step", STEPS)
def test_connection_killed_at_each_step_with_a_concurrent_writer(
    index_target: IndexTarget,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    a_mode: str,
    b_mode: str,
) -> None:
    models = tmp_path / "models"
    name = "contested"
    b = Saver(index_target, models)
    with index_target.persistence(models) as a, b.p:
        saved: list[tuple[str, str, str]] = []
        first = a.save_version(model_for(0, 0), name, "1.0.0")
        saved.append((name, "1.0.0", first.artifact.sha256))  # type: ignore[union-attr]
        killer = ConnectionKiller(a, _admin_url())
        fired: list[bool] = []

        def fire() -> None:
            if fired:
                return
            fired.append(True)
            killer.kill()
            # B saves to completion while A is stuck at this step: the same version A holds, or the next one
            b.save_now(name, "1.0.0" if b_mode == "same-version" else None, 1)

        _install(step, a, killer, fire, monkeypatch)
        version = "1.0.0" if a_mode == "overwrite" else None
        try:
            rec = a.save_version(model_for(1, 1), name, version, overwrite=version is not None)
            a_result: Any = rec
        except StorageError as exc:
            a_result = exc
        monkeypatch.undo()
        assert fired, f"the {step} hook never ran"
        assert killer.kills >= 1 or step in ("upload",), "no connection was killed"

        if step == "cleanup":
            assert isinstance(a_result, StorageError) and "injected" in str(a_result)
        else:
            assert not isinstance(a_result, Exception), f"A should survive one kill at {step}: {a_result}"
            saved.append((name, a_result.version, a_result.artifact.sha256))
        for b_version, outcome in b.outcomes:
            if isinstance(outcome, Exception):
                # Only a save of the very version A holds may be turned away, and it says why.
                assert b_version == "1.0.0" and isinstance(outcome, (SaveInProgressError, ModelKeepError)), outcome
                if isinstance(outcome, SaveInProgressError):
                    assert "in progress since" in str(outcome)
            else:
                saved.append((name, outcome.version, outcome.artifact.sha256))
        if a_mode == "new" and b_mode == "next-version" and step != "cleanup":
            versions = [v for _, v, _ in saved]
            assert len(set(versions)) == len(versions), "two successful saves got the same version"
        with index_target.persistence(models) as fresh:
            assert_nothing_lost(fresh, saved)
            fresh.gc(min_age_seconds=0)
            assert fresh.verify().ok, fresh.verify().to_dict()


@pytest.mark.postgres
@pytest.mark.s3
def test_issue_11_reproduction_on_postgresql_and_s3(s3_bucket: Any, tmp_path: Path) -> None:
    """Hook A's sidecar write, terminate A's backend there, run B's save to completion, let A go on."""
    from .test_team import team_persistence

    with pg_schema() as schema, team_persistence(s3_bucket, schema) as a, team_persistence(s3_bucket, schema) as b:
        a.ensure_registry()  # the team's registry exists; the killer watches its connection
        killer = ConnectionKiller(a, _admin_url())
        b_records: list[Any] = []
        store_class = type(a.store)  # the backend's own write_bytes (object stores override it)
        write_bytes = store_class.write_bytes

        def hooked(self: ArtifactStore, key: str, data: bytes) -> None:
            write_bytes(self, key, data)
            if self is a.store and key.endswith("_metadata.json") and not b_records:
                killer.kill()
                # writes through its own store object, so this hook stays quiet
                b_records.append(b.save_version({"writer": "B"}, "repro"))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store_class, "write_bytes", hooked)
            a_record = a.save_version({"writer": "A"}, "repro")
        assert killer.kills >= 1
        (b_record,) = b_records
        assert {a_record.version, b_record.version} == {"1.0.0", "1.0.1"}
        assert b.load("repro", b_record.version) == {"writer": "B"}
        assert b.load("repro", a_record.version) == {"writer": "A"}
        report = b.verify()
        assert report.ok, report.to_dict()
        keys = s3_bucket.object_keys()
        for rec in (a_record, b_record):
            assert f"models/repro/{rec.version}/repro_v{rec.version}.joblib" in keys  # the seed's layout
            assert f"models/repro/{rec.version}/repro_v{rec.version}_metadata.json" in keys


# -- random kills, 8 writers ---------------------------------------------------------------------


def _spawn_writers(tmp_path: Path, spec: dict[str, Any], workers: int) -> tuple[list[Any], Path]:
    start = tmp_path / "start"
    procs = []
    for worker in range(workers):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "_faults.py"), json.dumps({**spec, "worker": worker})],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs, start


def _wait_ready(start: Path, workers: int) -> None:
    deadline = time.monotonic() + 60
    while sum(Path(f"{start}.ready{w}").exists() for w in range(workers)) < workers:
        assert time.monotonic() < deadline, "the writers did not open the registry"
        time.sleep(0.02)


def _collect(procs: list[Any], name: str) -> tuple[list[tuple[str, str, str]], list[Any], int]:
    saved, failed, self_kills = [], [], 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        saved += [(name, s["version"], s["sha256"]) for s in result["saved"]]
        failed += result["failed"]
        self_kills += result["self_kills"]
    return saved, failed, self_kills


def _unknown(failed: list[Any], name: str) -> list[tuple[str, str, str]]:
    """The records of failed saves whose outcome the library declared unknown (they may have landed)."""
    return [(name, u["version"], u["sha256"]) for f in failed for u in f.get("unknown", ())]


#: Saves per writer in the random-kill run, at least; writers then keep saving until the killer
#: (one kill every 50-200 ms) has landed KILLS_WANTED kills, however fast the saves are.
SAVES_PER_WRITER = 4
KILLS_WANTED = 24


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.s3
def test_random_backend_kills_with_eight_writers_lose_nothing(s3_bucket: Any, tmp_path: Path) -> None:
    """8 writer processes on PostgreSQL + S3; another connection terminates their backends at random."""
    import psycopg

    app = f"mkfault{uuid.uuid4().hex[:8]}"
    name = "randomly-killed"
    with pg_schema() as schema:
        assert PG_URL
        spec = {
            "models_dir": s3_bucket.url(),
            "registry_url": f"{PG_URL}?application_name={app}",
            "index_schema": schema,
            "storage_options": s3_bucket.storage_options,
            "model_name": name,
            "shared_version": "7.7.7",
            "count": SAVES_PER_WRITER,
            "start_file": str(tmp_path / "start"),
            "stop_file": str(tmp_path / "stop"),
        }
        options = {"storage_options": s3_bucket.storage_options, "index_schema": schema}
        with ModelPersistence(models_dir=s3_bucket.url(), registry_url=PG_URL, **options) as p:
            p.ensure_registry()  # the tables exist before the writers start
        procs, start = _spawn_writers(tmp_path, spec, 8)
        _wait_ready(start, 8)
        start.touch()
        kills = _kill_backends_at_random(psycopg, app, procs, Path(spec["stop_file"]))
        saved, failed, _ = _collect(procs, name)
        assert kills >= 20, f"only {kills} backend kills"
        with ModelPersistence(models_dir=s3_bucket.url(), registry_url=PG_URL, **options) as p:
            assert_nothing_lost(p, saved, claims_left=True, unknown=_unknown(failed, name))
    assert len(saved) + len(failed) >= 8 * SAVES_PER_WRITER
    assert len(saved) >= (len(saved) + len(failed)) // 2, f"too few saves succeeded: {failed}"


def _kill_backends_at_random(psycopg: Any, app: str, procs: list[Any], stop: Path) -> int:
    """Until every writer exits, terminate one of their backends every 50-200 ms (busy ones first);
    tell the writers to stop (``stop``) once KILLS_WANTED kills landed, or after 90 s."""
    rng = random.Random(11)
    kills = 0
    admin_url = _admin_url()
    assert admin_url
    deadline = time.monotonic() + 90
    with psycopg.connect(admin_url, autocommit=True) as admin:
        while any(proc.poll() is None for proc in procs):
            if kills >= KILLS_WANTED or time.monotonic() > deadline:
                stop.touch()
            rows = admin.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (app,))
            found = [(pid, state) for pid, state in rows]
            busy = [pid for pid, state in found if state != "idle"]
            victims = busy or [pid for pid, _ in found]
            if victims and admin.execute("SELECT pg_terminate_backend(%s)", (rng.choice(victims),)).fetchone()[0]:
                kills += 1
            time.sleep(rng.uniform(0.05, 0.2))
    return kills


@pytest.mark.slow
def test_random_connection_kills_with_eight_writers_on_sqlite_lose_nothing(tmp_path: Path) -> None:
    """8 writer processes on SQLite; each closes its own connections at random points of its saves."""
    models = tmp_path / "models"
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    name = "randomly-killed"
    with ModelPersistence(models_dir=models, registry_url=url) as p:
        p.ensure_registry()  # the tables exist before the writers start
    spec = {
        "models_dir": str(models),
        "registry_url": url,
        "model_name": name,
        "shared_version": "7.7.7",
        "count": 4,
        "self_kill": 0.25,
        "start_file": str(tmp_path / "start"),
    }
    procs, start = _spawn_writers(tmp_path, spec, 8)
    _wait_ready(start, 8)
    start.touch()
    saved, failed, self_kills = _collect(procs, name)
    assert self_kills >= 20, f"only {self_kills} connection kills"
    with ModelPersistence(models_dir=models, registry_url=url) as p:
        assert_nothing_lost(p, saved, claims_left=True, unknown=_unknown(failed, name))
    assert len(saved) + len(failed) == 8 * 4


# -- an overwrite's follow-ups, after its row is committed ---------------------------------------


def _flag_during(mp: pytest.MonkeyPatch, owner: Any, name: str) -> list[bool]:
    """Patch the method ``owner.name`` to hold a flag (a non-empty list) while it runs; the flag."""
    flag: list[bool] = []
    original = getattr(owner, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        flag.append(True)
        try:
            return original(*args, **kwargs)
        finally:
            flag.clear()

    mp.setattr(owner, name, hooked)
    return flag


def _flag_after(mp: pytest.MonkeyPatch, owner: Any, name: str) -> list[bool]:
    """Patch the method ``owner.name`` to raise a flag once it returned (the caller lowers it)."""
    flag: list[bool] = []
    original = getattr(owner, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        flag.append(True)
        return result

    mp.setattr(owner, name, hooked)
    return flag


def _overwrite_losing_the_resign_commit_ack(
    open_registry: Callable[[], ModelPersistence], mp: pytest.MonkeyPatch
) -> None:
    """The overwrite's row is committed; the connection then dies as the COMMIT of the re-sign of
    the aliases that point at it goes through (its answer lost). The version holds the new bytes,
    so the save must return them, not raise: a writer that is told "failed" must not own the version."""
    with open_registry() as p:
        p.save_version(model_for(0, 0), "m", "1.0.0")
        p.set_alias("m", "production", "1.0.0")
        killer = ConnectionKiller(p, _admin_url())
        in_resign = _flag_during(mp, type(p.index.lifecycle), "resign_aliases")
        fired: list[bool] = []
        dialect = p.index.engine.dialect
        do_commit = dialect.do_commit

        def commit_then_drop(dbapi_conn: Any) -> None:
            do_commit(dbapi_conn)
            if in_resign and not fired:
                fired.append(True)
                killer.raise_disconnect(dbapi_conn)

        mp.setattr(dialect, "do_commit", commit_then_drop)
        record = p.save_version(model_for(1, 1), "m", "1.0.0", overwrite=True)
        mp.undo()
        assert fired, "the re-sign's commit was never reached"
    with open_registry() as fresh:
        assert_nothing_lost(fresh, [("m", "1.0.0", record.artifact.sha256)])  # type: ignore[union-attr]
        assert fresh.load("m", alias="production")["i"] == 1
        assert fresh.verify().ok, fresh.verify().to_dict()


def test_overwrite_that_committed_is_reported_saved_when_the_alias_resign_loses_its_commit_ack(
    index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _overwrite_losing_the_resign_commit_ack(lambda: index_target.persistence(tmp_path / "models"), monkeypatch)


@pytest.mark.postgres
@pytest.mark.s3
def test_overwrite_straight_to_s3_is_reported_saved_when_the_alias_resign_loses_its_commit_ack(
    s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on PostgreSQL + S3, where the overwrite uploads straight to its final key (the
    random-kill test's path)."""
    from .test_team import team_persistence

    with pg_schema() as schema:
        _overwrite_losing_the_resign_commit_ack(lambda: team_persistence(s3_bucket, schema), monkeypatch)


def test_overwrite_that_committed_is_reported_saved_when_its_old_artifact_cannot_be_counted(
    index_target: IndexTarget, tmp_path: Path
) -> None:
    """The overwrite's row is committed; then every connection that asks whether another version
    shares the replaced artifact dies (all the retries). The save returns; the old bytes stay for gc."""
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        old = p.save_version(model_for(0, 0), "m", "1.0.0")
        killer = ConnectionKiller(p, _admin_url())
        kills: list[str] = []

        def kill_the_count(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "count(" in statement.lower() and "artifact_key" in statement:
                kills.append(statement)
                killer.raise_disconnect(conn.connection)

        event.listen(p.index.engine, "before_cursor_execute", kill_the_count)
        try:
            record = p.save_version(model_for(1, 1), "m", "1.0.0", overwrite=True)
        finally:
            event.remove(p.index.engine, "before_cursor_execute", kill_the_count)
        assert len(kills) >= 2, "the count was not retried and killed each time"
        assert old.artifact is not None and p.store.exists(old.artifact.key)  # left for gc
    with index_target.persistence(models) as fresh:
        assert_nothing_lost(fresh, [("m", "1.0.0", record.artifact.sha256)])  # type: ignore[union-attr]
        fresh.gc(min_age_seconds=0)
        assert not fresh.store.exists(old.artifact.key)
        assert fresh.verify().ok, fresh.verify().to_dict()


def test_a_save_whose_every_commit_was_lost_before_it_landed_says_nothing_was_registered(
    index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies just before each COMMIT of the version's row reaches the server, at
    every retry: the read-back knows each time that nothing landed, so the save fails with
    :class:`ConnectionLostError` ("not committed"), never "may or may not have been saved", and
    leaves the version as it was."""
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        old = p.save_version(model_for(0, 0), "m", "1.0.0")
        killer = ConnectionKiller(p, _admin_url())
        in_put = _flag_after(monkeypatch, Reservation, "put")

        dialect = p.index.engine.dialect
        do_commit = dialect.do_commit
        drops: list[bool] = []

        def drop_then_commit(dbapi_conn: Any) -> None:
            if in_put:
                in_put.clear()
                drops.append(True)
                killer.kill()  # the COMMIT goes out on a dead connection
            do_commit(dbapi_conn)

        monkeypatch.setattr(dialect, "do_commit", drop_then_commit)
        with pytest.raises(StorageError) as caught:
            p.save_version(model_for(1, 1), "m", "1.0.0", overwrite=True)
        monkeypatch.undo()
        assert len(drops) >= 2, "the commit was not retried"
        assert isinstance(caught.value, ConnectionLostError), caught.value
        assert "not committed" in str(caught.value)
    with index_target.persistence(models) as fresh:
        assert_nothing_lost(fresh, [("m", "1.0.0", old.artifact.sha256)])  # type: ignore[union-attr]
        fresh.gc(min_age_seconds=0)  # the event files of the commits that never landed
        assert fresh.verify().ok, fresh.verify().to_dict()


def test_a_save_whose_commit_outcome_stays_unknown_names_the_record_it_may_have_registered(
    index_target: IndexTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT of a new version goes through but its answer is lost, and every read-back of
    the outcome loses its connection too: the save raises :class:`CommitUnknownError` (not a plain
    failure), carrying the record it may have registered, which is what the version then holds."""
    models = tmp_path / "models"
    with index_target.persistence(models) as p:
        p.save_version(model_for(0, 0), "m", "1.0.0")
        killer = ConnectionKiller(p, _admin_url())
        committed: list[bool] = []
        _install("commit-ack-lost", p, killer, lambda: committed.append(True), monkeypatch)
        reading_back = _flag_during(monkeypatch, VersionClaim, "_read_back")
        read_kills: list[str] = []

        def kill_reads(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if reading_back:
                read_kills.append(statement)
                killer.raise_disconnect(conn.connection)

        event.listen(p.index.engine, "before_cursor_execute", kill_reads)
        try:
            with pytest.raises(CommitUnknownError) as caught:
                p.save_version(model_for(1, 1), "m")
        finally:
            event.remove(p.index.engine, "before_cursor_execute", kill_reads)
            monkeypatch.undo()
        assert committed and len(read_kills) == len(claims_mod.READ_BACK_PAUSES), read_kills
        (maybe,) = caught.value.records
        assert maybe.version == "1.0.1" and maybe.artifact is not None
    with index_target.persistence(models) as fresh:
        # it did land: the version holds the bytes of the record the error named
        assert_nothing_lost(fresh, [("m", "1.0.1", maybe.artifact.sha256)])
        assert fresh.load("m", "1.0.1")["i"] == 1
