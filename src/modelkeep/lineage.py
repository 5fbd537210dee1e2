"""Lineage: which data a version was trained on, from which code, derived from which version.

Stored as ``ModelMetadata.lineage`` (the ``lineage`` key of the record)::

    {"training_data": {"sha256": ..., "shape": [...], "columns": [...], "bytes": ...},
     "training_target": {...},
     "git": {"commit": "...", "dirty": false, "branch": "main"},
     "parent": {"model_name": "churn", "version": "1.0.0"}}

The fingerprint hashes the raw array buffers (column by column for a DataFrame,
with each column's name and dtype), the shape and the column schema with
SHA-256 on contiguous memory, so it runs at memory speed (bench/lineage.py).
Equal data gives equal fingerprints whatever the object (a DataFrame and its
copy); a changed value, column name, dtype or order gives another.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import subprocess
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import _inotify
from ._workers import ProcessWorker
from .errors import MetadataError

#: Fingerprint layout version, part of the hashed bytes.
FINGERPRINT_VERSION = 1

try:
    from ._statscan import signatures as _c_signatures
except ImportError:  # built without a compiler (or on Windows): the check loops in Python
    _c_signatures = None

#: Which check of a kept git status runs: ``"c"`` (the compiled ``_statscan``) or ``"python"``.
STAT_CHECK = "python" if _c_signatures is None else "c"


def _update_array(h: Any, arr: Any) -> int:
    """Feed one numpy array's dtype, shape and bytes to ``h``; returns the byte count."""
    import numpy as np

    if arr.dtype == object:
        import pandas as pd

        arr = pd.util.hash_array(arr.ravel(), categorize=False)  # stable 64-bit hashes of the objects
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return int(arr.nbytes)


def _column_arrays(series: Any) -> list[Any]:
    """The buffers behind a pandas column: values, plus the mask of a nullable column."""
    import numpy as np
    import pandas as pd

    values = series.array
    if hasattr(values, "_data") and hasattr(values, "_mask"):  # Int64, boolean, Float64: data + NA mask
        return [np.asarray(values._data), np.asarray(values._mask)]
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [np.asarray(series.cat.codes), np.asarray(series.cat.categories.astype(str), dtype=object)]
    if isinstance(series.dtype, np.dtype):
        return [series.to_numpy(copy=False)]
    return [pd.util.hash_pandas_object(series, index=False).to_numpy()]


def fingerprint(data: Any) -> dict[str, Any]:
    """A content hash of ``data`` (DataFrame, Series, numpy array, torch tensor, or
    anything ``numpy.asarray`` accepts) with its shape and column schema."""
    import numpy as np

    h = hashlib.sha256(f"modelkeep-fingerprint-{FINGERPRINT_VERSION}".encode())
    out: dict[str, Any] = {"type": f"{type(data).__module__.split('.')[0]}.{type(data).__name__}"}
    total = 0
    if hasattr(data, "columns") and hasattr(data, "dtypes"):
        columns = [{"name": str(c), "dtype": str(t)} for c, t in data.dtypes.items()]
        h.update(repr([(c["name"], c["dtype"]) for c in columns]).encode())
        for i in range(data.shape[1]):
            for arr in _column_arrays(data.iloc[:, i]):
                total += _update_array(h, arr)
        out["columns"] = columns
    elif hasattr(data, "dtype") and hasattr(data, "to_numpy") and hasattr(data, "index"):  # a Series
        out["dtype"] = str(data.dtype)
        h.update(f"series:{data.name!r}:{data.dtype}".encode())
        for arr in _column_arrays(data):
            total += _update_array(h, arr)
    else:
        if type(data).__module__.startswith("torch"):
            data = data.detach().cpu().contiguous().numpy()
        try:
            arr = np.asarray(data)
        except Exception as exc:
            raise MetadataError(f"cannot fingerprint training data of type {type(data).__name__}: {exc}") from exc
        out["dtype"] = str(arr.dtype)
        total += _update_array(h, arr)
    out["shape"] = [int(d) for d in getattr(data, "shape", ())]
    out["bytes"] = total
    out["sha256"] = h.hexdigest()
    return out


def _git_root(start: str) -> str | None:
    """The folder, ``start`` (absolute, resolved) or one above it, that holds ``.git``; ``None``
    outside a repository. With strings, not :mod:`pathlib`: every save asks, and a save outside a
    repository spent ~0.05 ms here building paths."""
    folder = start
    while True:
        if os.path.exists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


#: The thread that reads the git state while a save serializes its model.
_git_worker = ProcessWorker("modelkeep-git")

#: ``git`` runs without taking the index lock (it would refresh the index's stat data): a save must
#: not make the user's own ``git commit`` fail on ``index.lock``, nor change what it then compares.
_GIT = ("git", "--no-optional-locks")
#: A repository with more tracked files than this is asked ``git status`` at every save: checking
#: that many files in Python would cost about what ``git`` does.
MAX_CACHED_FILES = 10_000
#: Files changed this recently (ns, against the clock when the status was read) may change again
#: within the file system's timestamp granularity without their ``stat`` showing it ("racy git"),
#: so a status read while one is that fresh is not reused.
RACY_NS = 2_000_000_000
#: Even when its inotify watch reports nothing, a kept status is checked in full (every path
#: ``lstat``-ed) when its last full check is this many seconds old: a bound on how long a change
#: inotify does not see (a write through ``mmap``, through a hard link elsewhere) may go unseen.
WATCH_RECHECK = 1.0
#: After a status that cannot be reused for lasting reasons (submodules, too many files, git could
#: not list them), for this many seconds the saves ask ``git status`` alone, not the three
#: processes that reading a snapshot takes.
RETRY_STRUCTURE = 60.0
#: Variables that change which repository, index or work tree ``git`` uses: with any set, no reuse.
_GIT_LOCATION_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_PARAMETERS",
)

#: Where the work tree, its git folders and its index are (one line each).
_LAYOUT = [
    "rev-parse",
    "--path-format=absolute",
    "--show-toplevel",
    "--absolute-git-dir",
    "--git-common-dir",
    "--git-path",
    "index",
]

#: One stat signature: (inode, size, mtime, ctime, mode), ``None`` for a missing path.
_Stat = tuple[int, int, int, int, int] | None


class _GitSnapshot:
    """A ``git status`` result and the ``stat`` of everything it depends on when it was read.

    While none of ``paths`` (the repository's ``HEAD``, current branch ref, packed refs, index,
    config files, the ``.git`` entries ``git`` finds the repository through, and every tracked
    file) shows another inode, size, mtime, ctime or mode, ``git status`` would print the same:
    a commit, a branch switch, ``git add``, an edit, a removal or a ``chmod`` each changes one of
    them. A snapshot is only kept when nothing changed while it was read and nothing was
    changed within :data:`RACY_NS` of it (see :func:`_read_snapshot`).

    On Linux it also holds an inotify watch on the folders of those paths, made before their
    ``stat`` was first read (:mod:`modelkeep._inotify`): while the watch reports nothing and the
    last full check is under :data:`WATCH_RECHECK` seconds old, the paths are not ``lstat``-ed
    (:meth:`quiet`). Any event, and a watch that is missing or made by another process (a forked
    child), leads to the full check."""

    __slots__ = ("checked", "encoded", "packed", "paths", "reshaped", "result", "stale", "stats", "unsettled", "watch")

    def __init__(
        self,
        paths: list[str],
        stats: list[_Stat],
        result: dict[str, Any] | None,
        watch: _inotify.Watch | None = None,
        checked: float = 0.0,
    ) -> None:
        self.paths, self.stats, self.result = paths, stats, result
        # for the compiled check: the paths as bytes and the stats as it reads them (_pack)
        self.encoded = tuple(os.fsencode(path) for path in paths)
        self.packed = _pack(stats)
        #: the watch, if any, and when its last full check started (time.monotonic())
        self.watch, self.checked = watch, checked
        #: a full check failed (for good); events that matter were read and await a full check;
        #: events were read after which the watch must be made again
        self.stale = self.unsettled = self.reshaped = False

    def quiet(self) -> bool:
        """Whether the watch says nothing changed: no event that matters waits or awaits its
        full check, no other thread is reading events, and the last full check passed under
        :data:`WATCH_RECHECK` seconds ago. Events that do not matter (another file of a watched
        folder) are read here; one that matters is left to :meth:`still_valid`."""
        watch = self.watch
        if watch is None or watch.pid != os.getpid():
            return False
        if not watch.quiet():
            if not watch.lock.acquire(blocking=False):
                return False
            try:
                matters, intact = watch.drain()
                self.unsettled |= matters
                self.reshaped |= not intact
            finally:
                watch.lock.release()
        # read after the peek: a thread that took events before it still holds the lock, or has
        # already said what they were, or what its check found
        return (
            not watch.lock.locked()
            and not (self.stale or self.unsettled or self.reshaped)
            and time.monotonic() - self.checked < WATCH_RECHECK
        )

    def still_valid(self) -> bool:
        """Whether every path still has the ``stat`` it had when the status was read: at once
        when :meth:`quiet`; else the waiting events are read first, then every path is
        ``lstat``-ed (a change made meanwhile is either seen or waits for the next check)."""
        if self.quiet():
            return True
        watch = self.watch
        if watch is None:
            return self._unchanged_or_stale()
        if watch.pid != os.getpid():  # a forked child: the parent's events are not its to read
            return self._checked(watch.renew())
        if not watch.lock.acquire(blocking=False):  # another thread is reading them: check without
            return self._unchanged_or_stale()
        try:
            intact = watch.drain()[1] and not self.reshaped
            return self._checked(watch if intact else watch.renew())
        finally:
            watch.lock.release()

    def _checked(self, watch: _inotify.Watch | None) -> bool:
        """The full check, with ``watch`` (drained or made before it, ``None`` when it could not
        be made again) kept from now on when it passes."""
        started = time.monotonic()
        if not self._unchanged_or_stale():
            return False
        # the flags before the watch: events of a new watch are read only once it is in place
        self.unsettled = self.reshaped = False
        self.checked, self.watch = started, watch
        return True

    def _unchanged_or_stale(self) -> bool:
        if self.unchanged():
            return True
        self.stale = True  # for good: a thread holding this snapshot must not find it quiet
        return False

    def unchanged(self) -> bool:
        """Whether every path still has the ``stat`` it had when the status was read (all of them
        ``lstat``-ed)."""
        if _c_signatures is not None:  # the same comparison, without the GIL (_statscan.c)
            return bool(_c_signatures(self.encoded) == self.packed)
        lstat = os.lstat
        for path, old in zip(self.paths, self.stats, strict=True):
            try:
                st = lstat(path)
            except OSError:
                if old is not None:
                    return False
                continue
            if old is None or old != (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode):
                return False
        return True


_U64 = (1 << 64) - 1
#: What :func:`_pack` (and ``_statscan.signatures``) write for a path whose ``lstat`` fails.
_MISSING = (_U64,) * 5


def _pack(stats: list[_Stat]) -> bytes:
    """``stats`` as ``_statscan.signatures`` returns them: five native unsigned 64-bit numbers
    per path (negative ones modulo 2**64), all ones for a missing path."""
    flat = [n & _U64 for st in stats for n in (_MISSING if st is None else st)]
    return struct.pack(f"={len(flat)}Q", *flat)


#: Per folder: its last reusable status, or until when (``time.monotonic()``) to ask git alone.
#: Read and replaced whole (atomic under the GIL), with no lock a fork could leave held.
_snapshots: dict[str, _GitSnapshot | float] = {}


def _stats(paths: list[str]) -> list[_Stat]:
    out: list[_Stat] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
    return out


def _run_git(args: list[str], where: Path) -> bytes | None:
    """``git args`` in ``where``: its output, or ``None`` when it fails."""
    try:
        proc = subprocess.run([*_GIT, *args], cwd=where, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _parse_status(out: bytes) -> dict[str, Any] | None:
    commit = branch = None
    dirty = False
    for line in out.decode("utf-8", errors="replace").splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split(" ", 2)[2]
        elif line.startswith("# branch.head "):
            branch = line.split(" ", 2)[2]
        elif line and not line.startswith("#"):
            dirty = True
    if commit is None or commit == "(initial)":
        return None
    return {"commit": commit, "dirty": dirty, "branch": None if branch == "(detached)" else branch}


def _read_status(where: Path) -> dict[str, Any] | None:
    out = _run_git(["status", "--porcelain=v2", "--branch", "--untracked-files=no"], where)
    return None if out is None else _parse_status(out)


def _metadata_paths(where: Path, top: Path, git_dir: str, common_dir: str, index: str) -> list[str]:
    """The files besides the tracked ones whose change may change ``git status``'s answer: the
    ``.git`` entries between ``where`` and the top (how ``git`` finds the repository), ``HEAD``,
    the index, the refs ``HEAD`` may resolve through, and the config files."""
    folders = [where, *where.parents]
    if top not in folders:
        raise ValueError(f"{where} is not inside {top}")
    paths = [os.path.join(folder, ".git") for folder in folders[: folders.index(top) + 1]]
    head = os.path.join(git_dir, "HEAD")
    paths += [head, index, os.path.join(common_dir, "packed-refs"), os.path.join(common_dir, "reftable", "tables.list")]
    try:
        with open(head, "rb") as fh:
            target = os.fsdecode(fh.read(4096).strip())
    except OSError:
        target = ""
    if target.startswith("ref: "):
        paths.append(os.path.join(common_dir, *target[5:].split("/")))
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    paths += [
        os.path.join(common_dir, "config"),
        os.path.join(git_dir, "config.worktree"),
        os.path.join(common_dir, "info", "attributes"),
        os.path.join(home, ".gitconfig"),
        os.path.join(xdg, "git", "config"),
        "/etc/gitconfig",
    ]
    return paths


def _read_snapshot(where: Path) -> tuple[dict[str, Any] | None, _GitSnapshot | None, float]:
    """``git status`` of the repository around ``where``, and a snapshot of it with the ``stat``
    of what it depends on, taken before and after it; no snapshot when the answer may not be
    reused (see :class:`_GitSnapshot`): the files changed while it was read or too recently,
    the repository has submodules or too many files, or ``git`` could not list them. The third
    value: for how many seconds to ask ``git status`` alone before trying a snapshot again."""
    started, checked = time.time_ns(), time.monotonic()
    layout = _run_git(_LAYOUT, where)
    lines = os.fsdecode(layout).splitlines() if layout else []
    if len(lines) != 4:
        return _read_status(where), None, RETRY_STRUCTURE
    top, git_dir, common_dir, index = (os.path.join(where, line) for line in lines)
    try:
        paths = _metadata_paths(where, Path(top), git_dir, common_dir, index)
    except ValueError:
        return _read_status(where), None, RETRY_STRUCTURE
    watch = _inotify.open_watch(paths, resolve=True)  # before the stats: no change falls between
    before = _stats(paths)
    listing = _run_git(["ls-files", "-z", "--stage", "--full-name", "--", ":/"], where)
    entries = [entry for entry in (listing or b"").split(b"\0") if entry]
    if listing is None or len(entries) > MAX_CACHED_FILES or any(e.startswith(b"160000 ") for e in entries):
        return _read_status(where), None, RETRY_STRUCTURE  # (a submodule's state is not in its folder's stat)
    tracked = sorted({os.path.join(top, *os.fsdecode(e.split(b"\t", 1)[1]).split("/")) for e in entries})
    if watch is not None and not watch.add(tracked):
        watch = None
    paths += tracked
    before += _stats(tracked)
    result = _read_status(where)
    after = _stats(paths)
    fresh = started - RACY_NS
    if after != before or any(st is not None and max(st[2], st[3]) >= fresh for st in after):
        return result, None, RACY_NS / 1e9
    return result, _GitSnapshot(paths, after, result, watch, checked), 0.0


def _relocated() -> bool:
    """Whether a variable tells ``git`` to use another repository, index or work tree (no reuse)."""
    return any(os.environ.get(name) for name in _GIT_LOCATION_VARIABLES)


def _reused(where: Path) -> tuple[bool, dict[str, Any] | None]:
    """``(True, status)`` when the last status read in ``where`` still holds (:class:`_GitSnapshot`)."""
    if _relocated():
        return False, None
    snapshot = _snapshots.get(str(where))
    if isinstance(snapshot, _GitSnapshot) and snapshot.still_valid():
        return True, None if snapshot.result is None else dict(snapshot.result)
    return False, None


def _git_status(where: Path) -> dict[str, Any] | None:
    """``git status`` of the repository around ``where`` (when :func:`_reused` found none to
    reuse), read so that it can be reused when nothing changes (:func:`_read_snapshot`)."""
    if _relocated():
        return _read_status(where)
    key = str(where)
    snapshot = _snapshots.get(key)
    if isinstance(snapshot, float) and time.monotonic() < snapshot:
        return _read_status(where)  # one process, not the three of a snapshot that would not be kept
    result, kept, retry = _read_snapshot(where)
    _snapshots[key] = kept if kept is not None else time.monotonic() + retry
    if kept is not None and kept.watch is not None:
        _keep_few_watches(key)
    return None if result is None else dict(result)


#: The most kept statuses of a process that hold an inotify watch: each is an inotify instance
#: (the kernel allows a user 128 by default, for all their programs) and a watch per folder. A
#: process saving from more folders checks the older ones' statuses in full.
MAX_WATCHES = 4
#: The folders whose kept status got a watch, oldest first (replaced whole, as _snapshots).
_watched: tuple[str, ...] = ()


def _keep_few_watches(key: str) -> None:
    """Note that ``key``'s new status has a watch; drop the watches of the oldest beyond
    :data:`MAX_WATCHES` (their descriptors close once no thread still checks with them)."""
    global _watched
    order = (*(k for k in _watched if k != key), key)
    _watched = order[-MAX_WATCHES:]
    for old in order[:-MAX_WATCHES]:
        snapshot = _snapshots.get(old)
        if isinstance(snapshot, _GitSnapshot):
            snapshot.watch = None


@functools.lru_cache(maxsize=4)
def _which_git(path: str | None) -> str | None:
    """Where ``git`` is on ``path`` (looked up once per PATH: each save asks)."""
    return shutil.which("git", path=path)


class PendingGit:
    """The git state of a save, being read (:func:`start_git`): a ``git status`` already running
    on the helper thread, or a kept status (:class:`_GitSnapshot`) still to be checked.

    The check of a kept status is hundreds of short system calls; on a helper thread each would
    wait for the GIL while the pickler holds it, so it runs once :meth:`overlap` says the caller
    is about to wait without the GIL (the ``fsync`` of the serialized model), or else in the
    caller's thread when :meth:`result` is asked for. Either way the status is checked once the
    model is serialized, not before. When the kept status's inotify watch says nothing changed
    (:meth:`_GitSnapshot.quiet`, one ``poll``), :meth:`overlap` takes it in the caller's thread:
    handing that to the helper thread would cost more than it."""

    __slots__ = ("_future", "_kept", "_where")

    def __init__(self, where: Path, future: Future[dict[str, Any] | None] | None = None) -> None:
        self._where, self._future = where, future
        self._kept: tuple[dict[str, Any] | None] | None = None

    def overlap(self) -> None:
        """Check the kept status from now on: at once when its watch says nothing changed, else
        on the helper thread (call it just before a wait that releases the GIL, such as an
        ``fsync``); nothing when git is already running."""
        if self._future is None and self._kept is None:
            self._kept = _quiet(self._where)
            if self._kept is None:
                self._future = _submit(_kept_or_read, self._where)

    def result(self) -> dict[str, Any] | None:
        """The commit, branch and dirty flag (``None`` outside a repository's history)."""
        if self._kept is not None:
            return self._kept[0]
        if self._future is None:
            return _kept_or_read(self._where)
        return self._future.result()


def _quiet(where: Path) -> tuple[dict[str, Any] | None] | None:
    """``(status,)`` when the status kept for ``where`` holds by its watch alone (:meth:`_GitSnapshot.quiet`).
    Only for a :class:`PendingGit` that :func:`start_git` made without a future: no ``GIT_*``
    location variable was set when the save began."""
    snapshot = _snapshots.get(str(where))
    if isinstance(snapshot, _GitSnapshot) and snapshot.quiet():
        return (None if snapshot.result is None else dict(snapshot.result),)
    return None


def _kept_or_read(where: Path) -> dict[str, Any] | None:
    reused, status = _reused(where)
    return status if reused else _git_status(where)


def _submit(fn: Any, where: Path) -> Future[dict[str, Any] | None]:
    return _git_worker.pool().submit(fn, where)


def start_git(cwd: str | os.PathLike[str] | None = None) -> PendingGit | None:
    """Start reading the git state of the repository around ``cwd`` (default: the working
    directory): ``git status`` starts on a helper thread at once, so it runs while the model is
    serialized; a status kept from an earlier call is checked later (:class:`PendingGit`).
    ``None`` outside a repository, without git, or with ``MODELKEEP_GIT=0``. See :func:`finish_git`."""
    if os.environ.get("MODELKEEP_GIT", "1") == "0":
        return None
    where = os.path.realpath(os.getcwd() if cwd is None else os.fspath(cwd))  # as Path.resolve()
    if _git_root(where) is None or _which_git(os.environ.get("PATH")) is None:
        return None
    if not _relocated() and isinstance(_snapshots.get(where), _GitSnapshot):
        return PendingGit(Path(where))
    return PendingGit(Path(where), _submit(_git_status, Path(where)))


def finish_git(pending: PendingGit | None) -> dict[str, Any] | None:
    """The commit, branch and dirty flag from :func:`start_git`, or ``None``."""
    return None if pending is None else pending.result()


def git_state(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The commit, branch and dirty flag of the git repository around ``cwd`` (default:
    the working directory), or ``None`` outside one or without git. Set
    ``MODELKEEP_GIT=0`` to skip it."""
    return finish_git(start_git(cwd))


def parse_parent(parent: str, model_name: str) -> tuple[str, str]:
    """``"1.0.0"`` (same model) or ``"other-model:1.0.0"`` -> ``(model_name, version)``."""
    name, sep, version = parent.rpartition(":")
    return (name if sep else model_name), version


def capture(
    *,
    data_fingerprint: dict[str, Any] | None = None,
    target_fingerprint: dict[str, Any] | None = None,
    parent: tuple[str, str] | None = None,
    git: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The lineage record for one save (``None`` when there is nothing to record), from
    :func:`fingerprint` results, the parent version and :func:`finish_git`'s result."""
    out: dict[str, Any] = {}
    if data_fingerprint is not None:
        out["training_data"] = data_fingerprint
    if target_fingerprint is not None:
        out["training_target"] = target_fingerprint
    if git is not None:
        out["git"] = git
    if parent is not None:
        out["parent"] = {"model_name": parent[0], "version": parent[1]}
    return out or None


def with_git(record: dict[str, Any] | None, git: dict[str, Any] | None) -> dict[str, Any] | None:
    """``record`` (from :func:`capture` without git) with ``git`` as its git field, in the place
    :func:`capture` puts it: the record a capture with ``git`` makes, without capturing again."""
    if git is None:
        return record
    out = {k: v for k, v in (record or {}).items() if k not in ("git", "parent")}
    out["git"] = git
    if record is not None and "parent" in record:
        out["parent"] = record["parent"]
    return out
