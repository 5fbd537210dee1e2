"""The raw baselines modelkeep is compared with: joblib and pickle protocol 5, each with fsync.

modelkeep may replace joblib's pickler and unpickler classes process-wide
(``joblib.numpy_pickle.NumpyPickler`` / ``NumpyUnpickler``) with subclasses of
its own. A user without modelkeep would not pay for those, so the joblib
baselines put joblib's own classes back for the duration of each call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
from joblib import numpy_pickle

_PATCHABLE = ("NumpyPickler", "NumpyUnpickler")


def _joblib_own(name: str) -> type:
    """joblib's own class ``name``, even if a subclass was installed in its place."""
    current = getattr(numpy_pickle, name)
    for cls in current.__mro__:
        if cls.__module__ == "joblib.numpy_pickle" and cls.__name__ == name:
            return cls
    return current


_ORIGINALS = {name: _joblib_own(name) for name in _PATCHABLE}


def joblib_patched_by_others() -> list[str]:
    """Names of joblib classes currently replaced by someone else (for the report)."""
    return [name for name in _PATCHABLE if getattr(numpy_pickle, name) is not _ORIGINALS[name]]


@contextlib.contextmanager
def pristine_joblib() -> Iterator[None]:
    """Run the block with joblib's own pickler and unpickler classes installed."""
    installed = {name: getattr(numpy_pickle, name) for name in _PATCHABLE}
    for name, cls in _ORIGINALS.items():
        setattr(numpy_pickle, name, cls)
    try:
        yield
    finally:
        for name, cls in installed.items():
            setattr(numpy_pickle, name, cls)


def joblib_save(obj: object, path: Path, compress: Any = 0) -> None:
    """``joblib.dump`` to ``path``, then flush and fsync so the bytes reach the disk."""
    with open(path, "wb") as fh, pristine_joblib():
        joblib.dump(obj, fh, compress=compress)
        fh.flush()
        os.fsync(fh.fileno())


def joblib_read(path: Path, mmap_mode: str | None = None) -> Any:
    """``joblib.load`` of ``path``."""
    with pristine_joblib():
        return joblib.load(path, mmap_mode=mmap_mode)


def pickle_save(obj: object, path: Path) -> None:
    """``pickle.dump`` with protocol 5 to ``path``, then flush and fsync."""
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=5)
        fh.flush()
        os.fsync(fh.fileno())


def pickle_read(path: Path) -> Any:
    """``pickle.load`` of ``path``."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def floor_index(path: Path) -> sqlite3.Connection:
    """A SQLite database set up as modelkeep's index is for a save's commit (WAL, ``synchronous=FULL``)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS versions (id INTEGER PRIMARY KEY, record TEXT NOT NULL)")
    conn.commit()
    return conn


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and ``fsync`` it (a sidecar's write)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_path(path: Path) -> None:
    """``fsync`` of a file or a folder by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_writeback() -> Any:
    """Linux's ``sync_file_range(2)`` (``None`` elsewhere): start writing a range back, no wait."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


class _HashTee:
    """A file-like sink for ``joblib.dump``: every byte goes to ``fh`` and to a SHA-256 and a
    BLAKE3 each fed on a thread of its own, the least a save that records both digests of its
    bytes must compute. Small writes are gathered (one copy, as the file's own buffer makes)
    and handed over per MiB; larger ones, ``bytes`` that no one changes, are handed over as they
    are (joblib writes array data as ``bytes`` chunks of up to 16 MiB). At most ``PENDING``
    chunks wait per thread (the writer waits beyond), so the memory held stays bounded, and the
    disk is asked to start writing every ``WRITEBACK`` bytes, as the final fsync must wait for
    all of them (what a save does too; neither adds work)."""

    GATHER_MIN = 64 << 10
    GATHER = 1 << 20
    PENDING = 8
    WRITEBACK = 8 << 20

    def __init__(self, fh: Any) -> None:
        from blake3 import blake3

        self._fh = fh
        self._small = bytearray()
        self._queues: list[queue.Queue[Any]] = []
        self._threads = []
        self._writeback = _start_writeback()
        self._written = self._submitted = 0
        self.digests = ["", ""]  # SHA-256, BLAKE3
        for slot, h in enumerate((hashlib.sha256(), blake3())):
            q: queue.Queue[Any] = queue.Queue(self.PENDING)
            thread = threading.Thread(target=self._hash, args=(h, q, slot), daemon=True)
            thread.start()
            self._queues.append(q)
            self._threads.append(thread)

    def _hash(self, h: Any, q: queue.Queue[Any], slot: int) -> None:
        while (data := q.get()) is not None:
            h.update(data)
        self.digests[slot] = h.hexdigest()

    def _hand(self, data: Any) -> None:
        for q in self._queues:
            q.put(data)

    def write(self, data: Any) -> int:
        n = self._fh.write(data)
        self._written += len(data)
        if self._writeback is not None and self._written - self._submitted >= self.WRITEBACK:
            self._fh.flush()
            end = self._written - self._written % 4096
            self._writeback(self._fh.fileno(), self._submitted, end - self._submitted, 2)  # SYNC_FILE_RANGE_WRITE
            self._submitted = end
        if len(data) < self.GATHER_MIN:
            self._small += data
            if len(self._small) >= self.GATHER:
                self._hand(bytes(self._small))
                self._small.clear()
        else:
            if self._small:
                self._hand(bytes(self._small))
                self._small.clear()
            self._hand(data if isinstance(data, bytes) else bytes(data))
        return int(n)

    def tell(self) -> int:
        return int(self._fh.tell())

    def finish(self) -> list[str]:
        """Wait for both digests (SHA-256, BLAKE3)."""
        if self._small:
            self._hand(bytes(self._small))
        self._hand(None)
        for thread in self._threads:
            thread.join()
        return self.digests


def joblib_save_hashed(obj: object, path: Path) -> list[str]:
    """:func:`joblib_save` whose bytes are also hashed with SHA-256 and BLAKE3 on two threads
    as they are written; the digests are waited for after the fsync (which they overlap)."""
    with open(path, "wb") as fh, pristine_joblib():
        tee = _HashTee(fh)
        try:
            joblib.dump(obj, tee)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            digests = tee.finish()
    return digests


def save_floor(
    obj: object, root: Path, i: int, index: sqlite3.Connection, record: bytes, *, hashed: bool = False
) -> None:
    """The durable steps of a save that keeps modelkeep's guarantees, done raw with no registry
    around them: ``joblib.dump`` of ``obj`` to a staged file + fsync (with ``hashed``, its bytes
    hashed with SHA-256 and BLAKE3 on threads as they are written: :func:`joblib_save_hashed`),
    ``record`` (the sidecar) to another + fsync, both renamed into a new version folder, that
    folder fsync'ed once, then one row committed to ``index`` (see :func:`floor_index`): the 4
    syncs of a save."""
    folder = root / f"floor-v{i}"
    folder.mkdir()
    staged = root / f"floor-{i}.part"
    if hashed:
        joblib_save_hashed(obj, staged)
    else:
        joblib_save(obj, staged)
    sidecar = root / f"floor-{i}.json.part"
    _write_synced(sidecar, record)
    os.replace(sidecar, folder / "metadata.json")
    os.replace(staged, folder / "model.joblib")
    _fsync_path(folder)
    index.execute("INSERT INTO versions (record) VALUES (?)", (record.decode(),))
    index.commit()


class DesignFloor:
    """Every step of a modelkeep save on SQLite and a local folder, done raw: what the save's
    design costs with no registry code around it (no SQLAlchemy, no records, no checks).

    It works on a copy of a real registry's schema (the DDL of ``registry_db``, so the same
    tables and indexes are updated) and replays the rows of that registry's first version
    (``model_name``), under new version names: per save, :meth:`save` does what
    ``docs/ARCHITECTURE.md`` lists (a claim committed without a sync, after reading the model's
    claims, its highest version and stored identical bytes; the artifact written and fsync'ed;
    the sidecar signed with ECDSA P-256, written and fsync'ed; both renamed into a new folder,
    fsync'ed once; then one transaction that deletes the claim and inserts the version row, its
    search field rows, the model row and the history row, writes the signed event file, and
    commits with the WAL synced). As in a save, the artifact's fsync runs on a helper thread
    while the claim is taken, and the folder's while the row's statements run, each waited for
    before what depends on it. Time spent here is the floor of the design; time a real save
    spends above it is the registry's own code."""

    def __init__(self, root: Path, registry_db: Path, model_name: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.root = root
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._ecdsa = ec.ECDSA(hashes.SHA256())  # made once: a save's timed steps only sign
        src = sqlite3.connect(registry_db)
        src.row_factory = sqlite3.Row
        try:
            ddl = [r[0] for r in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
            version = src.execute(
                "SELECT * FROM modelkeep_versions WHERE model_name = ? ORDER BY id LIMIT 1", (model_name,)
            ).fetchone()
            if version is None:
                raise ValueError(f"no version of {model_name!r} in {registry_db}")
            self._version = dict(version)
            self._fields = [
                dict(r) for r in src.execute("SELECT * FROM modelkeep_fields WHERE version_id = ?", (version["id"],))
            ]
            self._history = dict(
                src.execute(
                    "SELECT * FROM modelkeep_history WHERE model_name = ? AND version = ? ORDER BY id LIMIT 1",
                    (model_name, version["version"]),
                ).fetchone()
            )
            self._model = dict(
                src.execute("SELECT * FROM modelkeep_models WHERE model_name = ?", (model_name,)).fetchone()
            )
        finally:
            src.close()
        from concurrent.futures import ThreadPoolExecutor

        self._helper = ThreadPoolExecutor(1, thread_name_prefix="design-floor")
        self.index = sqlite3.connect(root / "design-floor.db", isolation_level=None, check_same_thread=False)
        self.index.execute("PRAGMA journal_mode=WAL")
        self.index.execute("PRAGMA synchronous=FULL")
        for statement in ddl:
            self.index.execute(statement)
        self._model["model_name"] = "floor"
        self._insert("modelkeep_models", [self._model])
        (root / "design-floor-events").mkdir()

    def close(self) -> None:
        """Close the floor's database and stop its helper thread."""
        self._helper.shutdown()
        self.index.close()

    def _insert(self, table: str, rows: list[dict[str, Any]], verb: str = "INSERT") -> None:
        columns = list(rows[0])
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        self.index.executemany(
            f"{verb} INTO {table} ({names}) VALUES ({marks})", [tuple(r[c] for c in columns) for r in rows]
        )

    def _sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data, self._ecdsa))

    def save(self, obj: object, i: int) -> None:
        """One save of ``obj`` as version ``i``, every step as modelkeep takes it, done raw."""
        name, version = "floor", f"{i}.0.0"
        idx = self.index
        staged = self.root / f"design-{i}.part"
        with open(staged, "wb") as fh, pristine_joblib():
            joblib.dump(obj, fh)
        data = staged.read_bytes()  # a save hashes the bytes as they are written
        digest = hashlib.sha256(data).hexdigest()
        artifact_synced = self._helper.submit(_fsync_path, staged)  # beside the claim, as a save's
        idx.execute("PRAGMA synchronous=NORMAL")  # the claim: atomic, not synced (index/sql.py)
        idx.execute("BEGIN IMMEDIATE")
        idx.execute("SELECT version, owner FROM modelkeep_claims WHERE model_name = ?", (name,)).fetchall()
        idx.execute(
            "SELECT version FROM modelkeep_versions WHERE model_name = ? ORDER BY parsed DESC, sort_key DESC LIMIT 1",
            (name,),
        ).fetchall()
        token = os.urandom(16).hex()
        idx.execute(
            "INSERT INTO modelkeep_claims VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, token, f"pid {os.getpid()}", "2026-12-07T00:00:00+00:00", "save"),
        )
        idx.execute("SELECT model_name, version FROM modelkeep_versions WHERE sha256 = ? LIMIT 1", (digest,)).fetchall()
        idx.execute("COMMIT")
        idx.execute("PRAGMA synchronous=FULL")
        record = self._version["record"].encode()
        sidecar = self.root / f"design-{i}.json.part"
        _write_synced(sidecar, record + self._sign(record).hex().encode())
        folder = self.root / f"design-v{i}"
        folder.mkdir()
        os.replace(sidecar, folder / "metadata.json")
        artifact_synced.result()
        os.replace(staged, folder / "model.joblib")
        folder_synced = self._helper.submit(_fsync_path, folder)  # beside the row's statements
        idx.execute("BEGIN IMMEDIATE")
        idx.execute("DELETE FROM modelkeep_claims WHERE token = ?", (token,))
        row = dict(self._version, id=None, model_name=name, version=version, sha256=digest)
        self._insert("modelkeep_versions", [row])
        version_id = idx.execute("SELECT last_insert_rowid()").fetchone()[0]
        self._insert("modelkeep_fields", [dict(f, version_id=version_id) for f in self._fields])
        self._insert("modelkeep_models", [self._model], verb="INSERT OR IGNORE")
        event = json.dumps(dict(self._history, id=None, model_name=name, version=version), sort_keys=True).encode()
        signature = self._sign(event).hex()
        self._insert(
            "modelkeep_history", [dict(self._history, id=None, model_name=name, version=version, signature=signature)]
        )
        with open(self.root / "design-floor-events" / f"{i:012d}.json", "xb") as fh:  # written, not fsync'ed
            fh.write(event)
        folder_synced.result()
        idx.execute("COMMIT")
