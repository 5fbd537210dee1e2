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
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import MetadataError

#: Fingerprint layout version, part of the hashed bytes.
FINGERPRINT_VERSION = 1


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


def _git_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _git_status(where: Path) -> dict[str, Any] | None:
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    commit = branch = None
    dirty = False
    for line in proc.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split(" ", 2)[2]
        elif line.startswith("# branch.head "):
            branch = line.split(" ", 2)[2]
        elif line and not line.startswith("#"):
            dirty = True
    if commit is None or commit == "(initial)":
        return None
    return {"commit": commit, "dirty": dirty, "branch": None if branch == "(detached)" else branch}


@functools.lru_cache(maxsize=4)
def _which_git(path: str | None) -> str | None:
    """Where ``git`` is on ``path`` (looked up once per PATH: each save asks)."""
    return shutil.which("git", path=path)


def start_git(cwd: str | os.PathLike[str] | None = None) -> Future[dict[str, Any] | None] | None:
    """Start reading the git state of the repository around ``cwd`` (default: the working
    directory) on a helper thread, so it runs while the model is serialized; ``None``
    outside a repository, without git, or with ``MODELKEEP_GIT=0``. See :func:`finish_git`."""
    global _executor, _executor_pid
    if os.environ.get("MODELKEEP_GIT", "1") == "0":
        return None
    where = Path(cwd) if cwd is not None else Path.cwd()
    if _git_root(where.resolve()) is None or _which_git(os.environ.get("PATH")) is None:
        return None
    if _executor is None or _executor_pid != os.getpid():  # a forked child has no worker thread
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelkeep-git")
        _executor_pid = os.getpid()
    return _executor.submit(_git_status, where)


def finish_git(pending: Future[dict[str, Any] | None] | None) -> dict[str, Any] | None:
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
