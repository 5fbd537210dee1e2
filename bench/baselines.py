"""The raw baselines modelkeep is compared with: joblib and pickle protocol 5, each with fsync.

modelkeep may replace joblib's pickler and unpickler classes process-wide
(``joblib.numpy_pickle.NumpyPickler`` / ``NumpyUnpickler``) with subclasses of
its own. A user without modelkeep would not pay for those, so the joblib
baselines put joblib's own classes back for the duration of each call.
"""

from __future__ import annotations

import contextlib
import os
import pickle
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
