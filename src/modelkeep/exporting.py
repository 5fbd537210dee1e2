"""Which compression a version exported to a file gets (``export_file``, ``modelkeep load --output``).

The exported file follows the stored version's compression where the file's kind allows
it, so a 68 KiB version does not come back as a 355 KB file; and it stays readable by
plain ``joblib.load`` / ``pickle.load`` outside modelkeep. :func:`export_compression`
says which codec, and why when it is not the stored one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .formats.joblib_format import JOBLIB_CODECS

logger = logging.getLogger("modelkeep")

#: A compressed suffix -> the joblib codec it names (``joblib.load`` reads these itself).
_JOBLIB_SUFFIXES = {".joblib.gz": "gzip:3", ".joblib.z": "zlib:3", ".joblib.zst": "zstd:3"}
#: What replaces a stored codec that plain ``joblib.load`` cannot read (modelkeep's zstd stream).
PORTABLE_JOBLIB_CODEC = "zlib:3"


def export_compression(
    filename: str, target_format: str, compressed_suffix: bool, stored_format: str, stored: str | None
) -> tuple[str | None, str]:
    """``(compression, note)`` for writing a version stored as ``stored_format``/``stored`` to
    ``filename`` in ``target_format``; ``note`` says what was chosen and why, for people."""
    lower = filename.lower()
    if target_format == "pickle":
        if compressed_suffix:
            return "gzip:6", "compressed with gzip:6 (.pkl.gz)"
        note = "uncompressed: a .pkl file is a plain pickle"
        return None, note + ("; use a .pkl.gz name to compress it" if stored else "")
    for suffix, codec in _JOBLIB_SUFFIXES.items():
        if compressed_suffix and lower.endswith(suffix):
            return codec, f"compressed with {codec} ({suffix})"
    if stored is None:
        return None, "uncompressed, as stored"
    codec = stored.split(":", 1)[0]
    if stored_format == "joblib" and codec in JOBLIB_CODECS:
        return stored, f"compressed with {stored}, as stored"
    return PORTABLE_JOBLIB_CODEC, (
        f"compressed with {PORTABLE_JOBLIB_CODEC}: the stored {stored} is not a codec plain joblib.load reads"
        if stored_format == "joblib"
        else f"compressed with {PORTABLE_JOBLIB_CODEC} (stored as {stored_format}, {stored})"
    )


def read_model_file(
    path: str | os.PathLike[str], trusted_types: list[str], trust_file: bool, max_load_memory: int | None
) -> Any:
    """A model read from a pickle or joblib file under the load policy (the built-in allow-list
    plus ``trusted_types``); ``trust_file`` reads it with plain ``joblib.load``, which runs any code
    it holds. What :meth:`ModelPersistence.read_file` and ``import_file`` do, locally or for a server."""
    from .errors import ArtifactNotFoundError, ModelKeepError, SerializationError, UnsafeModelError
    from .formats._restricted import TrustPolicy, joblib_load
    from .formats.state_checks import checked
    from .loading import describe_unreadable

    if not os.path.exists(path):
        raise ArtifactNotFoundError(f"Model file not found: {os.fspath(path)!r}")
    where = os.fspath(path)
    try:
        if trust_file:
            import joblib

            logger.info("reading %s with plain joblib.load (trust_file)", where)
            model = joblib.load(where)  # reads joblib and plain pickle files alike
        else:
            from .formats.budget import LoadBudget

            policy = TrustPolicy(frozenset(trusted_types))
            budget = LoadBudget.for_artifact(os.path.getsize(where), max_load_memory)
            model = checked(joblib_load(where, policy, budget=budget))
    except UnsafeModelError as exc:
        own = "use trust_file=True (modelkeep save --trust-file)"
        error = UnsafeModelError(
            f"{exc} To accept a file you wrote yourself, {own}.",
            cli={**exc.cli_spelling, own: "use --trust-file"},
        )
        error.refused = exc.refused
        raise error from exc
    except (ModelKeepError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:
        raise SerializationError(describe_unreadable(where, exc)) from exc
    return model


def write_export(
    registry: Any, model_name: str, version: str | None, output: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Load a version through ``registry`` (checked as any load) and write it to ``output`` in the
    format its suffix names; see :meth:`ModelPersistence.export_file`."""
    from .errors import StorageError, VersionExistsError
    from .formats import format_for_suffix, get_format
    from .storage.local import atomic_file

    out = Path(output)
    fmt_name, compressed = format_for_suffix(out.name)
    if out.is_dir():
        raise StorageError(f"output {str(out)!r} is a directory; give a file name such as model.joblib")
    if out.exists() and not force:
        raise VersionExistsError(
            f"output file {str(out)!r} already exists; pass force=True to replace it",
            cli={"force=True": "--force"},
        )
    model, record = registry.load(model_name, version, return_metadata=True)
    assert record.artifact is not None
    fmt = get_format(fmt_name)
    compression, note = export_compression(
        out.name, fmt_name, compressed, record.artifact.format, record.artifact.compression
    )
    with atomic_file(out) as f:
        fmt.dump(model, f, fmt.normalize_compression(compression or False))
    logger.info("exported %s version %s to %s, %s", record.model_name, record.version, out, note)
    return out
