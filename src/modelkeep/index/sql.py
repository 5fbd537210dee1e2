"""The registry index on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

Writers serialize per registry (SQLite: ``BEGIN IMMEDIATE``) or per model
(PostgreSQL: a transaction-scoped advisory lock), and the unique constraint on
``(model_name, version)`` backs both up. A writer that dies mid-transaction
releases its lock with its connection, so no stale lock can outlive a crash.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .. import timeouts
from ..errors import (
    BackendUnavailableError,
    CommitUnknownError,
    ConfigError,
    ModelNotFoundError,
    StorageError,
    VersionExistsError,
    VersionNotFoundError,
)
from ..metadata import ModelMetadata, ModelSummary
from ..versions import next_version, sort_key
from .schema import SCHEMA_VERSION, blob_refs, info, metadata_obj, versions

if TYPE_CHECKING:
    from .claims import VersionClaim

_WRITE = "modelkeep_write"
logger = logging.getLogger("modelkeep")
_P = ParamSpec("_P")
_T = TypeVar("_T")
_ORDER_ASC = (versions.c.parsed.asc(), versions.c.sort_key.asc(), versions.c.id.asc())
_ORDER_DESC = (versions.c.parsed.desc(), versions.c.sort_key.desc(), versions.c.id.desc())


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for bare ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


class ConnectionLostError(StorageError):
    """The database connection dropped before the transaction committed, so nothing was written.

    Reads and whole write transactions are retried once on a fresh connection
    when this happens; a drop while committing is a plain :class:`StorageError`
    because the outcome is then unknown.
    """


#: Pauses before the retries of a read or write transaction whose connection dropped
#: (a failover or restart can drop a new connection too).
RETRY_PAUSES = (0.0, 0.2, 1.0)


def _retry_on_disconnect(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``method`` (a read, or one whole write transaction) again, up to :data:`RETRY_PAUSES`
    more times, when its connection dropped before anything was committed."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for pause in RETRY_PAUSES:
            try:
                return method(*args, **kwargs)
            except ConnectionLostError as exc:
                logger.warning("%s; retrying on a new connection", exc)
                time.sleep(pause)
        return method(*args, **kwargs)

    return wrapper


#: SQLSTATEs of a connection that is gone: class 08, and the server shutting the session down.
_LOST_STATES = ("57P01", "57P02", "57P03")


def _connection_lost(exc: DBAPIError) -> bool:
    """True when ``exc`` means the connection died (invalidated by SQLAlchemy, or a server-side termination)."""
    state = getattr(exc.orig, "sqlstate", None) or ""
    return bool(exc.connection_invalidated) or state.startswith("08") or state in _LOST_STATES


def no_versions(model_name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"No versions found for model '{model_name}'")


class Reservation:
    """A version slot held inside an open write transaction (see :meth:`SqlIndex.reserve`)."""

    def __init__(
        self,
        index: SqlIndex,
        conn: Connection,
        model_name: str,
        version: str,
        previous: ModelMetadata | None,
    ) -> None:
        self._index = index
        self._conn = conn
        self.model_name = model_name
        self.version = version
        self.previous = previous
        self.record: ModelMetadata | None = None

    def lock_blobs(self) -> None:
        """Hold the shared blob lock until commit: gc cannot remove blobs meanwhile."""
        self._index.lock_blobs(self._conn, exclusive=False)

    def put(self, record: ModelMetadata) -> None:
        """Write ``record`` for the reserved version; committed when the block exits."""
        row = _row(record)
        if self.previous is None:
            self._conn.execute(insert(versions).values(**row))
        else:
            self._conn.execute(
                update(versions)
                .where(versions.c.model_name == self.model_name, versions.c.version == self.version)
                .values(**row)
            )
            _drop_blob_refs(self._conn, self.model_name, self.version)
        shas = record_blobs(record)
        if shas:
            self._conn.execute(
                insert(blob_refs),
                [{"model_name": self.model_name, "version": self.version, "sha256": sha} for sha in shas],
            )
        self.record = record


def record_blobs(record: ModelMetadata) -> set[str]:
    """The content-addressed blobs a record references (native format)."""
    extra = record.artifact.extra if record.artifact is not None else {}
    return {str(item[0]) for item in extra.get("blobs", [])}


def _drop_blob_refs(conn: Connection, model_name: str, version: str) -> None:
    conn.execute(delete(blob_refs).where(blob_refs.c.model_name == model_name, blob_refs.c.version == version))


def _row(record: ModelMetadata) -> dict[str, Any]:
    art = record.artifact
    if art is None:
        raise ValueError("a record needs its artifact before it is indexed")
    key = sort_key(record.version)
    return {
        "model_name": record.model_name,
        "version": record.version,
        "parsed": key is not None,
        "sort_key": key,
        "model_type": record.model_type[:256],
        "artifact_key": art.key,
        "format": art.format,
        "compression": art.compression,
        "size": art.size,
        "sha256": art.sha256,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "record": json.dumps(record.to_dict(), separators=(",", ":")),  # keeps the caller's field order
    }


def _record(raw: str) -> ModelMetadata:
    return ModelMetadata.from_dict(json.loads(raw))


class SqlIndex:
    """Versions of every model, keyed by ``(model_name, version)``.

    ``url`` is any SQLAlchemy URL; ``schema`` (PostgreSQL) puts the tables in
    a schema of their own, created if needed.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout: float = timeouts.CONNECT_TIMEOUT,
        read_timeout: float = timeouts.READ_TIMEOUT,
    ) -> None:
        self.url = normalize_url(url)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        try:
            parsed = make_url(self.url)
        except Exception as exc:  # sqlalchemy raises ArgumentError with a terse text
            raise ConfigError(f"registry_url {url!r} is not a valid database URL: {exc}") from exc
        self.dialect = parsed.get_backend_name()
        self.schema = schema
        try:
            if self.dialect == "sqlite":
                engine = create_engine(self.url, connect_args={"timeout": 60})
                _sqlite_setup(engine)
            else:
                args = timeouts.postgres_connect_args(dict(parsed.query), connect_timeout, read_timeout)
                engine = create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=4, connect_args=args)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the database driver for {parsed.drivername!r} is not installed: {exc} "
                "(for PostgreSQL install modelkeep[postgres])"
            ) from exc
        if schema is not None:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        self._create_tables()

    # -- plumbing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        committing = False
        try:
            with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
                yield conn
                committing = True
        except SAIntegrityError as exc:
            raise VersionExistsError(f"version already exists (concurrent writer): {exc.orig}") from exc
        except DBAPIError as exc:
            if committing and _connection_lost(exc):
                raise CommitUnknownError(
                    f"lost the connection to the registry database {self.safe_url} while committing; "
                    f"the change may or may not have been saved: {exc.orig}"
                ) from exc
            self._raise_db_error(exc)
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            self._raise_db_error(exc)
            raise

    def _raise_db_error(self, exc: DBAPIError) -> None:
        """:class:`ConnectionLostError` for a dropped connection, :class:`StorageError` for other
        operational failures; returns (so the caller re-raises) for anything else."""
        if _connection_lost(exc):
            raise ConnectionLostError(
                f"lost the connection to the registry database {self.safe_url}; nothing was written: {exc.orig}"
            ) from exc
        if isinstance(exc, OperationalError):
            raise StorageError(f"registry database error: {exc.orig}") from exc

    def _lock_model(self, conn: Connection, model_name: str) -> None:
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "modelkeep:" + model_name})

    def lock_blobs(self, conn: Connection, *, exclusive: bool) -> None:
        """Savers that reference blobs hold this shared; blob removal holds it exclusive.

        On SQLite every write transaction is already exclusive.
        """
        if self.dialect == "postgresql":
            fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            conn.execute(text(f"SELECT {fn}(hashtext('modelkeep:blobs'))"))

    @_retry_on_disconnect
    def _create_tables(self) -> None:
        try:
            with self._write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('modelkeep:schema'))"))
                    if self.schema is not None:
                        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                metadata_obj.create_all(conn, checkfirst=True)
                found = conn.execute(select(info.c.value).where(info.c.key == "schema_version")).scalar()
                if found is None:
                    conn.execute(insert(info).values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(found) > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the registry at {self.safe_url} uses index schema {found}; "
                        f"this modelkeep reads up to {SCHEMA_VERSION}: upgrade modelkeep"
                    )
        except SQLAlchemyError as exc:
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise StorageError(
                f"cannot open the registry database {self.safe_url}: {reason}{self._timeout_hint(reason)}"
            ) from exc
        except StorageError as exc:
            if not self._timeout_hint(str(exc)):
                raise
            raise StorageError(f"{exc}{self._timeout_hint(str(exc))}") from exc

    def _timeout_hint(self, reason: str) -> str:
        if "timeout" in reason.lower() or "timed out" in reason.lower():
            return " " + timeouts.describe(self.connect_timeout, self.read_timeout)
        return ""

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ----------------------------------------------------------------
    @contextlib.contextmanager
    def reserve(self, model_name: str, version: str | None, *, overwrite: bool = False) -> Iterator[Reservation]:
        """Hold the model's write lock and a version for it until the block exits.

        With ``version=None`` the next patch version is allocated. An existing
        version raises :class:`VersionExistsError` unless ``overwrite`` is true.
        Call :meth:`Reservation.put` inside the block; leaving the block commits,
        an exception rolls everything back.

        A connection that drops while the lock and version are being obtained is
        replaced once; one that drops inside the block raises
        :class:`ConnectionLostError` (a :class:`StorageError`) with nothing written.
        """
        yielded = False
        for attempt in (1, 2):
            try:
                with self._write() as conn:
                    self._lock_model(conn, model_name)
                    previous = None
                    chosen = version
                    if chosen is None:
                        top = conn.execute(
                            select(versions.c.version)
                            .where(versions.c.model_name == model_name, versions.c.parsed.is_(True))
                            .order_by(versions.c.sort_key.desc(), versions.c.id.desc())
                            .limit(1)
                        ).scalar()
                        chosen = next_version(top, lambda v: self._get(conn, model_name, v) is not None)
                    else:
                        previous = self._get(conn, model_name, chosen)
                        if previous is not None and not overwrite:
                            raise VersionExistsError(
                                f"model '{model_name}' version '{chosen}' already exists; "
                                "pass overwrite=True to replace it"
                            )
                    slot = Reservation(self, conn, model_name, chosen, previous)
                    yielded = True
                    yield slot
                    if slot.record is None:
                        raise RuntimeError("reserve() block exited without put()")
                return
            except ConnectionLostError as exc:
                if yielded or attempt == 2:
                    raise
                logger.warning("%s; retrying once on a new connection", exc)

    def claim(
        self, model_name: str, version: str | None, *, overwrite: bool = False
    ) -> contextlib.AbstractContextManager[VersionClaim]:
        """Claim a version (the next free one when ``None``) in a committed row for the block.

        Files go under the version's folder only while the claim is held, and
        :meth:`VersionClaim.put` commits the row only if it still is: see
        :mod:`modelkeep.index.claims`. Raises :class:`VersionExistsError` for an
        existing version without ``overwrite``, and :class:`SaveInProgressError`
        when another save holds that version.
        """
        from .claims import claimed

        return claimed(self, model_name, version, overwrite=overwrite)

    @_retry_on_disconnect
    def put(self, record: ModelMetadata) -> None:
        """Insert or replace ``record`` as is (used by reindex and copy)."""
        with self._write() as conn:
            self._lock_model(conn, record.model_name)
            previous = self._get(conn, record.model_name, record.version)
            slot = Reservation(self, conn, record.model_name, record.version, previous)
            slot.put(record)

    @_retry_on_disconnect
    def delete(self, model_name: str, version: str) -> ModelMetadata:
        """Remove one version's entry and return it; :class:`VersionNotFoundError` if absent."""
        with self._write() as conn:
            self._lock_model(conn, model_name)
            rec = self._get(conn, model_name, version)
            if rec is None:
                raise self._missing(conn, model_name, version)
            conn.execute(delete(versions).where(versions.c.model_name == model_name, versions.c.version == version))
            _drop_blob_refs(conn, model_name, version)
            return rec

    def release_blobs(self, candidates: set[str], remove: Callable[[list[str]], None]) -> list[str]:
        """Call ``remove`` with the ``candidates`` no version references any more.

        Runs under the exclusive blob lock, so no saver can start referencing
        a blob between the check and its removal. Returns what was removed.
        """
        if not candidates:
            return []
        with self._write() as conn:
            self.lock_blobs(conn, exclusive=True)
            used = {
                r[0] for r in conn.execute(select(blob_refs.c.sha256).where(blob_refs.c.sha256.in_(sorted(candidates))))
            }
            unused = sorted(candidates - used)
            if unused:
                remove(unused)
            return unused

    @_retry_on_disconnect
    def referenced_blobs(self) -> set[str]:
        """Every blob digest some version references."""
        with self._read() as conn:
            return {r[0] for r in conn.execute(select(blob_refs.c.sha256).distinct())}

    @_retry_on_disconnect
    def clear(self) -> None:
        """Delete every entry."""
        self.replace_all([])

    @_retry_on_disconnect
    def replace_all(self, records: list[ModelMetadata]) -> None:
        """Replace every entry with ``records``, in one transaction (for reindex).

        Readers see either the old index or the new one, never a half-built one;
        on PostgreSQL every model named on either side is locked meanwhile.
        """
        with self._write() as conn:
            names = {r[0] for r in conn.execute(select(versions.c.model_name).distinct())}
            for name in sorted(names | {r.model_name for r in records}):
                self._lock_model(conn, name)
            conn.execute(delete(blob_refs))
            conn.execute(delete(versions))
            for record in records:
                Reservation(self, conn, record.model_name, record.version, None).put(record)

    @contextlib.contextmanager
    def lock_model(self, model_name: str) -> Iterator[None]:
        """Hold a model's write lock (what savers hold) for the block, writing nothing."""
        with self._write() as conn:
            self._lock_model(conn, model_name)
            yield

    # -- reading ----------------------------------------------------------------
    def _get(self, conn: Connection, model_name: str, version: str) -> ModelMetadata | None:
        raw = conn.execute(
            select(versions.c.record).where(versions.c.model_name == model_name, versions.c.version == version)
        ).scalar()
        return None if raw is None else _record(raw)

    def _missing(self, conn: Connection, model_name: str, version: str) -> ModelNotFoundError:
        exists = conn.execute(select(versions.c.id).where(versions.c.model_name == model_name).limit(1)).first()
        if exists is None:
            return no_versions(model_name)
        return VersionNotFoundError(f"Model '{model_name}' has no version '{version}'")

    @_retry_on_disconnect
    def get(self, model_name: str, version: str) -> ModelMetadata | None:
        """The record of one version, or ``None``."""
        with self._read() as conn:
            return self._get(conn, model_name, version)

    @_retry_on_disconnect
    def resolve(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """The record of ``version`` (latest when ``None``); raises when absent."""
        with self._read() as conn:
            if version is None:
                raw = conn.execute(
                    select(versions.c.record).where(versions.c.model_name == model_name).order_by(*_ORDER_DESC).limit(1)
                ).scalar()
                if raw is None:
                    raise no_versions(model_name)
                return _record(raw)
            rec = self._get(conn, model_name, version)
            if rec is None:
                raise self._missing(conn, model_name, version)
            return rec

    @_retry_on_disconnect
    def list_models(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(select(versions.c.model_name).distinct().order_by(versions.c.model_name))
            return [r[0] for r in rows]

    @_retry_on_disconnect
    def list_versions(self, model_name: str) -> list[str]:
        """Version strings in ascending version order (unparsed ones first, by creation)."""
        with self._read() as conn:
            rows = conn.execute(
                select(versions.c.version).where(versions.c.model_name == model_name).order_by(*_ORDER_ASC)
            )
            return [r[0] for r in rows]

    @_retry_on_disconnect
    def list_records(self, model_name: str) -> list[ModelMetadata]:
        with self._read() as conn:
            rows = conn.execute(
                select(versions.c.record).where(versions.c.model_name == model_name).order_by(*_ORDER_ASC)
            )
            return [_record(r[0]) for r in rows]

    def iter_records(self) -> Iterator[ModelMetadata]:
        """Every record of every model (for verify, gc and copy)."""
        with self._read() as conn:
            for (raw,) in conn.execute(select(versions.c.record).order_by(versions.c.model_name, *_ORDER_ASC)):
                yield _record(raw)

    @_retry_on_disconnect
    def summaries(self) -> list[ModelSummary]:
        ranked = select(
            versions.c.model_name,
            versions.c.version,
            func.count().over(partition_by=versions.c.model_name).label("n"),
            func.max(versions.c.updated_at).over(partition_by=versions.c.model_name).label("updated"),
            func.row_number().over(partition_by=versions.c.model_name, order_by=_ORDER_DESC).label("rank"),
        ).subquery()
        query = (
            select(ranked.c.model_name, ranked.c.n, ranked.c.version, ranked.c.updated)
            .where(ranked.c.rank == 1)
            .order_by(ranked.c.model_name)
        )
        with self._read() as conn:
            return [ModelSummary(r[0], int(r[1]), r[2], r[3]) for r in conn.execute(query)]

    @_retry_on_disconnect
    def count_artifact_refs(self, artifact_key: str) -> int:
        """How many versions point at ``artifact_key`` (dedup references)."""
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(versions).where(versions.c.artifact_key == artifact_key)
                ).scalar_one()
            )

    @_retry_on_disconnect
    def find_artifact(self, sha256: str, *, exclude_key: str) -> str | None:
        """The key of some stored artifact with exactly these bytes, other than ``exclude_key``."""
        with self._read() as conn:
            return conn.execute(
                select(versions.c.artifact_key)
                .where(versions.c.sha256 == sha256, versions.c.artifact_key != exclude_key)
                .limit(1)
            ).scalar()

    @_retry_on_disconnect
    def artifact_keys(self) -> set[str]:
        with self._read() as conn:
            return {r[0] for r in conn.execute(select(versions.c.artifact_key))}


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a long busy timeout, and BEGIN IMMEDIATE for write transactions."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
