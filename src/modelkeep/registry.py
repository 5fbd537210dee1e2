"""``ModelPersistence``: the facade that composes format, storage and index.

Save:  object -> format.dump -> bytes hashed as they stream to a staged file
       -> (write lock) allocate version -> sidecar JSON -> rename into place
       -> index row -> commit.
Load:  index row -> (signature) -> read artifact once -> SHA-256 check -> deserialize
       those same bytes.

The store layout (which key holds what) is :mod:`modelkeep.layout`; the bytes
go through :mod:`modelkeep.storage`; formats are :mod:`modelkeep.formats`.
See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import environment, keys, saving, signing, timeouts
from . import quarantine as quarantine_mod
from .bulk import BulkSaveMixin
from .errors import (
    CommitUnknownError,
    ConfigError,
    FilterError,
    IntegrityError,
    ModelKeepError,
    RegistryNotFoundError,
    SerializationError,
    StorageError,
    UnsafeModelError,
    VersionExistsError,
    VersionTrashedError,
    no_versions,
)
from .formats import Format, get_format
from .identity import AccessPolicy, Identity
from .index import SqlIndex
from .layout import new_artifact_key, sidecar_bytes, sidecar_key
from .lifecycle import Age
from .metadata import ArtifactInfo, ModelMetadata, ModelSummary, utc_now
from .promotions import PromotionMixin
from .storage import open_store
from .storage.hashing import Advance, Expected
from .storage.hashing import no_advance as _no_advance
from .storage.verified import CheckedFiles
from .versions import validate_model_name, validate_version
from .webhooks.api import EventsMixin

if TYPE_CHECKING:
    import pandas as pd

    from .blobs import BlobStore
    from .bundle import BundleReport
    from .config import Settings
    from .freshness import Freshness
    from .index.claims import VersionClaim
    from .input_signature import InputCheck
    from .maintenance import GcReport, VerifyReport
    from .params_backfill import BackfillReport
    from .resign import ResignReport
    from .search import SearchPage
    from .search.grammar import Node
    from .storage import ArtifactStore, StagedArtifact
    from .storage.cache import ArtifactCache, PendingEntry

logger = logging.getLogger("modelkeep")
#: What :meth:`ModelPersistence._load_mapped` returns when it mapped nothing (a model may be ``None``).
_NOT_MAPPED: Any = object()

#: ``progress(description, total_bytes_or_None)`` -> context manager yielding ``advance(n)``.
ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Advance]]


@contextlib.contextmanager
def _no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


#: What ``ModelPersistence()`` uses for an argument left at ``None`` when no ``MODELKEEP_*`` variable sets it.
_DEFAULTS: dict[str, Any] = {
    "models_dir": "models",
    "serialization_format": "joblib",
    "compress": True,
    "trusted_types": [],
    "connect_timeout": timeouts.CONNECT_TIMEOUT,
    "read_timeout": timeouts.READ_TIMEOUT,
    "quarantine": "auto",
    "quarantine_timeout": quarantine_mod.DEFAULT_TIMEOUT,
}


def _settings_from_environment(**explicit: Any) -> dict[str, Any]:
    """Each argument as given, else its ``MODELKEEP_*`` variable, else the default (as the CLI reads them)."""
    from .config_sources import ENV_VARS

    if any(var in os.environ for var in ENV_VARS):
        from .config import persistence_defaults

        return persistence_defaults(**explicit)
    resolved = {key: _DEFAULTS.get(key) if value is None else value for key, value in explicit.items()}
    resolved["trusted_types"] = list(explicit["trusted_types"] or [])
    return resolved


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _part_size(value: Any) -> int | None:
    """``part_size`` in bytes: S3 refuses parts under 5 MiB (all but the last)."""
    if value is None:
        return None
    from .formats.budget import parse_size
    from .storage.base import MIN_PART_SIZE

    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"part_size {exc}") from None
    if size < MIN_PART_SIZE:
        raise ConfigError(f"part_size must be at least 5 MiB (S3's smallest part), got {value!r}")
    return size


def _open_cache(store: Any, max_bytes: Any) -> ArtifactCache | None:
    """The local cache for a remote store (``max_bytes``: bytes or text such as ``"20GiB"``)."""
    from .storage import LocalStore
    from .storage.cache import open_cache

    if isinstance(store, LocalStore):
        return None
    if max_bytes is not None and not (isinstance(max_bytes, int) and max_bytes == 0):
        from .formats.budget import parse_size

        try:
            max_bytes = 0 if str(max_bytes).strip() == "0" else parse_size(max_bytes)
        except ValueError as exc:
            raise ConfigError(f"cache_max_bytes {exc}") from None
    return open_cache(max_bytes)


def _server_url(models_dir: Any, registry_url: Any) -> str | None:
    """The registry server URL a registry is opened with, if any (explicit arguments first)."""
    from .config_sources import is_server_url

    for value in (registry_url, models_dir):
        if value is not None:
            return str(value) if is_server_url(value) else None
    env = os.environ.get("MODELKEEP_REGISTRY_URL", "").strip()
    return env if is_server_url(env) else None


class ModelPersistence(BulkSaveMixin, PromotionMixin, EventsMixin):
    """Save, version, find, compare and load models in one registry.

    Every argument left at ``None`` is read from its ``MODELKEEP_*`` environment
    variable, as the CLI reads it (``MODELKEEP_MODELS_DIR``, ``MODELKEEP_TRUSTED_TYPES``...),
    else takes its default.

    Args:
        models_dir: where artifacts go: a local folder or any fsspec URL (default ``"models"``).
        serialization_format: ``"joblib"`` (default) or ``"pickle"``.
        compress: ``True`` (default) for the format's default codec, ``False``, or a
            codec spec such as ``("zlib", 3)``, ``"lz4:1"`` or a level.
        registry_path: folder of the embedded SQLite index (default: ``models_dir``).
        registry_url: a SQLAlchemy URL for a shared index (PostgreSQL); wins
            over ``registry_path``.
        storage_options: passed to fsspec (endpoints, credentials).
        signing_key: a shared HMAC secret: every save is signed with it, and every
            load requires a valid signature (default: ``MODELKEEP_SIGNING_KEY``).
        signing_key_file: a PEM ECDSA P-256 private key that signs every save;
            signatures become required (default: ``MODELKEEP_SIGNING_KEY_FILE``).
            Without either, saves are signed with the per-user key.
        trusted_keys: PEM public key files whose signatures are trusted
            (default: ``MODELKEEP_TRUSTED_KEYS``).
        require_signatures: refuse versions without a trusted signature (default:
            ``MODELKEEP_REQUIRE_SIGNATURES``, else on when a key is configured).
        progress: a progress-bar factory; see :data:`ProgressFactory`.
        index_schema: PostgreSQL schema for the index tables (default: the search path).
        create: with ``True`` (default) the first save creates the registry when none
            exists; reads of a missing registry raise :class:`RegistryNotFoundError`
            (naming the path) and create nothing. With ``False`` a missing registry
            (no ``registry.db``; on PostgreSQL, no tables) raises right here.
        trusted_types: extra types a load may construct, beyond the built-in
            allow-list; added to ``MODELKEEP_TRUSTED_TYPES``. They come only from
            here or the config, never from an artifact or its metadata.
        connect_timeout, read_timeout: seconds to wait for S3 and PostgreSQL to
            connect and to answer (see :mod:`modelkeep.timeouts`).
        quarantine: ``"auto"`` (default) loads versions not signed by a trusted key in a
            short-lived child process first, ``"always"`` every version, ``"never"`` none
            (see :mod:`modelkeep.quarantine`); ``quarantine_timeout`` (seconds) and
            ``quarantine_memory_mb`` (the child's address-space cap) bound that child.
        max_load_memory: bytes one load may allocate while unpickling (an int, or text
            such as ``"2GiB"``); default ``max(256 MiB, 32 x the artifact's size)``. A
            pickle that claims more is refused with :class:`UnsafeModelError`
            (see :mod:`modelkeep.formats.budget`).
        max_concurrency: requests in flight for one S3 upload or download (default: sized
            to the machine, at least 16); memory is about this many parts.
        part_size: multipart part size of S3 uploads (bytes or text such as ``"16MiB"``;
            default 8 MiB, at least S3's 5 MiB).
        cache_max_bytes: the size cap of the local cache of remote artifacts, shared by every
            registry of this user (``MODELKEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelkeep``);
            default 10 GiB, ``0`` turns the cache off (see :mod:`modelkeep.storage.cache`).
    """

    def __new__(cls, models_dir: Any = None, *args: Any, **kwargs: Any) -> Any:
        """A registry server's URL (``https://host:port``, as ``models_dir`` or ``registry_url``, or
        ``MODELKEEP_REGISTRY_URL``) gives an :class:`~modelkeep.api.client.HttpRegistry` instead."""
        url = _server_url(models_dir, kwargs.get("registry_url"))
        if url is None:
            return super().__new__(cls)
        from .api.client import HttpRegistry

        return HttpRegistry(url, **{k: v for k, v in kwargs.items() if k != "registry_url"})

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        serialization_format: str | None = None,
        compress: Any = None,
        registry_path: str | os.PathLike[str] | None = None,
        *,
        registry_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        signing_key: str | bytes | None = None,
        progress: ProgressFactory | None = None,
        index_schema: str | None = None,
        trusted_types: list[str] | None = None,
        create: bool = True,
        signing_key_file: str | os.PathLike[str] | None = None,
        trusted_keys: list[str] | None = None,
        require_signatures: bool | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        identity: Identity | None = None,
        token: str | None = None,
        protected_aliases: list[str] | None = None,
        protected_alias_users: list[str] | None = None,
        quarantine: str | None = None,
        quarantine_timeout: float | None = None,
        quarantine_memory_mb: int | None = None,
        max_load_memory: int | str | None = None,
        trusted_releasers: list[str] | None = None,
        max_concurrency: int | None = None,
        part_size: int | str | None = None,
        cache_max_bytes: int | str | None = None,
    ) -> None:
        settings = _settings_from_environment(
            models_dir=models_dir,
            serialization_format=serialization_format,
            compress=compress,
            registry_path=registry_path,
            registry_url=registry_url,
            storage_options=storage_options,
            trusted_types=trusted_types,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            protected_aliases=protected_aliases,
            protected_alias_users=protected_alias_users,
            trusted_releasers=trusted_releasers,
            token=token,
            quarantine=quarantine,
            quarantine_timeout=quarantine_timeout,
            quarantine_memory_mb=quarantine_memory_mb,
            max_load_memory=max_load_memory,
            max_concurrency=max_concurrency,
            part_size=part_size,
            cache_max_bytes=cache_max_bytes,
        )
        max_load_memory = settings["max_load_memory"]
        quarantine, quarantine_timeout = settings["quarantine"], settings["quarantine_timeout"]
        quarantine_memory_mb = settings["quarantine_memory_mb"]
        protected_aliases, protected_alias_users = settings["protected_aliases"], settings["protected_alias_users"]
        token = settings["token"]
        models_dir, serialization_format = settings["models_dir"], settings["serialization_format"]
        compress, registry_path, registry_url = (
            settings["compress"],
            settings["registry_path"],
            settings["registry_url"],
        )
        storage_options, trusted_types = settings["storage_options"] or None, settings["trusted_types"]
        connect_timeout, read_timeout = settings["connect_timeout"], settings["read_timeout"]
        assert models_dir is not None and serialization_format is not None
        from .formats.budget import parse_size

        try:
            #: Bytes one load may allocate (``None``: from each artifact's size).
            self.max_load_memory: int | None = None if max_load_memory is None else parse_size(max_load_memory)
        except ValueError as exc:
            raise ConfigError(f"max_load_memory {exc}") from None
        self.quarantine = quarantine_mod.check_mode(quarantine)
        self.quarantine_timeout = quarantine_timeout
        self.quarantine_memory_mb = quarantine_memory_mb
        self.format: Format = get_format(serialization_format)
        self.compression = self.format.normalize_compression(compress)
        self.compress = compress
        self.store = open_store(
            models_dir,
            storage_options,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_concurrency=_positive("max_concurrency", settings["max_concurrency"]),
            part_size=_part_size(settings["part_size"]),
        )
        #: The local cache of a remote store's artifacts (``None`` for a local store, or when
        #: ``cache_max_bytes`` is 0); see :mod:`modelkeep.storage.cache`.
        self.cache: ArtifactCache | None = _open_cache(self.store, settings["cache_max_bytes"])
        #: The store's root: a :class:`~pathlib.Path` for a local folder, else its URL.
        self.models_dir: str | Path = self.store.location()
        if registry_url is None:
            if self.store.shared and registry_path is None:
                raise ConfigError(
                    f"models_dir {self.store.url!r} is remote but no registry_url is set: "
                    "point registry_url at a shared database (for example PostgreSQL), or pass "
                    "registry_path to keep a local, per-machine index on purpose"
                )
            self._registry_folder: Path | None = Path(
                registry_path if registry_path is not None else self.store.root
            ).resolve()
            registry_url = f"sqlite:///{self._registry_folder / 'registry.db'}"
        else:
            self._registry_folder = None
        self._index_options: dict[str, Any] = {
            "url": registry_url,
            "schema": index_schema,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }
        # Reading never creates a registry: until a save creates it, reads raise RegistryNotFoundError.
        self._index: SqlIndex | None = None
        #: What this registry signs with and trusts (see :func:`modelkeep.signing.resolve_keyring`).
        self.keyring = signing.resolve_keyring(
            signing_key=signing_key or None,
            signing_key_file=signing_key_file,
            trusted_keys=trusted_keys,
            require_signatures=require_signatures,
        )
        try:
            self._index = self._journaled(SqlIndex(**self._index_options, create=False))
        except RegistryNotFoundError:
            if not create:
                raise
        self.signing_key = self.keyring.hmac_key
        self.trusted_types: list[str] = list(trusted_types or [])
        self._progress: ProgressFactory = progress or _no_progress
        # Who acts, and the protected aliases (see modelkeep.identity): with a token, its owner
        # (who must be MODELKEEP_USER when that is set); otherwise ``identity``, or nobody.
        self.access = AccessPolicy.build(protected_aliases, protected_alias_users)
        self.trusted_releasers = tuple(r.strip().lower() for r in settings["trusted_releasers"] or () if r.strip())
        self.identity = identity
        if token:
            try:
                self.sign_in(token, name=os.environ.get("MODELKEEP_USER", "").strip() or None)
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_settings(
        cls, settings: Settings, progress: ProgressFactory | None = None, *, create: bool = True
    ) -> ModelPersistence:
        """A registry opened with validated :class:`~modelkeep.config.Settings` (what the CLI uses)."""
        return cls(**settings.persistence_options(), progress=progress, create=create)

    # -- the index: read, or created by the first save ----------------------------------
    @property
    def index(self) -> SqlIndex:
        """The registry index; :class:`RegistryNotFoundError` (naming the path) while no registry
        exists here. Only a save creates one (:meth:`ensure_registry`)."""
        if self._index is None:
            self._index = self._journaled(SqlIndex(**self._index_options, create=False))
        return self._index

    def _journaled(self, index: SqlIndex) -> SqlIndex:
        """``index``, writing each history row's event file into this registry's store."""
        from .eventlog import EventJournal

        index.journal = EventJournal(self.store, self.keyring)
        index.reader = self._who  # reads answer as this registry's identity sees the models
        return index

    def ensure_registry(self) -> SqlIndex:
        """The index, creating an empty registry here first if there is none (what a save,
        an import, a copy into this registry and :meth:`reindex` do)."""
        if self._index is None:
            if self._registry_folder is not None:
                try:
                    self._registry_folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        exc.errno,
                        f"cannot create the registry folder {str(self._registry_folder)!r}: {exc.strerror or exc}",
                    ) from exc
            self._index = self._journaled(SqlIndex(**self._index_options, create=True))
        return self._index

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Release database connections."""
        if self._index is not None:
            self._index.close()

    def __enter__(self) -> ModelPersistence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._index.safe_url if self._index is not None else str(self._registry_folder or "(not created)")
        return f"ModelPersistence(models_dir={str(self.models_dir)!r}, registry={where!r})"

    # -- saving -------------------------------------------------------------------
    def save(
        self,
        model: Any,
        model_name: str,
        version: str | None = None,
        *,
        overwrite: bool = False,
        input_example: Any = None,
        training_data: Any = None,
        training_target: Any = None,
        parent: str | None = None,
        resume: bool = False,
        **metadata: Any,
    ) -> str | Path:
        """Save ``model`` as a new version and return where its artifact is.

        With ``version=None`` the next patch version is allocated atomically
        (``1.0.0`` for a new model). Keyword arguments become custom metadata
        (metrics, dataset info, ...). Raises :class:`VersionExistsError` if the
        version exists and ``overwrite`` is false. The return value is a
        :class:`~pathlib.Path` on a local store, and the artifact's URL as a
        ``str`` (``s3://...``) on a remote one, so a URL is never mangled into a path.

        The input signature is captured from the model (and from ``input_example``,
        a DataFrame, array or tensor, when given). ``training_data`` /
        ``training_target`` are fingerprinted, the git commit is recorded when
        saving inside a repository, and ``parent`` (``"1.0.0"`` or
        ``"other-model:1.0.0"``) names the version this one derives from.
        ``resume=True`` continues an interrupted S3 upload of the same save (see :meth:`save_version`).
        """
        rec = self.save_version(
            model,
            model_name,
            version,
            overwrite=overwrite,
            metadata=metadata,
            input_example=input_example,
            training_data=training_data,
            training_target=training_target,
            parent=parent,
            resume=resume,
        )
        assert rec.artifact is not None
        return self.store.location(rec.artifact.key)

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
        created_at: str | None = None,
        input_example: Any = None,
        training_data: Any = None,
        training_target: Any = None,
        parent: str | None = None,
        resume: bool = False,
        **custom: Any,
    ) -> ModelMetadata:
        """Like :meth:`save`, but returns the full :class:`ModelMetadata` record.

        It takes the same arguments as :meth:`save`: keyword arguments become custom metadata
        (``save_version(m, "cancer", algo="svc")``), merged over ``metadata=`` when both are
        given. ``serialization_format`` / ``compress`` choose this version's format and codec.
        ``created_at`` (ISO-8601) records that creation time instead of now; importers use it
        to keep a version's original timestamp. When an identity acts (a token), saving a new
        version needs the writer role on the model, replacing one (``overwrite``) the maintainer
        role, and the history records its name.

        ``resume=True`` (S3): an interrupted upload of the same save (same model, version
        argument, format and codec) is continued: the model is serialized again, and each part
        whose bytes are already uploaded is not sent again. A failed resumable upload stays
        open for the next attempt; ``gc`` aborts it if none comes.
        """
        if custom:
            metadata = {**(metadata or {}), **custom}
        model_name = validate_model_name(model_name)
        with self._as("writer", "save versions", model_name) as who:
            return self._save_version(
                who,
                model,
                model_name,
                version,
                overwrite=overwrite,
                serialization_format=serialization_format,
                compress=compress,
                metadata=metadata,
                created_at=created_at,
                input_example=input_example,
                training_data=training_data,
                training_target=training_target,
                parent=parent,
                resume=resume,
            )

    def _save_version(
        self,
        who: Identity | None,
        model: Any,
        model_name: str,
        version: str | None,
        *,
        overwrite: bool,
        serialization_format: str | None,
        compress: Any,
        metadata: dict[str, Any] | None,
        created_at: str | None,
        input_example: Any,
        training_data: Any,
        training_target: Any,
        parent: str | None,
        resume: bool,
    ) -> ModelMetadata:
        """:meth:`save_version` once the writer role is checked (``who`` acting)."""
        started = time.perf_counter()
        if version is not None:
            version = validate_version(version)
        fmt, compression = saving.choose_format(
            self.format, self.compression, self.compress, serialization_format, compress, model
        )
        self.ensure_registry()
        custom = saving.custom_metadata(model, metadata)
        described = saving.describe(
            model, model_name, input_example, training_data, training_target, parent, self.get_version
        )
        existing = None if version is None else self.index.get(model_name, version)
        if existing is not None and overwrite:  # replacing a version: a maintainer's call
            self.access.require(who, "maintainer", "overwrite versions", model_name)
        if version is not None and existing is not None and not overwrite:
            if self.index.lifecycle.trashed_version(model_name, version):
                raise VersionTrashedError(
                    f"model '{model_name}' version '{version}' is in the trash; restore or purge it"
                )
            raise VersionExistsError(
                f"model '{model_name}' version '{version}' already exists; pass overwrite=True to replace it",
                cli={"overwrite=True": "--overwrite"},
            )

        attempt = f"{model_name}\0{version or ''}\0{fmt.name}\0{compression}" if resume else None
        if self.store.direct_uploads and not resume:  # upload straight to the final key, under the claim
            with self.index.claim(model_name, version, overwrite=overwrite) as slot, slot.kept_alive():
                if slot.previous is not None:  # replacing a version (perhaps saved since the check above)
                    self.access.require(who, "maintainer", "overwrite versions", model_name)
                key = self._new_artifact_key(slot, fmt.extension(compression), taken=self.store.exists)
                # _write_claimed_files checks the claim in the database just before the commit;
                # the upload's completion re-checks the lease, which needs no round trip
                staged: StagedArtifact = self.store.stage_direct(key, slot.check_lease)
                cached = self._tee_to_cache(staged)
                try:  # the parts go up during serialization; the object appears only at commit
                    draft = self._serialize(model, model_name, fmt, compression, staged, custom, described)
                    record = self._commit_claimed(slot, staged, draft, key, created_at)
                    if cached is not None:
                        cached.admit(staged.sha256, staged.size)
                finally:
                    staged.discard()  # aborts the upload unless it was completed
                    if cached is not None:
                        cached.discard()
            if slot.previous is not None:  # each alias move signs the bytes it pointed at
                self._resign_after_overwrite(model_name, record.version)
        else:
            with self.store.staged(resume=attempt) as staged:
                cached = self._tee_to_cache(staged)
                try:
                    # the git state is joined once the version is claimed: it is checked meanwhile
                    draft = self._serialize(model, model_name, fmt, compression, staged, custom, described, True)
                    record = self.commit_staged(
                        staged,
                        draft,
                        version,
                        overwrite=overwrite,
                        created_at=created_at,
                        complete=lambda d: saving.with_git(d, described),
                    )
                    if cached is not None:
                        cached.admit(staged.sha256, staged.size)
                finally:
                    if cached is not None:
                        cached.discard()
        logger.info(
            "saved %s version %s (%d bytes, %s) in %.1f ms",
            model_name,
            record.version,
            staged.size,
            fmt.name,
            (time.perf_counter() - started) * 1000,
        )
        return record

    def _tee_to_cache(self, staged: StagedArtifact) -> PendingEntry | None:
        """For a remote store with a cache: a new cache entry that receives every byte the save
        uploads, admitted under the SHA-256 the save computed once the version is committed, so
        the first load after a save reads the local disk (see :mod:`.storage.cache`)."""
        if self.cache is None:
            return None
        pending = self.cache.begin_entry()
        if pending is not None:
            staged.tee = pending.write
        return pending

    def _serialize(
        self,
        model: Any,
        model_name: str,
        fmt: Format,
        compression: str | None,
        staged: StagedArtifact,
        custom: dict[str, Any],
        described: Any,
        git_later: bool = False,
    ) -> ModelMetadata:
        """:func:`modelkeep.saving.serialize` into ``staged``, with this registry's progress bar,
        blob store and trusted types: the draft record (``git_later``: without its git state yet)."""
        with self._progress(f"saving {model_name}", None) as advance:
            return saving.serialize(
                model,
                model_name,
                fmt,
                compression,
                staged,
                advance,
                custom=custom,
                described=described,
                blobs=self._blobs(fmt),
                trusted_types=self.trusted_types,
                git_later=git_later,
            )

    def _commit_claimed(
        self,
        slot: VersionClaim,
        staged: StagedArtifact,
        draft: ModelMetadata,
        key: str,
        created_at: str | None,
        sign: Callable[[ModelMetadata], str | None] | None = None,
        *,
        trust_lease: bool = False,
        complete: Callable[[ModelMetadata], ModelMetadata] | None = None,
    ) -> ModelMetadata:
        """Under ``slot``: the signed record of the save (``draft`` with its version, key and
        times), its files put in place and its row committed (fenced); a failure removes the
        attempt's files and releases the claim. ``trust_lease``: see :meth:`_write_claimed_files`;
        ``complete(draft)``: the draft made whole (the save's git state, read while the claim was taken)."""
        if complete is not None:
            draft = complete(draft)
        assert draft.artifact is not None
        now = utc_now()
        record = dataclasses.replace(
            draft,
            version=slot.version,
            created_at=created_at or (slot.previous.created_at if slot.previous else now),
            updated_at=now,
            artifact=dataclasses.replace(draft.artifact, key=key),
            signature=None,
        )
        record.signature = (sign or self.keyring.sign)(record)
        try:
            durable, duplicate = self._write_claimed_files(slot, record, staged, trust_lease=trust_lease)
            slot.put(record, before_commit=self._blobs_check(draft.artifact.extra), files_durable=durable)
        except BaseException:
            slot.abandon(self._attempt_files(slot, key), self._remove_quietly, self._write_sidecar)
            raise
        if duplicate:
            self._drop_duplicate(staged)
        if slot.previous is not None:
            self._remove_replaced_artifact(slot, record)
        return record

    def commit_staged(
        self,
        staged: StagedArtifact,
        draft: ModelMetadata,
        version: str | None,
        *,
        overwrite: bool = False,
        created_at: str | None = None,
        sign: Callable[[ModelMetadata], str | None] | None = None,
        key_for: Callable[[VersionClaim, str], str] | None = None,
        complete: Callable[[ModelMetadata], ModelMetadata] | None = None,
    ) -> ModelMetadata:
        """The second half of a save: claim ``version`` (the next free one when ``None``), put the
        staged artifact and the sidecar in place, and commit the index row and its history entry.

        ``draft`` is what :func:`modelkeep.saving.serialize` returns (its version, key and times
        are set here). ``sign(record)`` gives the signature to store (default: this registry's
        key); ``key_for(claim, extension)`` the artifact key (default: the usual one). A registry
        server passes both, to keep the signature its client made (:mod:`modelkeep.api.transfers`);
        either may raise to refuse the claim, which is then released with nothing written. The
        caller checks the writer role (:meth:`save_version` and :meth:`commit_uploaded` do); replacing
        a version needs the maintainer role, checked here under the claim. ``complete(draft)``,
        when given, makes the draft whole once the version is claimed (a save's git state, still
        being read while the claim is taken: :func:`modelkeep.saving.with_git`)."""
        assert draft.artifact is not None
        model_name = draft.model_name
        ext = get_format(draft.artifact.format).extension(draft.artifact.compression)
        sha256 = draft.artifact.sha256  # looked up for the dedup with the claim
        with self.index.claim(model_name, version, overwrite=overwrite, sha256=sha256) as slot:
            if slot.previous is not None:  # replacing a version (perhaps saved since the caller looked)
                self.access.require(self._who(), "maintainer", "overwrite versions", model_name)
            key = (key_for or self._new_artifact_key)(slot, ext)
            record = self._commit_claimed(
                slot, staged, draft, key, created_at, sign, trust_lease=True, complete=complete
            )
        if slot.previous is not None:  # each alias move signs the bytes it pointed at
            self._resign_after_overwrite(model_name, record.version)
        return record

    def commit_uploaded(
        self, staged: StagedArtifact, draft: ModelMetadata, version: str | None, **options: Any
    ) -> ModelMetadata:
        """:meth:`commit_staged` for an artifact a registry server's client uploaded: as the acting
        identity, who needs the writer role on the model (see :mod:`modelkeep.api.transfers`)."""
        with self._as("writer", "save versions", draft.model_name):
            self.ensure_registry()
            return self.commit_staged(staged, draft, version, **options)

    def claim_upload(
        self, model_name: str, version: str | None, extension: str, *, overwrite: bool = False
    ) -> tuple[VersionClaim, str]:
        """For a registry server whose client uploads an artifact straight to the store's final key
        (:mod:`modelkeep.api.transfers`): claim ``version`` (the next free one when ``None``) as the
        acting identity, who needs the writer role (the maintainer role to replace a version), and
        the key the bytes go to. The caller keeps the claim's lease alive until it passes the claim
        to :meth:`commit_claimed_upload` or abandons it."""
        from .index.claims import take

        with self._as("writer", "save versions", model_name) as who:
            self.ensure_registry()
            slot = take(self.index, model_name, version, overwrite=overwrite)
            try:
                if slot.previous is not None:
                    self.access.require(who, "maintainer", "overwrite versions", model_name)
                key = self._new_artifact_key(slot, extension, taken=self.store.exists)
            except BaseException:
                slot.abandon([], self._remove_quietly)
                raise
        return slot, key

    def commit_claimed_upload(
        self,
        slot: VersionClaim,
        staged: StagedArtifact,
        draft: ModelMetadata,
        *,
        created_at: str | None = None,
        sign: Callable[[ModelMetadata], str | None] | None = None,
    ) -> ModelMetadata:
        """Commit the bytes uploaded under :meth:`claim_upload`'s claim (``staged.commit`` makes
        them appear at ``draft``'s artifact key) as the version ``slot`` holds, as the acting
        identity; a failure removes the attempt's files and releases the claim."""
        assert draft.artifact is not None
        with self._as("writer", "save versions", draft.model_name):
            try:
                record = self._commit_claimed(slot, staged, draft, draft.artifact.key, created_at, sign)
            finally:
                slot.end()
        if slot.previous is not None:  # each alias move signs the bytes it pointed at
            self._resign_after_overwrite(draft.model_name, record.version)
        return record

    # -- writing under a claim (see modelkeep.index.claims) -------------------------
    @staticmethod
    def _new_artifact_key(slot: VersionClaim, extension: str, taken: Callable[[str], bool] | None = None) -> str:
        """:func:`~modelkeep.layout.new_artifact_key` for the version ``slot`` holds (an overwrite
        never writes over the bytes its committed row names; with ``taken``, an upload straight to
        the key never lands on a crash leftover gc has not removed yet)."""
        previous = slot.previous.artifact if slot.previous is not None else None
        return new_artifact_key(slot.model_name, slot.version, extension, previous.key if previous else None, taken)

    def _write_claimed_files(
        self, slot: VersionClaim, record: ModelMetadata, staged: StagedArtifact, *, trust_lease: bool = False
    ) -> tuple[Callable[[], None] | None, bool]:
        """Put the attempt's files in place, once the database confirms the claim is still its own:
        the sidecar (an overwrite's is restored from the index if the commit fails), then the artifact.
        Both go to the version's folder, which is ``fsync``'ed once for the two, before the row
        that references them is committed: on a helper thread, while the row's statements run;
        the callable returned first (``None``: nothing to wait for) waits for it, and the row's
        transaction calls it before its COMMIT (:meth:`VersionClaim.put`'s ``files_durable``).
        The second is whether identical stored bytes were linked instead: the caller drops the
        staged copy (:meth:`StagedArtifact.drop_duplicate`) once the row is committed, so that
        unlinking it (100 MB of blocks freed, journaled) does not run beside the folder's and the
        row's syncs, which would wait for it; a failed commit discards it as any staged file.
        ``trust_lease`` (a save whose bytes were staged before the claim, so only moments ago): a
        young lease stands for the database's word (:meth:`VersionClaim.check`); an upload
        straight to the key, which took long, reads it."""
        assert record.artifact is not None
        key = record.artifact.key
        slot.check(trust_lease=trust_lease)
        waiters: list[Callable[[], None]] = []
        with self.store.one_folder_sync(waiters):
            self._write_sidecar(record)
            # the claim, and stored identical bytes
            same = slot.check_placing(record.artifact.sha256, key, trust_lease=trust_lease)
            duplicate = bool(same and self.store.link(same, key))  # identical bytes: share them
            if not duplicate:
                staged.commit(key)
        return (waiters[0] if waiters else None), duplicate

    def _drop_duplicate(self, staged: StagedArtifact) -> None:
        """After the commit of a version that links identical stored bytes: remove its staged copy.
        The version has landed, so a store that fails to remove it fails nothing (``gc`` does)."""
        try:
            staged.drop_duplicate()
        except Exception as exc:
            logger.debug("left %s for gc: %s", self.store.display_path(staged.tmp_key), exc)

    def _write_sidecar(self, record: ModelMetadata) -> None:
        self.store.write_bytes(sidecar_key(record.model_name, record.version), sidecar_bytes(record))

    def _remove_replaced_artifact(self, slot: VersionClaim, record: ModelMetadata) -> None:
        """After an overwrite's commit, still under its claim: remove the artifact it replaced
        unless another version shares it. The overwrite has landed, so a database that cannot
        say whether another version shares it fails nothing: the artifact stays, for ``gc``."""
        assert record.artifact is not None
        old = slot.previous.artifact if slot.previous is not None else None
        if old is None or old.key == record.artifact.key:
            return
        try:
            shared = self.index.count_artifact_refs(old.key) > 0
        except StorageError as exc:
            logger.debug("left %s for gc: %s", self.store.display_path(old.key), exc)
            return
        if not shared:
            self._remove_quietly(old.key)

    def _resign_after_overwrite(self, model_name: str, version: str) -> None:
        """After a committed overwrite of ``version``: re-sign the aliases that point at it (each
        alias move signs the bytes it pointed at). The overwrite has landed, so this never turns
        the save into an error: a re-sign whose COMMIT lost its answer is done again (re-signing
        the same bytes twice is harmless), and one the database does not take is logged, with
        its remedy (moving an alias signs it anew)."""
        for _try in range(3):
            try:
                self.index.lifecycle.resign_aliases(model_name, version, self.keyring.sign_event)
                return
            except CommitUnknownError as exc:  # perhaps committed: doing it again is harmless
                failure: StorageError = exc
            except StorageError as exc:  # lost connections were retried already
                failure = exc
                break
        logger.warning(
            "model '%s' version '%s' was saved, but the aliases pointing at it could not be re-signed for "
            "its new bytes (%s); set them again (`modelkeep alias set`) before loading through them",
            model_name,
            version,
            failure,
        )

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

    def _blobs(self, fmt: Format) -> BlobStore | None:
        """The blob store, for formats that keep large buffers there (``None`` for the others);
        a remote store's blobs go through the local cache (see :mod:`.blobs`)."""
        if not fmt.uses_blobs:
            return None
        from .blobs import BlobStore

        return BlobStore(self.store, self.cache)

    def read_file(
        self, path: str | os.PathLike[str], *, trusted_types: list[str] | None = None, trust_file: bool = False
    ) -> Any:
        """Read a model from a pickle or joblib file as :meth:`import_file` does, without saving it
        (the same checks: what a dry run of an import needs to know)."""
        from .exporting import read_model_file

        return read_model_file(path, [*self.trusted_types, *(trusted_types or [])], trust_file, self.max_load_memory)

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
        trusted_types: list[str] | None = None,
        trust_file: bool = False,
        created_at: str | None = None,
    ) -> ModelMetadata:
        """Register a model from a pickle or joblib file (``created_at`` is passed to :meth:`save_version`).

        The file is read under the same policy as a load: the built-in allow-list plus
        this registry's ``trusted_types`` and ``trusted_types`` given here; any other
        global raises :class:`UnsafeModelError` naming it. ``trust_file=True`` reads the
        file with plain ``joblib.load``, which runs any code it contains: only for a
        file you wrote yourself.
        """
        model_name = validate_model_name(model_name)
        if version is not None:
            version = validate_version(version)
        model = self.read_file(path, trusted_types=trusted_types, trust_file=trust_file)
        return self.save_version(
            model,
            model_name,
            version,
            overwrite=overwrite,
            serialization_format=serialization_format,
            compress=compress,
            metadata=metadata,
            created_at=created_at,
        )

    # -- loading ------------------------------------------------------------------
    def load(
        self,
        model_name: str,
        version: str | None = None,
        return_metadata: bool = False,
        *,
        mmap_mode: str | None = None,
        alias: str | None = None,
        validate: Any = None,
        require_signed_alias: bool = False,
    ) -> Any:
        """Load a version (the latest when ``version`` is ``None``).

        ``load("churn@production")`` or ``load("churn", alias="production")`` loads
        the version an alias points at.

        The artifact's SHA-256 and the signature are checked before anything is
        deserialized; a mismatch raises :class:`IntegrityError` (:class:`SignatureError`
        for a bad signature, or a missing one when signatures are required). The format
        trusts the globals recorded at save only when the signature is by a held key.
        ``mmap_mode="r"`` maps the arrays of uncompressed joblib artifacts
        instead of reading them (``"c"``: copy-on-write); where an artifact cannot be
        mapped (compressed, pickle, a remote store, a framework format) it is read
        into memory with a :class:`MmapIgnoredWarning`. Any other ``mmap_mode`` is a
        :class:`ConfigError`. ``validate=X`` checks data ``X`` against the version's
        input signature first and raises :class:`InputSchemaError` (its ``.result``
        is the :class:`InputCheck`) when it does not fit. ``require_signed_alias=True`` (or
        ``trusted_releasers``) refuses a load through an alias unless the alias's current move
        is signed by a trusted key (one of the releasers), and is not an older signed move
        replayed (:class:`SignatureError`, :class:`RollbackError`). Returns the model, or
        ``(model, metadata)``.
        """
        from .loading import check_mmap_mode

        started = time.perf_counter()
        check_mmap_mode(mmap_mode)
        record, reference = self._resolve_reference(model_name, version, alias)
        if validate is not None:
            from .input_signature import InputSchemaError, check

            result = check(record.input_signature, validate)
            if not result.ok:
                raise InputSchemaError(
                    f"input does not fit model '{record.model_name}' version {record.version}: {result}", result
                )
        art = record.artifact
        if art is None or record.damaged:
            from .errors import IntegrityError

            raise IntegrityError(
                f"model '{record.model_name}' version '{record.version}' cannot be loaded: its index row is damaged "
                f"({record.damaged or 'no artifact'}); run modelkeep verify, and reindex to rebuild it from the "
                "sidecar files"
            )
        verdict = self.keyring.check(record)
        freshness = self._freshness()
        if reference.state is not None and reference.alias is not None:
            freshness.check_alias(
                record,
                reference.alias,
                reference.state,
                require=require_signed_alias,
                releasers=self.trusted_releasers,
            )
        elif reference.latest:
            freshness.check_latest(record)
        fmt = get_format(art.format)
        fmt.check_protocol(art.extra, f"model '{record.model_name}' version '{record.version}'")
        options: dict[str, Any] = {
            "mmap_mode": mmap_mode,
            "extra": art.extra,
            "trusted": self.trusted_types,
            "signed": verdict.trusted,
            "max_load_memory": self.max_load_memory,
            "artifact_size": art.size,
        }
        blobs = self._blobs(fmt)
        if blobs is not None:
            options["blobs"] = blobs
        expected = Expected.of(art.sha256, art.size, art.extra)
        try:
            quarantine_mod.screen(self, record, verdict)  # a child loads untrusted content first
            model = self._load_artifact(f"loading {model_name}", fmt, art, expected, options)
        except UnsafeModelError as exc:
            from .remedies import with_remedy

            where = f"model '{record.model_name}' version '{record.version}'"
            raise with_remedy(exc, where, verdict) from exc
        freshness.note_loaded(record, verdict)
        environment.report(record)
        logger.info(
            "loaded %s version %s (%d bytes) in %.1f ms",
            record.model_name,
            record.version,
            art.size,
            (time.perf_counter() - started) * 1000,
        )
        return (model, record) if return_metadata else model

    def _load_artifact(
        self, title: str, fmt: Format, art: ArtifactInfo, expected: Expected, options: dict[str, Any]
    ) -> Any:
        """Read, check and deserialize a version's artifact (mapped when asked and possible);
        a remote store's artifact is read from the local cache (see :mod:`.storage.cache`)."""
        with self._progress(title, art.size) as advance:
            if self.cache is not None and options["mmap_mode"] is None and self.cache.lookup(art.sha256) is None:
                return self._load_into_cache(fmt, art, expected, options, advance)
            store, key, fetched = self._artifact_source(art, advance)
            if fetched:
                advance = _no_advance  # the download drew the bar; the local read is quick
            try:
                return self._read_and_parse(store, key, fmt, art, expected, options, advance)
            except IntegrityError as exc:
                if store is self.store or self.cache is None:
                    raise
                self.cache.discard(art.sha256, str(exc))  # a tampered cache: read the store instead
                return self._read_and_parse(self.store, art.key, fmt, art, expected, options, advance)

    def _load_into_cache(
        self, fmt: Format, art: ArtifactInfo, expected: Expected, options: dict[str, Any], advance: Advance
    ) -> Any:
        """A load whose artifact is not cached yet: the store is read once into private memory
        and checked there (one hash), those checked bytes become the cache entry, and the model
        is parsed from the same memory."""
        assert self.cache is not None
        with self.store.open_artifact(art.key, expected, advance) as verified:
            self.cache.keep_verified(art.sha256, verified, art.size)
            return self._deserialize(fmt.load, verified.file, art.compression, verified=verified, **options)

    def _artifact_source(self, art: ArtifactInfo, advance: Advance) -> tuple[ArtifactStore, str, bool]:
        """Where to read the artifact from: the local cache for a remote store (downloaded into
        it first, and checked, when missing), else the store itself; and whether it was
        downloaded now (the download then drew the progress bar)."""
        if self.cache is None:
            return self.store, art.key, False
        entry = self.cache.lookup(art.sha256)
        if entry is not None:
            return self.cache.store, entry, False
        entry = self.cache.fetch(self.store, art.key, art.sha256, art.size, advance)
        return (self.cache.store, entry, True) if entry is not None else (self.store, art.key, False)

    def _read_and_parse(
        self,
        store: ArtifactStore,
        key: str,
        fmt: Format,
        art: ArtifactInfo,
        expected: Expected,
        options: dict[str, Any],
        advance: Advance,
    ) -> Any:
        from .loading import warn_mmap_ignored

        mmap_mode = options["mmap_mode"]
        model: Any = _NOT_MAPPED
        if mmap_mode is not None and fmt.supports_mmap(art.compression):
            model = self._load_mapped(store, key, fmt, art, expected, options)
        if model is _NOT_MAPPED:
            warn_mmap_ignored(mmap_mode, fmt, art, store.local_path(key) is not None, expected)
            # Hash what is unpickled: the artifact is read once into private memory,
            # checked, and parsed from there (docs/ARCHITECTURE.md).
            with store.open_artifact(key, expected, advance) as verified:
                model = self._deserialize(fmt.load, verified.file, art.compression, verified=verified, **options)
        return model

    def _freshness(self) -> Freshness:
        """The rollback checks of this registry, with what this user has seen of it (see
        :mod:`modelkeep.freshness`). The registry is named by where it is opened from."""
        from .freshness import Freshness, SeenMarks

        where = f"store={self.store.url} index={self.index.safe_url} schema={self.index.schema or ''}"
        return Freshness(self.keyring, self.index.lifecycle, SeenMarks(keys.config_dir() / "seen", where))

    def forget_seen(self, model_name: str | None = None) -> None:
        """Forget which versions and alias moves this user has seen in this registry (one model,
        or all): "latest" and aliases are then trusted again as they are. For after versions were
        removed on purpose without a signing key; see :mod:`modelkeep.freshness`."""
        self._freshness().marks.forget(None if model_name is None else validate_model_name(model_name))

    def _load_mapped(
        self,
        store: ArtifactStore,
        key: str,
        fmt: Format,
        art: ArtifactInfo,
        expected: Expected,
        options: dict[str, Any],
    ) -> Any:
        """A memory-mapped load, or ``_NOT_MAPPED`` when this artifact has nothing to map from this store.

        Only artifacts with payload ranges are mapped: the parsed bytes are checked and parsed
        from private memory, and the payload bytes are checked in the open file and then mapped
        from that same descriptor. Anything else is read once into private memory by the caller:
        a load never opens the artifact again (by name or ``/proc/self/fd``) after hashing it,
        because another process could rewrite the file in between."""
        if not expected.fast or not expected.ranges:
            return _NOT_MAPPED
        checked = CheckedFiles(keys.checked_files_dir())
        with store.open_mapped(key, expected, checked) as verified:
            if verified is not None:
                return self._deserialize(fmt.load, verified.file, art.compression, verified=verified, **options)
        return _NOT_MAPPED

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
        only replaced with ``force=True``. A ``.joblib`` file is compressed as the
        stored version is, with a codec plain ``joblib.load`` reads (see
        :func:`modelkeep.exporting.export_compression`); a ``.pkl`` file is a plain pickle."""
        from .exporting import write_export

        return write_export(self, model_name, version, output, force=force)

    def export_bundle(
        self,
        model_name: str,
        output: str | os.PathLike[str],
        *,
        versions: list[str] | None = None,
        force: bool = False,
    ) -> Path:
        """Write ``model_name``'s versions (all by default) to the bundle file ``output``
        (see :func:`modelkeep.bundle.export_bundle`)."""
        from .bundle import export_bundle

        return export_bundle(self, model_name, output, versions=versions, force=force)

    def import_bundle(
        self,
        path: str | os.PathLike[str],
        *,
        with_aliases: bool = False,
        max_bundle_bytes: int | None = None,
    ) -> BundleReport:
        """Verify the bundle at ``path`` completely, then register its versions here
        (see :func:`modelkeep.bundle.import_bundle`)."""
        from .bundle import import_bundle

        self.ensure_registry()
        return import_bundle(self, path, with_aliases=with_aliases, max_bundle_bytes=max_bundle_bytes)

    def check_input(self, model_name: str, version: str | None, X: Any) -> InputCheck:
        """Check data ``X`` (DataFrame, array or tensor) against a version's input signature:
        missing, extra and reordered columns, feature count, unsafe dtype casts."""
        from .input_signature import check

        return check(self.get_version(model_name, version).input_signature, X)

    def serve(self, reference: str, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> None:
        """Serve ``reference``'s predictions over HTTP until Ctrl-C (``"churn@production"`` follows
        the alias; ``"churn@3"`` is pinned). ``options`` are those of :func:`modelkeep.serve.serve`
        and :func:`modelkeep.serve.create_app` (``poll``, ``token_file``, ``batch_max_rows``...);
        one process (``modelkeep serve --workers N`` pre-forks). Needs the ``[serve]`` extra."""
        from .serve import serve

        serve(self, reference, host, port, **options)

    # -- querying -----------------------------------------------------------------
    def resolve_version(self, model_name: str, version: str | None = None, *, alias: str | None = None) -> str:
        """The concrete version string ``version`` (or "latest", or an alias) refers to."""
        return self.get_version(model_name, version, alias=alias).version

    def get_version(self, model_name: str, version: str | None = None, *, alias: str | None = None) -> ModelMetadata:
        """The record of a version (latest when ``None``), with its aliases, tags and
        description; raises when absent or trashed. ``"churn@production"``,
        ``version="@production"`` and ``alias="production"`` name a version by alias."""
        return self._lookup(model_name, version, alias)

    def get_metadata(
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> ModelMetadata | None:
        """The record of a version (latest when ``None``), or ``None`` if there is none."""
        try:
            return self.get_version(model_name, version, alias=alias)
        except KeyError:
            return None

    def signature_status(self, model_name: str, version: str | None = None) -> signing.Verdict:
        """Who signed a version, and whether this registry's keys trust that signature."""
        return self.keyring.verdict(self.get_version(model_name, version))

    def sign(
        self, model_name: str | None = None, version: str | None = None, *, include_untrusted: bool = False
    ) -> ResignReport:
        """Re-sign versions with the current signing key (after a key rotation).

        Only versions that verify under a trusted key are re-signed, after their bytes
        are re-hashed; with ``include_untrusted``, unsigned and untrusted ones are too
        (you vouch for them). ``model_name=None`` signs every model.
        """
        from .resign import resign_versions

        with self._as("admin", "re-sign versions"):
            return resign_versions(self, model_name, version, include_untrusted=include_untrusted)

    def store_signature(
        self,
        model_name: str,
        version: str,
        *,
        manifest: dict[str, Any],
        signature: str,
        public_key: str | None = None,
    ) -> ModelMetadata:
        """Store a signature made elsewhere (a registry server's client re-signing with its own
        key) as ``version``'s, only if ``manifest`` (what it signed) is the manifest stored now:
        :class:`VersionExistsError` otherwise (fetch and sign again). A public-key signature comes
        with its ``public_key`` (PEM) and must verify under it; a shared-key one is stored for
        readers to judge. Needs the admin role when an identity acts, as :meth:`sign` does."""
        from .resign import store_signature

        with self._as("admin", "re-sign versions"):
            return store_signature(self, model_name, version, manifest, signature, public_key)

    def list_models(self) -> list[str]:
        """Names of all models with at least one version, sorted."""
        return self.index.list_models()

    def list_versions(self, model_name: str) -> list[str]:
        """A model's versions in ascending version order (``[]`` for an unknown model)."""
        return self.index.list_versions(validate_model_name(model_name))

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:
        """Every version's record, ascending; :class:`ModelNotFoundError` if none."""
        records = self.index.list_records(validate_model_name(model_name))
        if not records:
            raise no_versions(model_name)
        return records

    def model_summaries(self, *, limit: int | None = None, after: str | None = None) -> list[ModelSummary]:
        """Each model with live versions, by name, with its version count, latest version and last
        update; at most ``limit`` of them, those named after ``after`` (a page: pass the last
        name of one page as ``after`` for the next). The index answers in one statement, reading
        indexes rather than version rows, so a page costs the same however many versions there are."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise FilterError(f"limit must be a positive integer (a number of models), got {limit!r}")
        return self.index.summaries(limit=limit, after=after)

    def compare_versions(
        self,
        model_name: str,
        versions: list[str] | None = None,
        *,
        filter: str | Node | None = None,
        params: str = "differing",
    ) -> pd.DataFrame:
        """A DataFrame with one row per version and a column per metric or scalar field.

        ``versions`` may name aliases as ``"@production"``. With ``filter`` (see
        :meth:`search_versions`), only the live versions that match it (and are in
        ``versions``, when given) are compared. Model parameters are
        ``params.<name>`` columns (``params.logisticregression__C``): by default
        those that differ between the versions; ``params="all"`` or ``"none"``.
        """
        from .compare import comparison_frame

        return comparison_frame(self._comparison_records(model_name, versions, filter), params)

    def _comparison_records(
        self, model_name: str, versions: list[str] | None, filter: str | Node | None
    ) -> list[ModelMetadata]:
        """The records :meth:`compare_versions` compares (``modelkeep server`` sends these, and
        its client builds the same DataFrame from them)."""
        if filter is not None:
            from .search import matching_versions

            records = matching_versions(self.index, validate_model_name(model_name), filter)
            if versions is not None:
                wanted = {self.get_version(model_name, v).version for v in versions}
                records = [r for r in records if r.version in wanted]
            return records
        if versions is None:
            return self.list_version_records(model_name)
        return [self.get_version(model_name, v) for v in versions]

    # -- search (implemented in modelkeep.search) ------------------------------------
    def search_versions(
        self,
        filter: str | Node | None = None,
        *,
        model_name: str | None = None,
        order_by: str | list[str] | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> SearchPage[ModelMetadata]:
        """Live versions matching ``filter`` (e.g. ``'accuracy > 0.9 AND tags.dataset = "v7"'``).

        ``order_by``: ``"-accuracy"``, ``"accuracy DESC, version"`` or a list of such
        entries (default: model name, then version). Returns a page of at most
        ``limit`` records with their aliases and tags; pass its ``next_page_token``
        as ``page_token`` for the next page. Raises :class:`FilterError` for a
        malformed filter or an unknown field.
        """
        from .search import search_versions

        return search_versions(
            self.index, filter, model_name=model_name, order_by=order_by, limit=limit, page_token=page_token
        )

    def search_models(
        self, filter: str | Node | None = None, *, limit: int = 100, page_token: str | None = None
    ) -> SearchPage[ModelSummary]:
        """Models with at least one live version matching ``filter``, by name, a page at a time."""
        from .search import search_models

        return search_models(self.index, filter, limit=limit, page_token=page_token)

    def metric_history(self, model_name: str, metric: str, *, limit: int = 2000) -> list[tuple[str, float | None]]:
        """``(version, value)`` of the newest ``limit`` live versions of a model, oldest first:
        the number each has for ``metric`` (``None`` when it has none). Reads no records."""
        from .search import metric_history

        return metric_history(self.index, validate_model_name(model_name), metric, limit)

    def best_version(
        self, model_name: str, metric: str, mode: str = "max", filter: str | Node | None = None
    ) -> ModelMetadata:
        """The live version with the highest (``mode="max"``) or lowest (``"min"``) ``metric``,
        among those matching ``filter``; ties go to the oldest version."""
        from .search import best_version

        return best_version(self.index, validate_model_name(model_name), metric, mode, filter)

    # -- deleting: delete (to the trash), restore, purge, prune in modelkeep.lifecycle

    # -- maintenance (implemented in modelkeep.maintenance) -------------------------
    def verify(self, model_name: str | None = None) -> VerifyReport:
        """Re-hash every artifact; report entries that are missing, corrupt or orphaned.

        When an identity acts, a model it may not see is reported missing, as if it did not
        exist, and the whole registry (``model_name=None``) needs a registry role of viewer or
        stronger (it reports on every model and on files no version names)."""
        from .maintenance import verify_registry

        if model_name is not None and not self.index.may_view(validate_model_name(model_name)):
            raise no_versions(model_name)  # what verify says of a model with nothing stored
        if model_name is None:
            self.access.require(self._who(), "viewer", "verify the whole registry")
        return verify_registry(self, model_name)

    def gc(
        self,
        *,
        dry_run: bool = False,
        min_age_seconds: float = 3600.0,
        purge_deleted_older_than: Age | None = None,
    ) -> GcReport:
        """Remove crash leftovers: staged temp files and artifacts no index entry names.

        Files younger than ``min_age_seconds`` are kept: they may belong to a
        save in progress. ``purge_deleted_older_than`` (``"30d"``, seconds, a
        timedelta) first purges versions that have been in the trash that long.
        ``dry_run`` only reports what would be removed. Needs the admin role when an identity acts.
        """
        with self._as("admin", "collect garbage"):
            return self._gc(dry_run, min_age_seconds, purge_deleted_older_than)

    def _gc(self, dry_run: bool, min_age_seconds: float, purge_deleted_older_than: Age | None) -> GcReport:
        from .maintenance import collect_garbage

        purged = (
            [] if purge_deleted_older_than is None else self._purge_for_gc(purge_deleted_older_than, dry_run=dry_run)
        )
        report = collect_garbage(self, dry_run=dry_run, min_age_seconds=min_age_seconds)
        report.purged = purged
        return report

    def reindex(self) -> int:
        """Rebuild the index from the sidecar metadata files; returns the number of versions.
        Needs the admin role when an identity acts."""
        from .maintenance import rebuild_index

        with self._as("admin", "rebuild the index"):
            self.ensure_registry()
            return rebuild_index(self)

    def backfill_params(
        self, model_name: str | None = None, version: str | None = None, *, dry_run: bool = False
    ) -> BackfillReport:
        """Record the deep (``step__param``) parameters of versions saved before modelkeep 0.2.

        Each such version is loaded as :meth:`load` loads it (signature, digests,
        allow-list, this registry's trust settings) and its ``model_params`` are
        rewritten; versions that do not load are skipped and reported. See
        :mod:`modelkeep.params_backfill`.
        """
        from .params_backfill import backfill_params

        with self._as("admin", "rewrite recorded parameters"):
            return backfill_params(self, model_name, version, dry_run=dry_run)
