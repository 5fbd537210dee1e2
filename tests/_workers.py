"""The one worker harness: functions run in child processes (:data:`CTX`) by the
concurrency, crash and team tests, and :func:`run_in_processes`, which runs them.

They live in an importable module because a spawned child imports its target
by name. Every worker opens its own :class:`ModelPersistence` on the store and
index the parent names, exactly as separate programs would; with ``machines``,
each also gets its own home, temporary and working folders, as on another machine.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep import ModelPersistence, VersionExistsError


def open_registry(models_dir: str, url: str, schema: str | None, **kwargs: Any) -> ModelPersistence:
    return ModelPersistence(models_dir=models_dir, registry_url=url, index_schema=schema, **kwargs)


def payload(worker: int, seq: int, nbytes: int = 64 << 10) -> dict[str, Any]:
    """A model stand-in that says who saved it; ``nbytes`` of random data make the save take time."""
    rng = np.random.default_rng(worker * 100_003 + seq)
    return {"worker": worker, "seq": seq, "data": rng.integers(0, 255, size=nbytes, dtype=np.uint8)}


def _report(queue: Any, worker: int, fn: Any) -> None:
    try:
        queue.put((worker, "ok", fn()))
    except BaseException:
        queue.put((worker, "error", traceback.format_exc()))


def save_many(
    models_dir: str, url: str, schema: str | None, worker: int, plan: list[str | None], barrier: Any, queue: Any
) -> None:
    """Save one payload per entry of ``plan`` (``None``: next automatic version); report the versions."""

    def run() -> list[tuple[str, int]]:
        with open_registry(models_dir, url, schema) as p:
            barrier.wait(120)
            done = []
            for seq, version in enumerate(plan):
                rec = p.save_version(payload(worker, seq, 16 << 10), "shared", version)
                done.append((rec.version, seq))
            return done

    _report(queue, worker, run)


def team_model(worker: int, i: int) -> dict[str, Any]:
    """The object worker ``worker`` saves as its ``i``-th team version (distinct per worker and step)."""
    return {"worker": worker, "i": i, "weights": np.full(50_000, worker * 1000 + i, dtype=np.int64)}


def save_team_versions(
    models_dir: str,
    url: str,
    schema: str | None,
    worker: int,
    count: int,
    storage_options: dict[str, Any],
    barrier: Any,
    queue: Any,
) -> None:
    """Save ``count`` versions of ``shared`` to a team registry; report each version and its SHA-256."""

    def run() -> list[dict[str, Any]]:
        with open_registry(models_dir, url, schema, storage_options=storage_options) as p:
            barrier.wait(120)
            saved = []
            for i in range(count):
                rec = p.save_version(
                    team_model(worker, i), "shared", metadata={"worker": worker, "i": i, "cwd": os.getcwd()}
                )
                assert rec.artifact is not None
                saved.append({"version": rec.version, "sha256": rec.artifact.sha256, "i": i})
            return saved

    _report(queue, worker, run)


def race_for_versions(
    models_dir: str, url: str, schema: str | None, worker: int, versions: list[str], barrier: Any, queue: Any
) -> None:
    """For each version, wait for every racer, then try to save it; report who won what."""

    def run() -> list[tuple[str, str]]:
        with open_registry(models_dir, url, schema) as p:
            results = []
            for seq, version in enumerate(versions):
                model = payload(worker, seq)
                barrier.wait(120)
                try:
                    p.save(model, "contested", version)
                    results.append((version, "won"))
                except VersionExistsError:
                    results.append((version, "exists"))
            return results

    _report(queue, worker, run)


def save_forever(models_dir: str, url: str, schema: str | None, nbytes: int, ready: Any) -> None:
    """Save until killed: automatic versions, and overwrites of version ``9.9.9``, alternately."""
    with open_registry(models_dir, url, schema, serialization_format="pickle", compress=False) as p:
        ready.set()
        seq = 0
        while True:
            seq += 1
            if seq % 3 == 0:
                p.save(payload(os.getpid(), seq, nbytes), "crashy", "9.9.9", overwrite=True)
            else:
                p.save(payload(os.getpid(), seq, nbytes), "crashy")


#: Where :func:`save_then_die` kills itself, in the order a save passes them.
PHASES = ("staging", "sidecar", "commit", "index")


def save_then_die(models_dir: str, url: str, schema: str | None, phase: str, version: str | None) -> None:
    """Start a save and SIGKILL this process at ``phase``; the save must not complete."""
    from modelkeep.index.sql import Reservation
    from modelkeep.storage import ArtifactStore, HashingWriter, StagedArtifact

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if phase == "staging":  # half-way through writing the staged file
        original_write = HashingWriter.write

        def write(self: HashingWriter, data: Any) -> int:
            n = original_write(self, data)
            if self.size > (256 << 10):
                die()
            return n

        HashingWriter.write = write  # type: ignore[method-assign]
    elif phase == "sidecar":  # sidecar written, artifact not yet moved into place
        from modelkeep.storage.local import LocalStore

        for store_class in (ArtifactStore, LocalStore):  # a local store writes small files its own way

            def write_bytes(self: ArtifactStore, key: str, data: bytes, _write: Any = store_class.write_bytes) -> None:
                _write(self, key, data)
                if key.endswith("_metadata.json"):
                    die()

            store_class.write_bytes = write_bytes  # type: ignore[method-assign]
    elif phase == "commit":  # artifact in place, index row not yet written
        original_commit = StagedArtifact.commit

        def commit(self: StagedArtifact, key: str) -> None:
            original_commit(self, key)
            if not key.endswith("_metadata.json"):  # the artifact, not the sidecar
                die()

        StagedArtifact.commit = commit  # type: ignore[method-assign]
    elif phase == "index":  # index row written, transaction not yet committed
        original_put = Reservation.put

        def put(self: Reservation, record: Any) -> None:
            original_put(self, record)
            die()

        Reservation.put = put  # type: ignore[method-assign]
    elif phase == "syncing":  # claimed, sidecar written, the artifact's move waiting for its fsync
        from modelkeep.storage import local

        original_commit = StagedArtifact.commit
        moving = threading.Event()

        def commit(self: StagedArtifact, key: str) -> None:
            moving.set()
            original_commit(self, key)  # waits for the staged file's fsync on the helper thread

        def die_before_fsync(fd: int, path: str) -> None:
            assert threading.current_thread() is not threading.main_thread(), "the staged file syncs on the helper"
            assert moving.wait(60), "the save did not get to the artifact's move while its fsync was pending"
            die()

        StagedArtifact.commit = commit  # type: ignore[method-assign]
        local._fsync_closing = die_before_fsync  # type: ignore[attr-defined]
    else:
        raise ValueError(phase)
    with open_registry(models_dir, url, schema) as p:
        p.save(payload(1, 1, 1 << 20), "victim", version, overwrite=True)
    raise AssertionError("the save should have been killed")


#: Where :func:`save_many_then_die` kills itself, in the order a batch passes them.
BATCH_PHASES = ("claimed", "files", "index")


def save_many_then_die(models_dir: str, url: str, schema: str | None, phase: str, count: int) -> None:
    """Start ``save_many`` of ``count`` models (``batch-000``...) and SIGKILL this process at ``phase``:
    after the batch's claims commit, half-way through moving its artifacts into place, or with
    every row inserted but the transaction not committed."""
    from modelkeep.index import claims
    from modelkeep.index.sql import SqlIndex
    from modelkeep.storage import StagedArtifact

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if phase == "claimed":
        original_take = claims.take_many

        def take_many(*args: Any, **kwargs: Any) -> Any:
            original_take(*args, **kwargs)
            die()

        claims.take_many = take_many  # type: ignore[assignment]
    elif phase == "files":
        original_commit = StagedArtifact.commit
        moved = [0]

        def commit(self: StagedArtifact, key: str) -> None:
            original_commit(self, key)
            moved[0] += not key.endswith("_metadata.json")
            if moved[0] == count // 2:
                die()

        StagedArtifact.commit = commit  # type: ignore[method-assign]
    elif phase == "index":
        original_put = SqlIndex.put_new_versions

        def put_new_versions(conn: Any, records: Any) -> None:
            original_put(conn, records)
            die()

        SqlIndex.put_new_versions = staticmethod(put_new_versions)  # type: ignore[method-assign,assignment]
    else:
        raise ValueError(phase)
    with open_registry(models_dir, url, schema) as p:
        p.save_many(batch_items(count))
    raise AssertionError("the batch should have been killed")


def batch_items(count: int) -> list[dict[str, Any]]:
    """``count`` small models, one per customer, with a metric each."""
    return [{"model": payload(2, i, 4 << 10), "model_name": f"batch-{i:03d}", "auc": i / count} for i in range(count)]


# -- gadgets for the tampering tests -----------------------------------------------------------


def mark_executed(path: str) -> str:
    """What a malicious pickle would run: leaves a file behind as evidence."""
    Path(path).write_text("pwned")
    return "pwned"


class Gadget:
    """Pickles to a call of :func:`mark_executed`: code that runs on unpickling."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (mark_executed, (self.path,))


class SystemGadget:
    """The classic: pickles to ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


# -- running workers -----------------------------------------------------------------------------


def _as_in_parent(environ: dict[str, str], cwd: str, target: Any, *args: Any) -> None:
    """Child entry point: the parent's environment and working folder as they are now (a
    forkserver child would otherwise have the server's, from when it started), then ``target``."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    target(*args)


class WorkerContext:
    """A ``multiprocessing`` context whose processes start like separate programs, quickly.

    ``forkserver`` with this module (so modelkeep, SQLAlchemy and numpy) imported once in the
    server: each child is a fork of that clean, single-threaded server, never of the test
    process, and opens its own registry, connections and files, as a ``spawn`` child does; it
    just skips re-importing them (~0.5-1 s per child). :meth:`Process` gives the child the
    parent's current environment and working folder, as ``spawn`` would. Queues, events and
    barriers come from the same context."""

    def __init__(self) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([__name__])

    def Process(self, target: Any, args: tuple[Any, ...] = (), **kwargs: Any) -> Any:
        return self._ctx.Process(target=_as_in_parent, args=(dict(os.environ), os.getcwd(), target, *args), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


#: The context every worker process of the suite is started from.
CTX = WorkerContext()


def _on_machine(machine: str | None, target: Any, *args: Any) -> None:
    """Child entry point: with ``machine``, live in that folder as if on another computer."""
    if machine is not None:
        tmp = Path(machine) / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ.update(HOME=machine, TMPDIR=str(tmp), XDG_CACHE_HOME=str(Path(machine) / "cache"))
        os.chdir(machine)
    target(*args)


def run_in_processes(
    target: Any,
    worker_args: list[tuple[Any, ...]],
    *,
    timeout: float = 300,
    machines: list[str] | None = None,
) -> dict[int, Any]:
    """Run ``target(*args, barrier, queue)`` in one spawned process per ``args``; return
    ``{worker: result}``. Each ``args`` must start with ``(models_dir, url, schema, worker, ...)``.
    ``machines`` gives each worker its own home, temporary and working folder. A worker
    that raised fails the test with its traceback."""
    import queue as queue_mod

    ctx = CTX
    results: Any = ctx.Queue()
    barrier = ctx.Barrier(len(worker_args))
    where = machines or [None] * len(worker_args)
    procs = [
        ctx.Process(target=_on_machine, args=(machine, target, *args, barrier, results))
        for machine, args in zip(where, worker_args, strict=True)
    ]
    for proc in procs:
        proc.start()
    out: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in procs:
            try:
                worker, status, value = results.get(timeout=timeout)
            except queue_mod.Empty:
                codes = [proc.exitcode for proc in procs]
                raise AssertionError(f"workers did not report within {timeout}s; exit codes {codes}") from None
            if status == "ok":
                out[worker] = value
            else:
                errors.append(f"worker {worker}:\n{value}")
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return out


class Custom:
    """A plain user class: skops does not trust it unless the caller says so."""

    def __init__(self, value: int = 1) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.value == self.value


# -- lifecycle: aliases, trash -------------------------------------------------------------------


def move_alias_with_cas(
    models_dir: str,
    url: str,
    schema: str | None,
    worker: int,
    attempts: int,
    versions: list[str],
    barrier: Any,
    queue: Any,
) -> None:
    """Move ``shared@production`` ``attempts`` times, each a compare-and-set against what was just read;
    report the ``(before, after)`` of each success and the number of conflicts."""
    from modelkeep import AliasConflictError

    def run() -> tuple[list[tuple[str, str]], int]:
        with open_registry(models_dir, url, schema) as p:
            barrier.wait(120)
            won: list[tuple[str, str]] = []
            conflicts = 0
            for i in range(attempts):
                current = p.get_aliases("shared")["production"]
                target = versions[(worker + i) % len(versions)]
                if target == current:
                    target = versions[(worker + i + 1) % len(versions)]
                try:
                    p.set_alias("shared", "production", target, expected=current)
                    won.append((current, target))
                except AliasConflictError:
                    conflicts += 1
            return won, conflicts

    _report(queue, worker, run)


def alias_or_trash(
    models_dir: str,
    url: str,
    schema: str | None,
    worker: int,
    rounds: int,
    versions: list[str],
    barrier: Any,
    queue: Any,
) -> None:
    """Even workers move ``shared@production`` around; odd ones delete and restore versions.
    Refusals (an aliased version, a trashed target) are the expected outcome of a lost race."""
    import random

    from modelkeep import VersionInUseError, VersionNotFoundError

    def run() -> dict[str, int]:
        rng = random.Random(worker)
        counts = {"ok": 0, "refused": 0}
        with open_registry(models_dir, url, schema) as p:
            barrier.wait(120)
            for _ in range(rounds):
                version = rng.choice(versions)
                try:
                    if worker % 2 == 0:
                        p.set_alias("shared", "production", version)
                    else:
                        p.delete("shared", version)
                        p.restore("shared", version)
                    counts["ok"] += 1
                except (VersionInUseError, VersionNotFoundError):
                    counts["refused"] += 1
        return counts

    _report(queue, worker, run)


#: Where :func:`lifecycle_then_die` kills itself: the operation, killed after writing its history row
#: (inside the transaction), except ``purge_files``: after the purge committed, while removing files.
LIFECYCLE_OPS = ("alias_move", "force_delete", "restore", "tag", "describe", "prune", "purge_files")


def lifecycle_then_die(models_dir: str, url: str, schema: str | None, op: str) -> None:
    """Run one lifecycle operation on the registry :func:`lifecycle_fixture` made, SIGKILL mid-way."""
    import modelkeep.index.lifecycle as lifecycle_mod
    import modelkeep.index.sql as sql_mod
    from modelkeep.storage.local import LocalStore

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if op == "purge_files":
        original_delete = LocalStore.delete  # the backend these tests use (base.delete is abstract)

        def delete(self: LocalStore, key: str, *, missing_ok: bool = False) -> None:
            original_delete(self, key, missing_ok=missing_ok)
            die()

        LocalStore.delete = delete  # type: ignore[method-assign]
    else:
        original = lifecycle_mod.write_history

        def write_history(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            die()

        lifecycle_mod.write_history = write_history  # type: ignore[assignment]
        sql_mod.write_history = write_history  # type: ignore[assignment]
    with open_registry(models_dir, url, schema) as p:
        if op == "alias_move":
            p.set_alias("victim", "production", "1.0.2", expected="1.0.1")
        elif op == "force_delete":
            p.delete("victim", "1.0.1", force=True)
        elif op == "restore":
            p.restore("victim", "1.0.0")
        elif op == "tag":
            p.set_tag("victim", "stage", "changed", version="1.0.1")
        elif op == "describe":
            p.set_description("victim", "changed")
        elif op == "prune":
            p.prune("victim", keep_last=0)
        elif op == "purge_files":
            p.purge("victim", "1.0.0")
        else:
            raise ValueError(op)
    raise AssertionError("the operation should have been killed")


def lifecycle_fixture(p: ModelPersistence) -> None:
    """victim 1.0.0 (trashed), 1.0.1 (production, tagged), 1.0.2."""
    for seq in range(3):
        p.save(payload(0, seq, 16 << 10), "victim")
    p.set_alias("victim", "production", "1.0.1")
    p.set_tag("victim", "stage", "prod", version="1.0.1")
    p.set_description("victim", "original")
    p.delete("victim", "1.0.0")


#: Where :func:`alias_move_then_die` kills itself, in the order an alias move passes them: its
#: history row inserted, its event file half written, the file written and ``fsync``'ed (COMMIT
#: not sent), and the transaction committed.
ALIAS_MOVE_STEPS = ("row", "event_partial", "event_written", "committed")


def alias_move_then_die(models_dir: str, url: str, schema: str | None, step: str) -> None:
    """Move ``victim``'s ``production`` alias (:func:`lifecycle_fixture`) and SIGKILL at ``step``."""
    import modelkeep.index.lifecycle as lifecycle_mod
    from modelkeep.storage.local import LocalStore

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "row":
        original = lifecycle_mod.write_history

        def write_history(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            die()

        lifecycle_mod.write_history = write_history  # type: ignore[assignment]
    elif step in ("event_partial", "event_written"):
        original_new = LocalStore.write_new

        def write_new(self: LocalStore, key: str, data: bytes) -> None:
            if step == "event_partial":
                with open(self.full_path(key), "wb") as f:  # what a kill mid-write leaves
                    f.write(data[: len(data) // 2])
            else:
                original_new(self, key, data)
            die()

        LocalStore.write_new = write_new  # type: ignore[method-assign]
    elif step == "committed":
        original_set = lifecycle_mod.Lifecycle.set_alias

        def set_alias(self: Any, *args: Any, **kwargs: Any) -> Any:
            original_set(self, *args, **kwargs)
            die()

        lifecycle_mod.Lifecycle.set_alias = set_alias  # type: ignore[method-assign]
    else:
        raise ValueError(step)
    with open_registry(models_dir, url, schema) as p:
        p.set_alias("victim", "production", "1.0.2", expected="1.0.1")
    raise AssertionError("the alias move should have been killed")
