"""What ``load(..., mmap_mode=...)`` does, said in one place.

* ``None``: read the artifact into memory.
* ``"r"``: map uncompressed joblib arrays (and native blobs) read-only. Objects
  that insist on writable buffers (statsmodels' ARIMA results) are mapped
  copy-on-write instead, with a logged note.
* ``"c"``: copy-on-write mapping; the file is never written.
* anything else (``"r+"``, ``"w+"``, typos): :class:`ConfigError`, before anything is read,
  whatever the format, because a registry artifact must never be written through a map.

When an artifact cannot be mapped (compressed, the pickle format, a remote store,
a framework's own format) it is read into memory and one
:class:`MmapIgnoredWarning` says why.
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import ConfigError

MMAP_MODES = ("r", "c")


class MmapIgnoredWarning(UserWarning):
    """``mmap_mode`` was given but the artifact was read into memory instead."""


def check_mmap_mode(mmap_mode: Any) -> None:
    """Refuse every ``mmap_mode`` but ``None``, ``"r"`` and ``"c"``."""
    if mmap_mode is not None and mmap_mode not in MMAP_MODES:
        raise ConfigError(
            f"mmap_mode must be None, 'r' (read-only) or 'c' (copy-on-write), got {mmap_mode!r}: "
            "stored artifacts are never written through a map"
        )


def warn_mmap_ignored(mmap_mode: str | None, fmt: Any, artifact: Any, is_local: bool, expected: Any = None) -> None:
    """Warn when ``mmap_mode`` is set but this artifact will be read into memory.

    ``expected`` (the artifact's :class:`~modelkeep.storage.hashing.Expected`) tells an
    uncompressed joblib artifact with no payload ranges apart: it has no array big enough
    to map, or was saved before 0.2, and it is read into private memory once, so that the
    bytes parsed are the bytes hashed (mapping it by path would parse the file a second time)."""
    if mmap_mode is None or getattr(fmt, "uses_blobs", False):  # native maps its blobs itself
        return
    if not is_local:
        reason = "it is on a remote store"
    elif artifact.compression is not None and fmt.name in ("joblib", "pickle"):
        reason = f"it is compressed ({artifact.compression}); save with compress=False to map it"
    elif fmt.supports_mmap(artifact.compression) and expected is not None and not expected.fast:
        reason = (
            "it was saved before modelkeep 0.2, so no array ranges were recorded to check it by "
            "(save it again to map it)"
        )
    elif fmt.supports_mmap(artifact.compression) and expected is not None:
        reason = "it holds no array large enough to map (64 KiB or more), so there is nothing to map"
    else:
        reason = f"the {fmt.name} format cannot be memory-mapped (use joblib with compress=False, or native)"
    warnings.warn(
        MmapIgnoredWarning(f"mmap_mode={mmap_mode!r} ignored for {artifact.key}: {reason}; it was read into memory"),
        stacklevel=3,
    )


def describe_unreadable(path: str, exc: Exception) -> str:
    """Why ``path`` could not be read as a pickle/joblib model, saying what the file is."""
    import json

    what = None
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        head = b""
    if not head:
        what = "it is empty"
    else:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            try:
                json.loads(text)
                what = "it is a JSON document"
            except ValueError:
                what = "it is a JSON document" if text.lstrip()[:1] in "{[" else "it is a text file"
    if what is None:
        return f"cannot read a model from {path!r}: {type(exc).__name__}: {exc}"
    return (
        f"cannot read a model from {path!r}: {what}, not a model file; "
        "expected a model written with pickle.dump or joblib.dump (.pkl or .joblib)"
    )


def refuse_unloadable(obj: Any, format_name: str) -> None:
    """Refuse, before anything is written, objects this format would store but never load:
    a Keras model pickles fine, but its pickle needs ``builtins.getattr`` to load, which the
    unpickler refuses; the ``keras`` format (or ``auto``) stores it safely."""
    if format_name in ("joblib", "pickle", "native") and any(
        c.__module__.split(".", 1)[0] == "keras" and c.__name__ == "Model" for c in type(obj).__mro__
    ):
        from .errors import SerializationError

        raise SerializationError(
            f"a Keras model saved with the {format_name} format could never be loaded (its pickle calls "
            "builtins.getattr): use serialization_format='keras' or 'auto'"
        )


def warn_main_globals(extra: dict[str, Any]) -> None:
    """Warn when the artifact references classes or functions defined in ``__main__``: they
    exist only in the script that saved them, so any other program fails to load the model."""
    found = sorted(str(g) for g in extra.get("globals") or [] if str(g).startswith("__main__."))
    if found:
        warnings.warn(
            f"the model references {', '.join(found)}, defined in the running script (__main__): "
            "other programs cannot load it; define these in an importable module instead",
            UserWarning,
            stacklevel=4,
        )
