"""Quarantine loads: a version nobody trusted is first loaded in a short-lived child process.

A native parser (LightGBM, xgboost, a Cython ``__setstate__``) that meets a crafted file can
crash the process with a signal, loop forever or allocate without bound; no Python ``except``
catches that. :mod:`modelkeep.formats.native_checks` and the state checks refuse the crafted
files we know of; the quarantine covers the rest:

1. the caller reads the artifact and checks it against the index row's digests, as every load
   does, and copies those bytes into a sealed memory file (Linux ``memfd``: nothing on disk,
   unchangeable once sealed) handed to the child alone, or elsewhere into a private file in a
   fresh ``0700`` folder, which the child checks against the artifact's recorded SHA-256;
2. a fresh interpreter (``subprocess``: no fork of the caller, whatever threads it runs) caps
   its own address space (``RLIMIT_AS``), deserializes those bytes with the same format,
   trusted types and signature verdict, and runs a smoke ``predict`` on an input built from
   the version's input signature when it has one;
3. only a clean exit lets the caller load the version in its own process. A signal, the memory
   cap or the timeout is an :class:`~modelkeep.errors.UnsafeModelError` that names it
   ("crashed a quarantined test load (SIGSEGV)"); an error the load itself raised is raised
   again, as the same modelkeep error.

When it runs (:data:`MODES`, the ``quarantine`` setting, ``MODELKEEP_QUARANTINE``, the CLI's
``--quarantine``): ``"auto"`` (default) for versions without a signature by a key the reader
trusts, ``"always"``, or ``"never"``. A user's own versions (signed with the per-user key) and
versions signed by trusted keys skip it, so the everyday load costs nothing extra.

A server calls :func:`check_loadable` before it swaps a version in (``mode="always"`` to test
even signed versions), so a crafted version is refused while the old one keeps serving.
:func:`children_started` counts the child processes this process has started.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelKeepError, SerializationError, UnsafeModelError

if TYPE_CHECKING:
    from .metadata import ModelMetadata
    from .registry import ModelPersistence
    from .signing import Verdict

#: ``auto``: versions not signed by a trusted key; ``always``; ``never``.
MODES = ("auto", "always", "never")
#: Seconds a quarantined load (with its smoke predict) may take.
DEFAULT_TIMEOUT = 120.0
#: The child's address-space cap is at least this many bytes (importing torch alone maps ~1 GB) ...
MIN_MEMORY = 4 << 30
#: ... and at least this many times the artifact's size.
MEMORY_PER_BYTE = 16
#: Rows of the smoke-predict input built from an input signature.
SMOKE_ROWS = 2

_count = 0
#: A sealed memory file can no longer be written, shrunk or grown, nor its seals changed.
_SEALS = sum(getattr(fcntl, n, 0) for n in ("F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE"))


def children_started() -> int:
    """How many quarantine children this process has started (for tests and metrics)."""
    return _count


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`MODES`, else a :class:`ConfigError`."""
    if mode not in MODES:
        raise ConfigError(f"quarantine must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return str(mode)


def needed(mode: str, verdict: Verdict) -> bool:
    """Whether a version with signature ``verdict`` is loaded in quarantine first under ``mode``."""
    return mode == "always" or (mode == "auto" and not verdict.trusted)


def memory_cap(size: int, configured_mb: int | None = None) -> int:
    """The child's address-space cap in bytes for an artifact of ``size`` bytes (``configured_mb``
    MiB when set, else :data:`MIN_MEMORY` or :data:`MEMORY_PER_BYTE` times the size)."""
    if configured_mb:
        return int(configured_mb) << 20
    return max(MIN_MEMORY, MEMORY_PER_BYTE * size)


@dataclass
class QuarantineReport:
    """What a quarantined load found: it loaded, and whether the smoke predict ran."""

    model_name: str
    version: str
    predicted: bool
    #: Why the smoke predict did not run or failed (an exception in Python, not a crash), if so.
    predict_note: str | None
    seconds: float


def check_loadable(
    persistence: ModelPersistence,
    model_name: str,
    version: str | None = None,
    *,
    alias: str | None = None,
    mode: str | None = None,
) -> QuarantineReport | None:
    """Load a version in a quarantined child and report; ``None`` when ``mode`` (default: the
    registry's ``quarantine`` setting) says this version needs no quarantine.

    For a server: call this before swapping a version in (``mode="always"`` to test signed
    versions too), and keep the old version when it raises :class:`UnsafeModelError`."""
    record = persistence.get_version(model_name, version, alias=alias)
    verdict = persistence.keyring.check(record)
    return screen(persistence, record, verdict, mode=mode)


def screen(
    persistence: ModelPersistence, record: ModelMetadata, verdict: Verdict, *, mode: str | None = None
) -> QuarantineReport | None:
    """:meth:`ModelPersistence.load`'s hook: under ``mode`` (default: the registry's setting),
    load ``record`` in a quarantined child first; raise if it crashes, return otherwise."""
    mode = check_mode(mode if mode is not None else persistence.quarantine)
    if not needed(mode, verdict):
        return None
    from .formats import FORMATS, get_format
    from .storage.hashing import Expected

    art = record.artifact
    assert art is not None
    fmt = get_format(art.format)
    where = f"model '{record.model_name}' version '{record.version}'"
    folder = tempfile.mkdtemp(prefix="modelkeep-quarantine-")  # mode 0700, ours alone
    source: dict[str, Any] = {}
    try:
        with persistence.store.open_artifact(art.key, Expected.of(art.sha256, art.size, art.extra)) as verified:
            source = _copy_verified(verified, folder)
        job: dict[str, Any] = {
            **source,
            "sha256": art.sha256,  # the whole artifact's, as recorded (and signed, when it is)
            "format": art.format,
            "compression": art.compression,
            "extra": art.extra,
            "trusted": list(persistence.trusted_types),
            "signed": verdict.trusted,
            "max_load_memory": getattr(persistence, "max_load_memory", None),
            "input_signature": record.input_signature,
            "result": os.path.join(folder, "result.json"),
            "formats": {k: v for k, v in FORMATS.items() if isinstance(v, str)},  # formats the caller added too
        }
        if fmt.uses_blobs:
            job["blobs"] = _blob_root(persistence, art.extra, folder)
        timeout = float(persistence.quarantine_timeout)
        cap = memory_cap(art.size, persistence.quarantine_memory_mb)
        return _run(job, folder, where, timeout, cap, record)
    finally:
        if "fd" in source:
            os.close(source["fd"])
        shutil.rmtree(folder, ignore_errors=True)


def _copy_verified(verified: Any, folder: str) -> dict[str, Any]:
    """Copy a :class:`VerifiedArtifact`'s bytes (payload buffers at their offsets) for the child:
    into a sealed memory file (Linux: nothing on disk, and no one can change it once sealed),
    else into a private file in ``folder``. Returns how the child finds it (``fd`` or ``path``)."""
    sealing = hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")
    if sealing:
        fd = os.memfd_create("modelkeep-artifact", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        where: dict[str, Any] = {"fd": fd}
    else:
        path = os.path.join(folder, "artifact")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        where = {"path": path}
    source = verified.file
    source.seek(0)
    try:
        with open(fd, "wb", closefd=not sealing) as out:
            while chunk := source.read(1 << 22):
                out.write(chunk)
            for start, (_s, data_start, _end) in verified.ranges.items():
                out.seek(data_start)
                out.write(verified.buffers[start])
        if sealing:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        if sealing:
            os.close(fd)
        raise
    source.seek(0)
    return where


def _blob_root(persistence: ModelPersistence, extra: dict[str, Any], folder: str) -> str:
    """A local folder the child reads the ``native`` format's blobs from: the store itself when
    it is local (every blob is re-hashed on read), else a private copy of the verified blobs."""
    from .blobs import BlobStore
    from .layout import blob_key

    root = getattr(persistence.store, "root", None)
    if isinstance(root, str) and persistence.store.local_path(blob_key("0" * 64)) is not None:
        return root
    blobs = BlobStore(persistence.store, getattr(persistence, "cache", None))  # through the local cache
    for sha, size in extra.get("blobs") or []:
        target = os.path.join(folder, "blobs", blob_key(str(sha)))
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        with open(target, "wb") as out:
            out.write(blobs.read(str(sha), int(size), verify=True))
    return os.path.join(folder, "blobs")


#: The child's first lines: cap its address space before anything is imported or read.
_CHILD = (
    "import resource, sys\n"
    "cap = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "from modelkeep.quarantine import child_main\n"
    "child_main()\n"
)
#: ``-P``: the child's working folder (ours, private) is not put on ``sys.path``.
_PYTHON_FLAGS = ["-P"] if sys.version_info >= (3, 11) else []


def _run(
    job: dict[str, Any], folder: str, where: str, timeout: float, cap: int, record: ModelMetadata
) -> QuarantineReport:
    import time

    global _count
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # a smoke test, and each thread's stack counts against the cap
    # The caller's import path, so the child finds the same modules (a trusted type defined in
    # the caller's project, modelkeep itself when the caller put it on sys.path).
    caller = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join([p for p in (env.get("PYTHONPATH", ""), *caller) if p])
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *_PYTHON_FLAGS, "-c", _CHILD, str(cap)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=folder,
        close_fds=True,
        pass_fds=(job["fd"],) if "fd" in job else (),
    )
    _count += 1
    log = _Tail(proc.stderr)
    # Fed from a thread, so that a child that never reads cannot block us past the timeout.
    threading.Thread(target=_feed, args=(proc.stdin, json.dumps(job).encode()), daemon=True).start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise UnsafeModelError(
            f"refused to load: {where} did not finish a quarantined test load within {timeout:g} s "
            "(quarantine_timeout): a crafted model can loop forever; raise quarantine_timeout if it is "
            "just slow to load"
        ) from None
    finally:
        log.join(5)  # a grandchild may hold stderr open: what was read by then is enough
    seconds = time.perf_counter() - started
    result = _read_result(job["result"])
    tail = log.text()
    if proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        memory = " near its memory cap" if _looks_out_of_memory(tail) else ""
        raise UnsafeModelError(
            f"refused to load: {where} crashed a quarantined test load ({name}{memory}; cap "
            f"{cap >> 20} MiB, quarantine_memory_mb): loading it in this process could crash it too"
        )
    if result is None or proc.returncode not in (0, 3):
        what = (
            f"ran out of memory under its cap of {cap >> 20} MiB (quarantine_memory_mb)"
            if _looks_out_of_memory(tail)
            else f"exited with status {proc.returncode}"
        )
        raise UnsafeModelError(f"refused to load: {where} {what} in a quarantined test load: {tail[-300:]!r}")
    if not result.get("ok"):
        _reraise(result, where, cap)
    return QuarantineReport(
        model_name=record.model_name,
        version=record.version,
        predicted=bool(result.get("predicted")),
        predict_note=result.get("predict_note"),
        seconds=seconds,
    )


def _read_result(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _feed(stream: Any, data: bytes) -> None:
    # BrokenPipeError, OSError: a child that died at once is judged by its exit instead
    with contextlib.suppress(BrokenPipeError, OSError), stream:
        stream.write(data)


class _Tail(threading.Thread):
    """Reads a child's stderr to the end, keeping only its last bytes (a crafted model may
    print without end; neither memory nor a disk fills up with it)."""

    KEEP = 4096

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.kept = b""
        self.start()

    def run(self) -> None:
        with self.stream:
            while chunk := self.stream.read1(1 << 16):
                self.kept = (self.kept + chunk)[-self.KEEP :]

    def text(self) -> str:
        return self.kept.decode("utf-8", "replace")


def _looks_out_of_memory(text: str) -> bool:
    text = text.lower()
    return any(s in text for s in _OUT_OF_MEMORY)


_OUT_OF_MEMORY = (
    "memoryerror",
    "bad_alloc",
    "cannot allocate memory",
    "out of memory",
    "memory alloc",
    "failed to map segment",  # a shared library that no longer fits under the cap
)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _reraise(result: dict[str, Any], where: str, cap: int) -> None:
    """Raise in the caller the modelkeep error the child's load raised."""
    from . import errors

    name = str(result.get("error", ""))
    message = str(result.get("message", ""))
    if name == "MemoryError" or (name != "UnsafeModelError" and _looks_out_of_memory(message)):
        raise UnsafeModelError(
            f"refused to load: {where} ran out of memory under its cap of {cap >> 20} MiB (quarantine_memory_mb) "
            "in a quarantined test load"
        )
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ModelKeepError):
        try:
            error = cls(message)
        except TypeError:  # an error that carries more than a message
            error = None
        if error is not None:
            error.cli_spelling = {str(k): str(v) for k, v in (result.get("cli") or {}).items()}
            if isinstance(error, UnsafeModelError):
                error.refused = tuple(str(n) for n in result.get("refused") or ())
            raise error
    raise SerializationError(f"cannot deserialize the artifact: {name}: {message}")


# -- the child ----------------------------------------------------------------------------


def child_main() -> None:
    """The quarantined child: read a job on stdin, load, smoke-predict, write the result.

    Exit 0 after a clean load, 3 after an error the load raised in Python (reported in the
    result file); a crash ends it with a signal, which the parent names."""
    job = json.loads(sys.stdin.buffer.read())
    result: dict[str, Any]
    try:
        model = _child_load(job)
        result = {"ok": True, **_smoke_predict(model, job.get("input_signature"))}
        code = 0
    except MemoryError:
        result, code = {"ok": False, "error": "MemoryError", "message": ""}, 3
    except Exception as exc:
        result, code = {"ok": False, "error": type(exc).__name__, "message": str(exc)[:2000]}, 3
        # what a remedy needs (modelkeep.remedies): the refused names and the CLI spelling
        result["refused"] = [str(n) for n in getattr(exc, "refused", ())]
        result["cli"] = {str(k): str(v) for k, v in getattr(exc, "cli_spelling", {}).items()}
    with open(job["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: a library's exit handlers are not part of the test


def _child_load(job: dict[str, Any]) -> Any:
    from .errors import IntegrityError
    from .formats import FORMATS, get_format

    FORMATS.update(job.get("formats") or {})
    if "fd" in job:
        fd = int(job["fd"])
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
            raise IntegrityError("the quarantined copy of the artifact is not sealed")
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb") as f:
            data = f.read()
    else:
        with open(job["path"], "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != job["sha256"]:  # exactly the bytes the caller checked
            raise IntegrityError("the quarantined copy of the artifact is not the recorded artifact")
    options: dict[str, Any] = {
        "extra": job["extra"],
        "trusted": job["trusted"],
        "signed": job["signed"],
        "max_load_memory": job.get("max_load_memory"),  # the same budget as the caller's load
    }
    fmt = get_format(job["format"])
    if "blobs" in job:
        from .blobs import BlobStore
        from .storage.local import LocalStore

        options["blobs"] = BlobStore(LocalStore(job["blobs"]))
    import io

    try:
        return fmt.load(io.BytesIO(data), job["compression"], **options)
    except ModelKeepError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise SerializationError(f"cannot deserialize the artifact: {exc}") from exc


def smoke_input(signature: dict[str, Any] | None) -> Any:
    """A tiny input (:data:`SMOKE_ROWS` rows of zeros) shaped like ``signature``, or ``None``."""
    if not signature:
        return None
    import numpy as np

    columns = signature.get("columns")
    if columns:
        import pandas as pd

        data: dict[str, Any] = {}
        for col in columns:
            dtype = str(col.get("dtype", "float64"))
            try:
                data[str(col["name"])] = np.zeros(SMOKE_ROWS, dtype=dtype)
            except TypeError:
                data[str(col["name"])] = pd.Series([None] * SMOKE_ROWS, dtype=dtype if dtype != "object" else object)
        return pd.DataFrame(data)
    shape = signature.get("shape")
    dtype = str(signature.get("dtype", "float64"))
    if isinstance(shape, list) and len(shape) >= 2 and all(isinstance(d, int) for d in shape[1:]):
        dims = [SMOKE_ROWS, *shape[1:]]
    elif isinstance(signature.get("n_features"), int):
        dims = [SMOKE_ROWS, signature["n_features"]]
    else:
        return None
    try:
        return np.zeros(dims, dtype=dtype)
    except TypeError:
        return np.zeros(dims)


def _smoke_predict(model: Any, signature: dict[str, Any] | None) -> dict[str, Any]:
    """Run ``predict`` once on :func:`smoke_input`. A Python exception is noted, not fatal
    (the input is made up); a crash or a hang ends the child, which the parent reports."""
    X = smoke_input(signature)
    if X is None:
        return {"predicted": False, "predict_note": "the version has no input signature"}
    predict = getattr(model, "inplace_predict", None) if type(model).__module__ == "xgboost.core" else None
    predict = predict or getattr(model, "predict", None)
    if not callable(predict):
        return {"predicted": False, "predict_note": f"{type(model).__name__} has no predict"}
    try:
        if type(model).__module__.startswith("keras"):
            predict(X, verbose=0)
        else:
            predict(X)
    except MemoryError:
        raise
    except Exception as exc:
        return {"predicted": False, "predict_note": f"predict raised {type(exc).__name__}: {str(exc)[:200]}"}
    return {"predicted": True, "predict_note": None}
