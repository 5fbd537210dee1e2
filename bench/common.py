"""Shared helpers for the benchmark suite: paths, settings, timing and small utilities.

Every measurement module takes a :class:`Settings` and returns plain JSON-ready
dicts, so ``run.py`` can store them and ``report.py`` can render them.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SRC_DIR = REPO_ROOT / "src"
#: Scratch space on the same disk as the repository, so fsync reaches a real disk.
TMP_ROOT = BENCH_DIR / ".tmp"
#: Expensive workloads (the big forest) are cached here between runs.
CACHE_DIR = TMP_ROOT / "cache"

MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts for one run; ``quick`` shrinks everything for a smoke run."""

    quick: bool = False
    small_repeats: int = 15
    small_model_repeats: int = 31
    large_repeats: int = 5
    index_versions: int = 10_000
    index_window: int = 500
    index_time_budget_s: float = 360.0
    forest_target_mb: int = 110
    arrays_mb: int = 200
    dedup_versions: int = 10
    mlflow_small_repeats: int = 15
    mlflow_large_repeats: int = 3

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        """Full settings, or the reduced ones used by ``--quick``."""
        if not quick:
            return cls()
        return cls(
            quick=True,
            small_repeats=5,
            small_model_repeats=5,
            large_repeats=2,
            index_versions=1_000,
            index_window=100,
            index_time_budget_s=120.0,
            forest_target_mb=20,
            arrays_mb=40,
            dedup_versions=3,
            mlflow_small_repeats=3,
            mlflow_large_repeats=0,
        )


def ensure_modelkeep_importable() -> None:
    """Put ``src/`` on ``sys.path`` when modelkeep is not installed (e.g. no ``pip install -e``)."""
    if str(SRC_DIR) not in sys.path:
        sys.path.insert(0, str(SRC_DIR))


def load_modelkeep() -> tuple[Any, str | None]:
    """Import modelkeep, returning ``(module, None)`` or ``(None, reason)`` when it cannot be used."""
    ensure_modelkeep_importable()
    try:
        import modelkeep

        modelkeep.ModelPersistence  # noqa: B018 - the contract's entry point must exist
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return modelkeep, None


def subprocess_env() -> dict[str, str]:
    """The environment for helper subprocesses: ``src/`` and ``bench/`` importable."""
    env = dict(os.environ)
    parts = [str(SRC_DIR), str(BENCH_DIR)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under ``bench/.tmp`` that is removed afterwards."""
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=TMP_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and count of a list of durations in seconds."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def time_call(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of ``fn``, measured with ``time.perf_counter``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_interleaved(
    cases: dict[str, Callable[[int], object]],
    repeats: int,
    warmup: int = 1,
    before: Callable[[str, int], object] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several cases side by side and return a :func:`summarize` dict per case.

    Repetition ``i`` runs every case once, rotating the order each time, so slow
    drifts of a shared machine hit every case alike. Each case is called with a
    unique integer (warm-up calls get negative ones) so it can pick a fresh file
    name or version. ``before(case, i)`` runs untimed ahead of each call. A case
    that raises is dropped and reported as ``{"error": ...}`` instead of timings.
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for i in range(-warmup, repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            try:
                elapsed = _timed_case(cases[name], i, name, before)
            except Exception as exc:
                errors[name] = error_text(exc)
                continue
            if i >= 0:
                samples[name].append(elapsed)
    return {name: {"error": errors[name]} if name in errors else summarize(samples[name]) for name in names}


def _timed_case(case: Callable[[int], object], i: int, name: str, before: Callable[[str, int], object] | None) -> float:
    """Run ``before`` untimed, collect garbage, then time one call of ``case``."""
    if before is not None:
        before(name, i)
    gc.collect()
    return time_call(lambda: case(i))


def fsync_latency(root: Path, samples: int = 21) -> dict[str, Any]:
    """Median time to write 4 KB to a new file and fsync it: the disk's mood right now.

    Small saves are dominated by fsync calls, and on a shared machine their cost
    changes by several times from minute to minute; this puts a number on it.
    """
    durations = []
    for i in range(samples):
        path = root / f"fsync-probe-{i}"
        began = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        durations.append(time.perf_counter() - began)
        path.unlink()
    return summarize(durations)


def tree_size(path: Path) -> int:
    """Total size in bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict_from_page_cache(path: Path) -> None:
    """Ask the kernel to drop cached pages of every file under ``path`` (best effort).

    Dropping all OS caches needs privileges a benchmark should not use, so this
    uses ``posix_fadvise(DONTNEED)`` per file; the hypervisor may still cache.
    """
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def error_text(exc: BaseException) -> str:
    """A one-line description of an exception for the report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def log(message: str) -> None:
    """Progress output on stderr so stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
