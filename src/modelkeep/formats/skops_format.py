"""skops: a zip of JSON and arrays for scikit-learn models, loaded without unpickling.

skops only constructs types it trusts: its own default list (scikit-learn,
numpy, scipy and builtins it knows are safe), the types of modelkeep's built-in
allow-list (so a forest loads from skops as it does from joblib, with the same
native-state checks), plus the types the *caller* names. modelkeep takes those
from ``ModelPersistence(trusted_types=...)`` or the ``trusted_types`` config key,
never from the artifact or its metadata, so a stored file cannot vouch for itself
(compare mlflow PR #25686).
"""

from __future__ import annotations

import importlib
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from ..errors import BackendUnavailableError, ConfigError, SerializationError, UnsafeModelError
from . import state_checks
from .allowlist import BUILTIN_ALLOWLIST
from .base import Format, Writable

if TYPE_CHECKING:
    from ..blobs import BlobStore

#: codec name -> zipfile compression constant.
CODECS = {"deflate": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}
DEFAULT_CODEC = "deflate"
DEFAULT_LEVEL = 6
#: The dump is buffered in memory up to this size (then on disk) to check it before it is stored.
SPOOL_MAX_BYTES = 64 << 20


def _resolves(module: str, qualname: str) -> bool:
    """Whether ``module.qualname`` can be imported by name, as skops will do at load."""
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return False
    return True


def _unloadable(node: Any, seen: dict[tuple[str, str], bool]) -> Iterator[str]:
    """Types and functions in a skops schema that cannot be imported by name (lambdas, local
    functions, ``_thread.lock``): skops writes them without complaint, but can never load them."""
    if isinstance(node, dict):
        module, cls = node.get("__module__"), node.get("__class__")
        if isinstance(module, str) and isinstance(cls, str):
            key = (module, cls)
            if key not in seen:
                seen[key] = _resolves(module, cls)
            if not seen[key]:
                yield f"{module}.{cls}"
        for value in node.values():
            yield from _unloadable(value, seen)
    elif isinstance(node, list):
        for value in node:
            yield from _unloadable(value, seen)


#: The general advice of a refusal (:mod:`modelkeep.remedies` replaces it with the exact fix).
HOW_TO_TRUST = (
    "Review them; if you trust them, pass trusted_types=[...] to ModelPersistence (or set trusted_types in the config)."
)


def _skops() -> Any:
    """The ``skops`` package, or :class:`BackendUnavailableError` naming the extra to install."""
    try:
        import skops.io
    except ImportError as exc:
        raise BackendUnavailableError(
            f'the skops format needs the skops package ({exc}): pip install "modelkeep[skops]"'
        ) from exc
    return skops


def builtin_allows_type(dotted: str) -> bool:
    """Whether a skops type name (``"sklearn.tree._tree.Tree"``) is in modelkeep's built-in
    allow-list, the list a joblib or pickle load of the same model trusts."""
    parts = dotted.split(".")
    return any((".".join(parts[:i]), ".".join(parts[i:])) in BUILTIN_ALLOWLIST for i in range(1, len(parts)))


class SkopsFormat(Format):
    """``skops.io.dump`` / ``skops.io.load``: no pickle, only trusted types are built."""

    name = "skops"

    def extension(self, compression: str | None) -> str:
        return ".skops"

    def normalize_compression(self, compress: Any) -> str | None:
        if compress is None or compress is False or compress == 0:
            return None
        if compress is True:
            codec, level = DEFAULT_CODEC, DEFAULT_LEVEL
        elif isinstance(compress, int):
            codec, level = DEFAULT_CODEC, compress
        elif isinstance(compress, str):
            name, _, lvl = compress.partition(":")
            codec, level = name, int(lvl) if lvl else DEFAULT_LEVEL
        elif isinstance(compress, (tuple, list)) and len(compress) == 2:
            codec, level = str(compress[0]), int(compress[1])
        else:
            raise ConfigError(f"compress must be a bool, a level, a codec name or (codec, level); got {compress!r}")
        if codec not in CODECS:
            raise ConfigError(f"unknown skops codec {codec!r}; allowed values: {', '.join(CODECS)}")
        if not 1 <= level <= 9:
            raise ConfigError(f"compression level must be 1 to 9, got {level}")
        return f"{codec}:{level}"

    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        """Write ``obj`` as a skops zip; refuses objects skops could write but never load."""
        skops = _skops()

        if compression is None:
            kwargs: dict[str, Any] = {"compression": zipfile.ZIP_STORED}
        else:
            codec, level = compression.split(":")
            kwargs = {"compression": CODECS[codec], "compresslevel": int(level)}
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
            skops.io.dump(obj, spool, **kwargs)
            spool.seek(0)
            with zipfile.ZipFile(spool) as zf:
                schema = json.loads(zf.read("schema.json"))
            bad = sorted(set(_unloadable(schema, {})))
            if bad:
                raise SerializationError(
                    f"skops cannot load {', '.join(bad)} back: it is not importable by name "
                    "(a lambda, a local function, or an object skops cannot rebuild)"
                )
            spool.seek(0)
            shutil.copyfileobj(spool, file, 1 << 20)
        return None

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        """Load with skops, trusting its defaults plus ``trusted`` (from the caller or config).

        An artifact with any other type raises :class:`UnsafeModelError` naming the types.
        """
        skops = _skops()
        from skops.io.exceptions import UntrustedTypesFoundException

        trusted = [str(t) for t in options.get("trusted") or []]
        data = file.read()
        found = skops.io.get_untrusted_types(data=data)
        untrusted = [t for t in found if t not in trusted and not builtin_allows_type(t)]
        if untrusted:
            error = UnsafeModelError(
                f"refused to load: the skops artifact contains types that are not trusted: {', '.join(untrusted)}. "
                f"{HOW_TO_TRUST} modelkeep never takes trusted types from the artifact.",
                cli={"pass trusted_types=[...] to ModelPersistence": "pass --trust TYPE"},
            )
            error.refused = tuple(untrusted)
            raise error
        # Types of modelkeep's built-in allow-list load from skops as they do from joblib,
        # and their native state is checked like an unpickled one.
        accepted = [*trusted, *(t for t in found if t not in trusted)]
        try:
            obj = skops.io.load(io.BytesIO(data), trusted=accepted or None)
        except UntrustedTypesFoundException as exc:  # pragma: no cover - caught by the audit above
            raise UnsafeModelError(f"refused to load: {exc}") from exc
        # skops rebuilds native objects (trees, KD trees, sparse matrices) from unchecked arrays
        state_checks.check_loaded(obj)
        return obj
