"""``ModelPersistence``: the facade that composes format, storage and index.

Save:  object -> format.dump -> bytes hashed as they stream to a staged file
       -> (write lock) allocate version -> sidecar JSON -> rename into place
       -> index row -> commit.
Load:  index row -> (signature) -> open artifact -> SHA-256 check -> deserialize.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import environment, signing, timeouts
from .errors import (
    ModelKeepError,
    RegistryNotFoundError,
    SerializationError,
    StorageError,
    VersionExistsError,
)
from .formats import Format, format_for_suffix, get_format
from .index import SqlIndex
from .index.sql import record_blobs
from .metadata import ArtifactInfo, ModelMetadata, ModelSummary, to_json_safe, utc_now
from .storage import ArtifactStore
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    import pandas as pd

    from .index.claims import VersionClaim
    from .maintenance import GcReport, VerifyReport
    from .storage import StagedArtifact

logger = logging.getLogger("modelkeep")

Advance = Callable[[int], None]
#: ``progress(description, total_bytes_or_None)`` -> context manager yielding ``advance(n)``.
ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Advance]]


@contextlib.contextmanager
def _no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


def artifact_key(model_name: str, version: str, extension: str) -> str:
    """The seed's layout: ``<name>/<version>/<name>_v<version><ext>``."""
    return f"{model_name}/{version}/{model_name}_v{version}{extension}"


def revision_key(model_name: str, version: str, extension: str) -> str:
    """A fresh key for an overwrite, beside the usual one: ``<name>/<version>/<name>_v<version>.r<hex><ext>``."""
    return f"{model_name}/{version}/{model_name}_v{version}.r{uuid.uuid4().hex[:12]}{extension}"


def sidecar_key(model_name: str, version: str) -> str:
    return f"{model_name}/{version}/{model_name}_v{version}_metadata.json"


def _model_params(model: Any) -> dict[str, Any] | None:
    get_params = getattr(model, "get_params", None)
    if not callable(get_params):
        return None
    try:
        params = get_params(deep=False)
    except TypeError:
        params = get_params()
    except Exception:  # a broken get_params must not block saving the model
        return None
    out: dict[str, Any] = {}
    for k, v in dict(params).items():
        try:
            out[str(k)] = to_json_safe(v, f"model_params.{k}")
        except ModelKeepError:
            out[str(k)] = repr(v)  # estimators-in-estimators, callables: keep a readable trace
    return out


class ModelPersistence:
    """Save, version, find, compare and load models in one registry.

    Args:
        models_dir: where artifacts go: a local folder or any fsspec URL.
        serialization_format: ``"joblib"`` (default) or ``"pickle"``.
        compress: ``True`` for the format's default codec, ``False``, or a
            codec spec such as ``("zlib", 3)``, ``"lz4:1"`` or a level.
        registry_path: folder of the embedded SQLite index (default: ``models_dir``).
        registry_url: a SQLAlchemy URL for a shared index (PostgreSQL); wins
            over ``registry_path``.
        storage_options: passed to fsspec (endpoints, credentials).
        signing_key: when set, every save is signed and every load verified.
        progress: a progress-bar factory; see :data:`ProgressFactory`.
        index_schema: PostgreSQL schema for the index tables (default: the search path).
        create: create the embedded registry if it does not exist; with ``False``
            a missing ``registry.db`` raises :class:`RegistryNotFoundError`.
        trusted_types: extra types the ``skops`` format may construct at load
            (beyond skops' own safe defaults). They come only from here or the
            config, never from an artifact or its metadata.
        connect_timeout, read_timeout: seconds to wait for S3 and PostgreSQL to
            connect and to answer (see :mod:`modelkeep.timeouts`).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] = "models",
        serialization_format: str = "joblib",
        compress: Any = True,
        registry_path: str | os.PathLike[str] | None = None,
        *,
        registry_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        signing_key: str | bytes | None = None,
        progress: ProgressFactory | None = None,
        index_schema: str | None = None,
        trusted_types: list[str] | None = None,
        create: bool = True,
        connect_timeout: float = timeouts.CONNECT_TIMEOUT,
        read_timeout: float = timeouts.READ_TIMEOUT,
    ) -> None:
        self.format: Format = get_format(serialization_format)
        self.compression = self.format.normalize_compression(compress)
        self.compress = compress
        self.store = ArtifactStore(
            models_dir, storage_options, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.models_dir = Path(self.store.root) if self.store.is_local else self.store.url
        if registry_url is None:
            if not self.store.is_local and registry_path is None:
                from .errors import ConfigError

                raise ConfigError(
                    f"models_dir {self.store.url!r} is remote but no registry_url is set: "
                    "point registry_url at a shared database (for example PostgreSQL), or pass "
                    "registry_path to keep a local, per-machine index on purpose"
                )
            folder = Path(registry_path) if registry_path is not None else Path(self.store.root)
            if not create and not (folder / "registry.db").is_file():
                raise RegistryNotFoundError(
                    f"no modelkeep registry at {str(folder)!r} (registry.db not found): "
                    "check models_dir, or save a model first"
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    exc.errno, f"cannot create the registry folder {str(folder)!r}: {exc.strerror or exc}"
                ) from exc
            registry_url = f"sqlite:///{folder.resolve() / 'registry.db'}"
        self.index = SqlIndex(
            registry_url, schema=index_schema, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.signing_key = signing_key or None
        self.trusted_types: list[str] = list(trusted_types or [])
        self._progress: ProgressFactory = progress or _no_progress

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Release database connections."""
        self.index.close()

    def __enter__(self) -> ModelPersistence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelPersistence(models_dir={str(self.models_dir)!r}, registry={self.index.safe_url!r})"

    # -- saving -------------------------------------------------------------------
    def save(
        self,
        model: Any,
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        **metadata: Any,
    ) -> Path:
        """Save ``model`` as a new version and return the artifact's path.

        With ``version=None`` the next patch version is allocated atomically
        (``1.0.0`` for a new model). Keyword arguments become custom metadata
        (metrics, dataset info, ...). Raises :class:`VersionExistsError` if the
        version exists and ``overwrite`` is false. On an object store the
        returned "path" is the artifact's URL as a string (``s3://...``).
        """
        rec = self.save_version(model, model_name, version, overwrite=overwrite, metadata=metadata)
        assert rec.artifact is not None
        where = self.store.display_path(rec.artifact.key)
        return Path(where) if self.store.is_local else where  # type: ignore[return-value]

    def save_version(
        self,
        model: Any,
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        serialization_format: str | None = None,
        compress: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> ModelMetadata:
        """Like :meth:`save`, but returns the full :class:`ModelMetadata` record."""
        started = time.perf_counter()
        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        fmt = self.format if serialization_format is None else get_format(serialization_format)
        compression = (
            self.compression
            if compress is None and serialization_format is None
            else fmt.normalize_compression(self.compress if compress is None else compress)
        )
        custom = to_json_safe(dict(metadata or {}))
        params = _model_params(model)
        if params is not None and "model_params" not in custom:
            custom = {"model_params": params, **custom}
        env = environment.capture(model)
        if version is not None and not overwrite and self.index.get(model_name, version) is not None:
            raise VersionExistsError(
                f"model '{model_name}' version '{version}' already exists; pass overwrite=True to replace it"
            )

        with self.store.staged() as staged:
            with self._progress(f"saving {model_name}", None) as advance, staged.open(advance) as out:
                try:
                    extra = fmt.dump(model, out, compression, **self._format_options(fmt)) or {}
                except ModelKeepError:
                    raise
                except OSError:
                    raise
                except Exception as exc:
                    raise SerializationError(f"cannot serialize {type(model).__name__} with {fmt.name}: {exc}") from exc
            with self.index.claim(model_name, version, overwrite=overwrite) as slot:
                now = utc_now()
                key = self._new_artifact_key(slot, fmt.extension(compression))
                record = ModelMetadata(
                    model_name=model_name,
                    model_type=type(model).__name__,
                    version=slot.version,
                    created_at=slot.previous.created_at if slot.previous else now,
                    updated_at=now,
                    metadata=custom,
                    artifact=ArtifactInfo(key, fmt.name, compression, staged.size, staged.sha256, extra),
                    environment=env,
                )
                if self.signing_key:
                    record.signature = signing.sign(record, self.signing_key)
                try:
                    self._write_claimed_files(slot, record, staged)
                    slot.put(record, before_commit=self._blobs_check(extra))
                except BaseException:
                    slot.abandon(self._attempt_files(slot, key), self._remove_quietly, self._write_sidecar)
                    raise
                if slot.previous is not None:
                    self._remove_replaced_artifact(slot, record)
        logger.info(
            "saved %s version %s (%d bytes, %s) in %.1f ms",
            model_name,
            record.version,
            staged.size,
            fmt.name,
            (time.perf_counter() - started) * 1000,
        )
        return record

    # -- writing under a claim (see modelkeep.index.claims) -------------------------
    @staticmethod
    def _new_artifact_key(slot: VersionClaim, extension: str) -> str:
        """The seed's key for a new version; for an overwrite, a fresh revision key whenever the
        committed row names the usual one (its bytes are never replaced)."""
        key = artifact_key(slot.model_name, slot.version, extension)
        previous = slot.previous
        if previous is not None and previous.artifact is not None and previous.artifact.key == key:
            key = revision_key(slot.model_name, slot.version, extension)
        return key

    def _write_claimed_files(self, slot: VersionClaim, record: ModelMetadata, staged: StagedArtifact) -> None:
        """Put the attempt's files in place, once the database confirms the claim is still its own:
        the sidecar (an overwrite's is restored from the index if the commit fails), then the artifact."""
        assert record.artifact is not None
        key = record.artifact.key
        slot.check()
        self._write_sidecar(record)
        slot.check()
        same = self.index.find_artifact(record.artifact.sha256, exclude_key=key)
        if not (same and self.store.link(same, key)):  # identical bytes: share them
            staged.commit(key)

    def _write_sidecar(self, record: ModelMetadata) -> None:
        self.store.write_bytes(sidecar_key(record.model_name, record.version), _sidecar_bytes(record))

    def _remove_replaced_artifact(self, slot: VersionClaim, record: ModelMetadata) -> None:
        """After an overwrite's commit, still under its claim: remove the artifact it replaced
        unless another version shares it."""
        assert record.artifact is not None
        old = slot.previous.artifact if slot.previous is not None else None
        if old is not None and old.key != record.artifact.key and self.index.count_artifact_refs(old.key) == 0:
            self._remove_quietly(old.key)

    @staticmethod
    def _attempt_files(slot: VersionClaim, key: str) -> list[str]:
        """The keys a failed attempt may have written (the index still checks each before removal)."""
        files = [key]
        if slot.previous is None:
            files.append(sidecar_key(slot.model_name, slot.version))
        return files

    def _remove_quietly(self, key: str) -> None:
        """Remove ``key``; a failure is logged at debug level (``gc`` removes leftovers)."""
        try:
            self.store.delete(key, missing_ok=True)
        except Exception as exc:
            logger.debug("could not remove %s: %s", self.store.display_path(key), exc)

    def _blobs_check(self, extra: dict[str, Any]) -> Callable[[], None] | None:
        """For the commit transaction (under the shared blob lock): fail if a concurrent gc
        removed one of the blobs the record references."""
        blobs = extra.get("blobs")
        if not blobs:
            return None

        def check() -> None:
            from .blobs import BlobStore

            gone = BlobStore(self.store).missing((sha, int(size)) for sha, size in blobs)
            if gone:
                raise StorageError(f"{len(gone)} blob(s) were removed by a concurrent gc during the save; save again")

        return check

    def _format_options(self, fmt: Format, **options: Any) -> dict[str, Any]:
        """Extra keyword arguments for formats that keep buffers in the blob store."""
        if getattr(fmt, "uses_blobs", False):
            from .blobs import BlobStore

            options["blobs"] = BlobStore(self.store)
        return options

    def import_file(
        self,
        path: str | os.PathLike[str],
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        serialization_format: str | None = None,
        compress: Any = None,
        metadata: dict[str, Any] | None = None,
    ) -> ModelMetadata:
        """Register a model from a pickle or joblib file. Loading it runs its code:
        only import files you trust (denied globals are still refused)."""
        import joblib

        from .formats._restricted import restricted_joblib

        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        try:
            with restricted_joblib():
                model = joblib.load(os.fspath(path))  # reads joblib and plain pickle files alike
        except (ModelKeepError, FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as exc:
            raise SerializationError(f"cannot read a model from {os.fspath(path)!r}: {exc}") from exc
        return self.save_version(
            model,
            model_name,
            version,
            overwrite=overwrite,
            serialization_format=serialization_format,
            compress=compress,
            metadata=metadata,
        )

    # -- loading ------------------------------------------------------------------
    def load(
        self,
        model_name: str,
        version: str | None = None,
        return_metadata: bool = False,
        *,
        mmap_mode: str | None = None,
    ) -> Any:
        """Load a version (the latest when ``version`` is ``None``).

        The artifact's SHA-256 (and signature, with a signing key) is checked
        before anything is deserialized; a mismatch raises :class:`IntegrityError`.
        ``mmap_mode="r"`` maps the arrays of uncompressed joblib artifacts
        instead of reading them. Returns the model, or ``(model, metadata)``.
        """
        started = time.perf_counter()
        record = self.get_version(model_name, version)
        art = record.artifact
        assert art is not None
        if self.signing_key:
            signing.verify(record, self.signing_key)
        fmt = get_format(art.format)
        local = self.store.local_path(art.key)
        with self._progress(f"loading {model_name}", art.size) as advance:
            options = self._format_options(fmt, mmap_mode=mmap_mode, extra=art.extra, trusted=self.trusted_types)
            if mmap_mode is not None and local is not None and fmt.supports_mmap(art.compression):
                self.store.verify(art.key, art.sha256)
                model = self._deserialize(fmt.load_path, str(local), art.compression, **options)
            else:
                with self.store.open_verified(art.key, art.sha256, advance) as f:
                    model = self._deserialize(fmt.load, f, art.compression, **options)
        diffs = environment.differences(record.environment)
        if diffs:
            logger.warning(
                "model '%s' version %s was saved in a different environment: %s",
                record.model_name,
                record.version,
                "; ".join(diffs),
            )
        logger.info(
            "loaded %s version %s (%d bytes) in %.1f ms",
            record.model_name,
            record.version,
            art.size,
            (time.perf_counter() - started) * 1000,
        )
        return (model, record) if return_metadata else model

    @staticmethod
    def _deserialize(fn: Callable[..., Any], source: Any, compression: str | None, **options: Any) -> Any:
        try:
            return fn(source, compression, **options)
        except ModelKeepError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot deserialize the artifact: {exc}") from exc

    def export_file(
        self,
        model_name: str,
        version: str | None,
        output: str | os.PathLike[str],
        *,
        force: bool = False,
    ) -> Path:
        """Write a version to ``output`` in the format its suffix names
        (``.joblib``, ``.pkl``, ``.pickle``, ``.pkl.gz``). An existing file is
        only replaced with ``force=True``."""
        out = Path(output)
        fmt_name, compressed = format_for_suffix(out.name)
        if out.is_dir():
            raise StorageError(f"output {str(out)!r} is a directory; give a file name such as model.joblib")
        if out.exists() and not force:
            raise VersionExistsError(f"output file {str(out)!r} already exists; use force to replace it")
        model = self.load(model_name, version)
        fmt = get_format(fmt_name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                fmt.dump(model, f, fmt.normalize_compression(compressed))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    # -- querying -----------------------------------------------------------------
    def resolve_version(self, model_name: str, version: str | None = None) -> str:
        """The concrete version string ``version`` (or "latest") refers to."""
        return self.get_version(model_name, version).version

    def get_version(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """The record of a version (latest when ``None``); raises when absent."""
        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        return self.index.resolve(model_name, version)

    def get_metadata(self, model_name: str, version: str | None = None) -> ModelMetadata | None:
        """The record of a version (latest when ``None``), or ``None`` if there is none."""
        try:
            return self.get_version(model_name, version)
        except KeyError:
            return None

    def list_models(self) -> list[str]:
        """Names of all models with at least one version, sorted."""
        return self.index.list_models()

    def list_versions(self, model_name: str) -> list[str]:
        """A model's versions in ascending version order (``[]`` for an unknown model)."""
        return self.index.list_versions(validate_model_name(model_name))

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:
        """Every version's record, ascending; :class:`ModelNotFoundError` if none."""
        from .index.sql import no_versions

        records = self.index.list_records(validate_model_name(model_name))
        if not records:
            raise no_versions(model_name)
        return records

    def model_summaries(self) -> list[ModelSummary]:
        """Each model with its version count, latest version and last update."""
        return self.index.summaries()

    def compare_versions(self, model_name: str, versions: list[str] | None = None) -> pd.DataFrame:
        """A DataFrame with one row per version and a column per metric or scalar field."""
        from .compare import comparison_frame

        if versions is None:
            records = self.list_version_records(model_name)
        else:
            records = [self.get_version(model_name, v) for v in versions]
        return comparison_frame(records)

    # -- deleting -----------------------------------------------------------------
    def delete(self, model_name: str, version: str) -> None:
        """Delete one version: its index entry first, then its files."""
        started = time.perf_counter()
        model_name = validate_model_name(model_name)
        version = validate_version(version)
        from .index.claims import deleting

        with deleting(self.index, model_name, version) as record:  # the version stays claimed meanwhile
            art = record.artifact
            if art is not None and self.index.count_artifact_refs(art.key) == 0:
                self.store.delete(art.key, missing_ok=True)
            if art is not None and art.extra.get("blobs"):
                from .blobs import BlobStore

                blobs = BlobStore(self.store)
                self.index.release_blobs(record_blobs(record), blobs.delete_many)
            self.store.delete(sidecar_key(model_name, version), missing_ok=True)
            self.store.remove_empty_dirs(f"{model_name}/{version}")
        logger.info(
            "deleted %s version %s (%d bytes) in %.1f ms",
            model_name,
            version,
            art.size if art else 0,
            (time.perf_counter() - started) * 1000,
        )

    # -- maintenance (implemented in modelkeep.maintenance) -------------------------
    def verify(self, model_name: str | None = None) -> VerifyReport:
        """Re-hash every artifact; report entries that are missing, corrupt or orphaned."""
        from .maintenance import verify_registry

        return verify_registry(self, model_name)

    def gc(self, *, dry_run: bool = False, min_age_seconds: float = 3600.0) -> GcReport:
        """Remove crash leftovers: staged temp files and artifacts no index entry names.

        Files younger than ``min_age_seconds`` are kept: they may belong to a
        save in progress. ``dry_run`` only reports what would be removed.
        """
        from .maintenance import collect_garbage

        return collect_garbage(self, dry_run=dry_run, min_age_seconds=min_age_seconds)

    def reindex(self) -> int:
        """Rebuild the index from the sidecar metadata files; returns the number of versions."""
        from .maintenance import rebuild_index

        return rebuild_index(self)


def _sidecar_bytes(record: ModelMetadata) -> bytes:
    return json.dumps(record.to_dict(), indent=2, sort_keys=False).encode() + b"\n"
