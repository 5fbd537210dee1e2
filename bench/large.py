"""Large models: uncompressed save and load of a >=100 MB forest and a dict of float arrays.

Methods: joblib and pickle 5 (each + fsync), modelkeep's default joblib format
with ``compress=False``, and modelkeep's ``native`` format (pickle 5 with
content-addressed array blobs) when it exists. Loads are measured "warm" (the
file is in the page cache, as right after a save) and "cold" (pages dropped
with ``posix_fadvise`` first); ``mmap_mode="r"`` loads of the array dict warm, both
of a file this user has already checked (the payload bytes are not hashed again) and
of one checked for the first time.

``floors`` measures, in the same run and on the same bytes, what the hardware allows:
reading the file into memory, and SHA-256 and BLAKE3 over it. A verified load cannot
beat the read plus the part of the hashing that does not overlap it, and a save cannot
beat the SHA-256 of its bytes (the artifact's identity), however the work is arranged.

The save tables also time, interleaved with the saves, the whole work a save must do done raw
(``FLOOR``, baselines.save_floor with ``hashed``): ``joblib.dump`` into a tee that hands every
byte to SHA-256 and BLAKE3 on two threads, its fsync, then the sidecar + fsync, two renames, one
folder fsync and a SQLite commit. A save slower than ``joblib.dump`` + fsync by more than its
target is compared with that row, measured under the same load, rather than with the partial
floors above, each of which leaves out the others' work.

Saving the same object again would let modelkeep's content dedup skip the
write, which a retrained model would not get; so the default-format registry
deletes the previous repetition's version first, and the native format writes
to a fresh registry in every repetition. Two more default-format cases measure the
save as users run it: ``one registry, versions kept`` saves every repetition as a
new version of one registry (identical bytes after the first: the staged copy is
written, hashed and then dropped for a hard link), and ``fresh registry`` saves into
a new, empty registry (created untimed) in every repetition. The three figures should agree.

Every timed call starts with the same memory at hand: just before it, untimed, the bench
touches and frees somewhat more memory than the file it writes (:func:`warm_free_pages`).
Without that, the case that had freed its previous file longest before paid for fresh memory:
on a virtual machine whose balloon reports free pages to the host (virtio-balloon free page
reporting: pages free for about 2 s are handed back), writing 200 MB into pages freed a moment
ago took 93 ms and into pages freed 3 s earlier 444 ms (sys time 47 vs 253 ms). Every case but
``one registry, versions kept`` deleted its previous file right before its timed call; that case's
duplicate staged file is unlinked by modelkeep right after its own save, seconds before its next
one, so only it got handed-back pages: 2.95x joblib for the array dict against 1.09x for the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from baselines import floor_index, joblib_read, joblib_save, pickle_read, pickle_save, save_floor
from common import (
    CACHE_DIR,
    Settings,
    compare_interleaved,
    error_text,
    evict_from_page_cache,
    log,
    scratch_dir,
    summarize,
    time_call,
)
from subject import drop_version, open_registry
from targets import FRESH_READ, FRESH_READ_HASHED, LARGE_FLOOR, MAPPED_BLAKE3
from workloads import array_dict, cached_forest, pickled_size

JOBLIB = "joblib.dump+fsync"
PICKLE = "pickle5+fsync"
MK = "modelkeep"
NATIVE = "modelkeep native"
MK_KEPT = f"{MK}, one registry, versions kept"
MK_FRESH = f"{MK}, fresh registry"
#: The default-format save cases, each a way users save into a registry.
MK_SAVES = (MK, MK_KEPT, MK_FRESH)
#: The same work as a save, done raw in the same run (bench/baselines.py's save_floor, hashed):
#: what a save that records SHA-256 and BLAKE3 of its bytes and makes them durable cannot avoid.
FLOOR = LARGE_FLOOR
MK_MMAP = f"{MK} mmap_mode=r"
MK_MMAP_FIRST = f"{MK} mmap_mode=r, first check"
#: A file changed less than this long ago is not remembered as checked (CheckedFiles.RACY_NS).
CHECKED_MIN_AGE_S = 1.1
#: Memory touched and freed before each timed call, beyond the model's pickled size.
WARM_MARGIN = 64 << 20
#: Bytes per read of the fresh-memory floors (a verified load's read size).
FRESH_CHUNK = 4 << 20


def workloads(settings: Settings) -> dict[str, Any]:
    """The two large objects, built (or reloaded from the cache) once per run."""
    return {
        "forest": cached_forest(settings.forest_target_mb, CACHE_DIR),
        "arrays": array_dict(settings.arrays_mb),
    }


def _version(i: int) -> str:
    """The modelkeep version written by repetition ``i`` (warm-ups have negative ``i``)."""
    return str(i + 100)


class _Targets:
    """Where each method writes in repetition ``i``, and how to clean up before the next."""

    def __init__(self, root: Path, modelkeep: Any, name: str, nbytes: int = 0) -> None:
        self.root = root
        self.nbytes = nbytes  # the pickled size: how much memory a timed call writes into
        self.modelkeep = modelkeep
        self.name = name
        self.registry: Any = None
        self.kept: Any = None
        self.fresh: Any = None
        self.native: Any = None
        self.errors: dict[str, str] = {}
        self.index = floor_index(root / "floor.db")
        self.record = b'{"model_name": "floor", "artifact": {"sha256": "' + b"0" * 64 + b'"}}'
        if modelkeep is not None:
            try:
                self.registry = open_registry(modelkeep, root / "default", compress=False)
                self.kept = open_registry(modelkeep, root / "kept", compress=False)
                for registry in (self.registry, self.kept):
                    registry.ensure_registry()  # created before the timing starts, as the fresh ones
            except Exception as exc:
                self.errors[MK] = error_text(exc)

    def path(self, case: str, i: int) -> Path:
        return self.root / f"{case}-{i}.bin"

    def native_root(self, i: int) -> Path:
        return self.root / f"native-{i}"

    def fresh_root(self, i: int) -> Path:
        return self.root / f"fresh-{i}"

    def before_save(self, case: str, i: int) -> None:
        """Remove what the previous repetition of ``case`` wrote; open a fresh native registry.

        First, untimed, let the unlinks of dropped duplicate files (``MK_KEPT``) that modelkeep
        runs on a helper thread finish, so they are not charged to whichever case runs next;
        last, hand the case warm free memory (:func:`warm_free_pages`)."""
        _settle_unlinks()
        self._clean_up(case, i)
        warm_free_pages(self.nbytes + WARM_MARGIN)

    def _clean_up(self, case: str, i: int) -> None:
        if case == MK:
            drop_version(self.registry, self.name, _version(i - 1))
        elif case == MK_KEPT:
            pass  # every repetition is one more version of the same registry
        elif case == MK_FRESH:
            if self.fresh is not None:
                self.fresh.close()
            shutil.rmtree(self.fresh_root(i - 1), ignore_errors=True)
            self.fresh = open_registry(self.modelkeep, self.fresh_root(i), compress=False)
            self.fresh.ensure_registry()  # an empty registry; creating its index is not the save
        elif case == FLOOR:
            shutil.rmtree(self.root / f"floor-v{i - 1}", ignore_errors=True)
        elif case == NATIVE:
            self.close_native()
            shutil.rmtree(self.native_root(i - 1), ignore_errors=True)
            self.native = open_registry(self.modelkeep, self.native_root(i), serialization_format="native")
        else:
            self.path(case, i - 1).unlink(missing_ok=True)

    def file_of(self, case: str, last: int) -> Path:
        """The file or directory a load case reads (for page-cache eviction)."""
        if case.startswith(NATIVE):
            return self.native_root(last)
        if case.startswith(MK):
            return self.root / "default"
        return self.path(JOBLIB if case.startswith("joblib") else PICKLE, last)

    def close_native(self) -> None:
        if self.native is not None:
            self.native.close()
            self.native = None

    def close(self) -> None:
        self.index.close()
        self.close_native()
        for registry in (self.registry, self.kept, self.fresh):
            if registry is not None:
                registry.close()


def _save_cases(obj: object, t: _Targets) -> dict[str, Any]:
    """Timed save callables for every available method."""
    cases: dict[str, Any] = {
        JOBLIB: lambda i: joblib_save(obj, t.path(JOBLIB, i)),
        PICKLE: lambda i: pickle_save(obj, t.path(PICKLE, i)),
        FLOOR: lambda i: save_floor(obj, t.root, i, t.index, t.record, hashed=True),
    }
    if t.registry is not None:
        cases[MK] = lambda i: t.registry.save(obj, t.name, _version(i))
        cases[MK_KEPT] = lambda i: t.kept.save(obj, t.name, _version(i))
        cases[MK_FRESH] = lambda i: t.fresh.save(obj, t.name, _version(i))
    if t.modelkeep is not None:
        cases[NATIVE] = lambda i: t.native.save(obj, t.name, _version(i))
    return cases


def _load_cases(t: _Targets, last: int, mmap: bool) -> dict[str, Any]:
    """Timed load callables reading what the last save repetition wrote."""
    v = _version(last)
    cases: dict[str, Any] = {
        "joblib.load": lambda i: joblib_read(t.path(JOBLIB, last)),
        "pickle.load": lambda i: pickle_read(t.path(PICKLE, last)),
    }
    if t.registry is not None:
        cases[MK] = lambda i: t.registry.load(t.name, v)
    if t.native is not None:
        cases[NATIVE] = lambda i: t.native.load(t.name, v)
    if mmap:
        cases["joblib.load mmap_mode=r"] = lambda i: joblib_read(t.path(JOBLIB, last), "r")
        if t.registry is not None:
            cases[MK_MMAP] = lambda i: t.registry.load(t.name, v, mmap_mode="r")
            cases[MK_MMAP_FIRST] = lambda i: t.registry.load(t.name, v, mmap_mode="r")
        if t.native is not None:
            cases[f"{NATIVE} mmap_mode=r"] = lambda i: t.native.load(t.name, v, mmap_mode="r")
    return cases


def _measure_one(label: str, obj: object, settings: Settings, modelkeep: Any) -> dict[str, Any]:
    """Save, warm load, cold load (and mmap load for the array dict) of one object."""
    out: dict[str, Any] = {"model_bytes": pickled_size(obj)}
    repeats = settings.large_repeats
    last = repeats - 1
    with scratch_dir(f"large-{label}") as root:
        t = _Targets(root, modelkeep, label, out["model_bytes"])
        warm = lambda case, i: warm_free_pages(out["model_bytes"] + WARM_MARGIN)  # noqa: E731
        try:
            log(f"large {label}: save")
            out["save"] = compare_interleaved(_save_cases(obj, t), repeats, before=t.before_save)
            log(f"large {label}: load")
            _wait_until_old(root / "default")
            forget = lambda case, i: (_forget(case, i), warm(case, i))  # noqa: E731
            out["load"] = compare_interleaved(_load_cases(t, last, mmap=label == "arrays"), repeats, before=forget)
            out["floors"] = floors(t.path(JOBLIB, last), repeats)
            evict = lambda case, i: (warm(case, i), evict_from_page_cache(t.file_of(case, last)))  # noqa: E731
            out["load_cold"] = compare_interleaved(_load_cases(t, last, mmap=False), repeats, before=evict)
        finally:
            t.close()
        if t.errors:
            out["modelkeep_errors"] = t.errors
    return out


def warm_free_pages(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it again, so that the timed call which follows
    writes its file (and builds its arrays) in pages this machine used a moment ago, whatever
    each case freed before and how long ago (see the module's docstring)."""
    block = np.ones(nbytes, dtype=np.uint8)  # written, so every page is really there
    del block


def _settle_unlinks() -> None:
    try:
        from modelkeep.storage.local import wait_for_background_unlinks
    except ImportError:  # an older modelkeep unlinks before save() returns
        return
    wait_for_background_unlinks()


def _wait_until_old(folder: Path) -> None:
    """Let the artifacts age past the window in which a check is not remembered, as a model
    loaded by a service some time after it was saved would be."""
    newest = max((p.stat().st_ctime for p in folder.rglob("*") if p.is_file()), default=0.0)
    time.sleep(max(0.0, newest + CHECKED_MIN_AGE_S - time.time()))


def _forget(case: str, i: int) -> None:
    """Before the "first check" case: forget which files this user has already checked."""
    if case == MK_MMAP_FIRST:
        from modelkeep.keys import checked_files_dir

        shutil.rmtree(checked_files_dir(), ignore_errors=True)


def floors(path: Path, repeats: int) -> dict[str, Any]:
    """Times, on this file's bytes, of what any verified save or load must do at least once."""
    from blake3 import blake3

    size = os.path.getsize(path)
    buf = bytearray(size)

    def read() -> None:
        with open(path, "rb", buffering=0) as fh:
            fh.readinto(buf)

    copy = path.with_name(path.name + ".floor")

    def write_fsync() -> None:
        with open(copy, "wb", buffering=0) as fh:
            fh.write(view)
            os.fsync(fh.fileno())
        copy.unlink()

    def read_fresh(hashed: bool) -> None:
        """Into memory that is new to this process, as a load's arrays are (4 MiB a read);
        ``hashed``: each chunk handed to BLAKE3 on one helper thread as soon as it is read."""
        hasher = blake3()
        out = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(AttributeError, OSError):
            out.madvise(mmap.MADV_HUGEPAGE)  # the cheapest fresh memory the kernel offers
        with ThreadPoolExecutor(1) as pool, open(path, "rb", buffering=0) as fh:
            got, target = 0, memoryview(out)
            while got < size:
                n = fh.readinto(target[got : got + FRESH_CHUNK])
                if hashed:
                    pool.submit(hasher.update, target[got : got + n])
                got += n
        hasher.digest()

    def blake3_mapped() -> None:
        with (
            open(path, "rb") as fh,
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as pages,
            memoryview(pages) as mapped,
        ):
            blake3(mapped, max_threads=blake3.AUTO).digest()

    read()
    view = memoryview(buf)
    steps = {
        "read into memory (page cache)": read,
        "write + fsync of the bytes alone": write_fsync,
        "SHA-256, one core": lambda: hashlib.sha256(view).digest(),
        "BLAKE3, one core": lambda: blake3(view).digest(),
        "BLAKE3, all cores": lambda: blake3(view, max_threads=blake3.AUTO).digest(),
        FRESH_READ: lambda: read_fresh(hashed=False),
        FRESH_READ_HASHED: lambda: read_fresh(hashed=True),
        MAPPED_BLAKE3: blake3_mapped,
    }
    fresh = (FRESH_READ, FRESH_READ_HASHED)
    return {
        name: summarize([_floor_call(fn, size if name in fresh else 0) for _ in range(max(3, repeats))])
        for name, fn in steps.items()
    }


def _floor_call(fn: Any, fresh_bytes: int) -> float:
    """One timed floor step; a step that reads into fresh memory gets warm free pages first,
    untimed, as every timed load does (:func:`warm_free_pages`)."""
    if fresh_bytes:
        warm_free_pages(fresh_bytes + WARM_MARGIN)
    return time_call(fn)


def run(settings: Settings, modelkeep: Any, objects: dict[str, Any]) -> dict[str, Any]:
    """Measure both large workloads."""
    return {label: _measure_one(label, obj, settings, modelkeep) for label, obj in objects.items()}
