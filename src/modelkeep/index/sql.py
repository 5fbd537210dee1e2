"""The registry index on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

Writers serialize per registry (SQLite: ``BEGIN IMMEDIATE``) or per model
(PostgreSQL: a transaction-scoped advisory lock), and the unique constraint on
``(model_name, version)`` backs both up. A writer that dies mid-transaction
releases its lock with its connection, so no stale lock can outlive a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .. import timeouts
from ..errors import (
    BackendUnavailableError,
    CommitUnknownError,
    ConfigError,
    ConnectionLostError,
    IncompatibleRegistryError,
    IntegrityError,
    ModelNotFoundError,
    RegistryNotFoundError,
    StorageError,
    VersionExistsError,
    VersionInUseError,
    VersionNotFoundError,
    VersionTrashedError,
    no_versions,
)
from ..identity import Identity, acting, may_view
from ..layout import record_blobs
from ..metadata import ModelMetadata, ModelSummary
from ..versions import next_version
from .audit import (
    ALIAS_RESIGN,
    LIVE,
    PENDING,
    ROW_COLUMNS,
    HistoryRow,
    artifact_summary,
    attach_lifecycle,
    now,
    touch_model,
    write_history,
)
from .common import ORDER_ASC as _ORDER_ASC
from .common import ORDER_DESC as _ORDER_DESC
from .common import RECORD_COLUMNS, RECORD_WIDTH, bound_row, drop_blob_refs, record_row, run, send, trashed_error
from .common import connection_lost as _connection_lost
from .common import retry_on_disconnect as _retry_on_disconnect
from .fields import drop_fields, field_rows, index_fields
from .migrations import SCHEMA_VERSION, pending
from .pg_batch import literal_sql, run_script
from .rows import binding_error, parse_record, text_value
from .schema import aliases, blob_refs, fields, history, info, metadata_obj, models, policies, tags, versions

if TYPE_CHECKING:
    from .claims import VersionClaim
    from .lifecycle import Lifecycle

_WRITE = "modelkeep_write"
_SINGLE = "modelkeep_single_statement"
#: ``conn.info`` key of a PostgreSQL write transaction whose ``BEGIN`` is not sent yet (see :meth:`SqlIndex._write`).
_BEGIN = "modelkeep_begin_pending"
#: A pooled PostgreSQL connection is pinged before use only after it sat idle this long (seconds);
#: one used more recently is trusted (a dead one fails its first statement, before any commit,
#: and the caller's retry takes a new connection).
IDLE_PING_SECONDS = 1.0
#: What a registry_url may look like, for the error that names one that is not.
URL_FORMS = "sqlite:///path/to/registry.db, postgresql://user@host/db, or a registry server's https://host:port"
#: Writes the event files of history rows into the store (see :attr:`SqlIndex.journal`).
Journal = Callable[[list[HistoryRow]], None]
logger = logging.getLogger("modelkeep")


class SharedCompiledCache:
    """SQLAlchemy's cache of compiled statements, shared by every SQLite engine of the process.

    Each engine has a cache of its own, keyed by its own dialect object, so every registry
    opened in a process compiled each statement again on first use: ~11 statements, a few
    milliseconds of the first save into a fresh registry (bench/large.py's "fresh registry"
    case). The SQLite dialects that :class:`SqlIndex` creates are configured alike (same
    ``create_engine`` arguments, same ``sqlite3`` library, so the same server version), and
    compile a statement to the same SQL; this cache keys them by that configuration instead
    of by the object. It is passed as the engine's ``compiled_cache`` execution option (the
    cache only needs ``get`` and item assignment)."""

    def __init__(self, size: int = 1000) -> None:
        from sqlalchemy.util import LRUCache

        self._cache: Any = LRUCache(size)

    @staticmethod
    def _key(key: tuple[Any, ...]) -> tuple[Any, ...]:
        dialect = key[0]
        config = (
            type(dialect),
            dialect.server_version_info,
            dialect.paramstyle,
            dialect.positional,
            dialect.label_length,
            dialect.max_identifier_length,
            dialect.insert_returning,
            dialect.use_insertmanyvalues,
        )
        return (config, *key[1:])

    def get(self, key: tuple[Any, ...], default: Any = None) -> Any:
        return self._cache.get(self._key(key), default)

    def __setitem__(self, key: tuple[Any, ...], value: Any) -> None:
        self._cache[self._key(key)] = value

    def __len__(self) -> int:
        return len(self._cache)


#: The compiled statements of every SQLite index in this process (see :class:`SharedCompiledCache`).
SHARED_COMPILED = SharedCompiledCache()


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for bare ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def missing_registry(where: str, schema: str | None = None) -> RegistryNotFoundError:
    """The error for a read of a registry that does not exist: a local folder without
    ``registry.db``, or a database (``schema``) without modelkeep's tables."""
    if "://" not in where:
        text = f"no modelkeep registry at {where!r} (registry.db not found): check models_dir, or save a model first"
    else:
        inside = f", schema {schema!r}" if schema else ""
        text = (
            f"no modelkeep registry in {where}{inside} (its tables do not exist): "
            "check registry_url, or save a model first"
        )
    return RegistryNotFoundError(text, cli={"models_dir": "--models-dir", "registry_url": "--registry-url"})


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
        #: The audit row ``put`` writes (``None``: none, as for reindex).
        self.history_action: str | None = "save" if previous is None else "overwrite"
        #: A claim's token: ``put`` first removes that claim (the fence) and writes nothing when it
        #: is gone (``record`` stays ``None``). PostgreSQL only, a new version without blobs: the
        #: fence and every row then go in one statement (:func:`put_fenced_version`), which takes
        #: the model's lock itself (the caller has not), in one message with its BEGIN.
        self.fence: str | None = None

    def lock_blobs(self) -> None:
        """Hold the shared blob lock until commit: gc cannot remove blobs meanwhile."""
        self._index.lock_blobs(self._conn, exclusive=False)

    def put(self, record: ModelMetadata) -> None:
        """Write ``record`` for the reserved version; committed when the block exits."""
        if self.fence is not None:
            assert self.previous is None and self.history_action == "save" and not record_blobs(record)

            def locked(query: Any) -> Any:
                return self._index._locked_one(self._conn, self.model_name, query)

            if put_fenced_version(self._conn, record, self.fence, run=locked):
                self.record = record
            return
        row = record_row(record)
        version_id: int | None = None
        fresh_id = False
        if self.previous is None:
            try:
                result = run(self._conn, _INSERT_VERSION, row)
            except SAIntegrityError as exc:  # a row no writer claimed (an older modelkeep, or by hand)
                raise VersionExistsError(
                    f"model '{self.model_name}' version '{self.version}' was written by another "
                    "writer without a claim (an older modelkeep?); nothing was registered"
                ) from exc
            found = result.inserted_primary_key
            version_id = None if found is None or found[0] is None else int(found[0])
            # A PostgreSQL id comes from a sequence, never handed out twice; SQLite may reuse
            # the rowid of a row removed by hand, whose field rows may be left over.
            fresh_id = version_id is not None and self._index.dialect == "postgresql"
        else:
            self._conn.execute(
                update(versions)
                .where(versions.c.model_name == self.model_name, versions.c.version == self.version)
                .values(**row)
            )
            drop_blob_refs(self._conn, self.model_name, self.version)
        # search: the record's scalar fields, one row each
        index_fields(self._conn, record, version_id=version_id, fresh=fresh_id)
        shas = record_blobs(record)
        if shas:
            self._conn.execute(
                insert(blob_refs),
                [{"model_name": self.model_name, "version": self.version, "sha256": sha} for sha in shas],
            )
        at = now()
        # Every model with a version has its models row (the models page walks those rows),
        # a copy's or a reindex's too, which write no history row of their own here.
        touch_model(self._conn, self.model_name, at)
        if self.history_action is not None:
            write_history(
                self._conn,
                self.history_action,
                self.model_name,
                version=self.version,
                before=None if self.previous is None else artifact_summary(self.previous),
                after=artifact_summary(record),
                at=at,
            )
        self.record = record


def put_new_versions(conn: Connection, records: list[ModelMetadata]) -> None:
    """Insert new versions' rows, inside the caller's write transaction (models locked, versions
    claimed): what :meth:`Reservation.put` writes for each new version (row, searchable fields,
    blob references, the model's row, a ``save`` history row and its event file), with one
    multi-row statement per table instead of one statement per row (``save_many``)."""
    conn.execute(insert(versions), [record_row(r) for r in records])
    names = sorted({r.model_name for r in records})
    wanted = {(r.model_name, r.version) for r in records}
    ids = {
        (m, v): int(i)
        for i, m, v in conn.execute(
            select(versions.c.id, versions.c.model_name, versions.c.version).where(
                versions.c.model_name.in_(names), versions.c.version.in_({r.version for r in records})
            )
        )
        if (m, v) in wanted
    }
    field_list = [f for r in records for f in field_rows(ids[(r.model_name, r.version)], r.metadata)]
    if field_list:
        conn.execute(insert(fields), field_list)
    refs = [
        {"model_name": r.model_name, "version": r.version, "sha256": sha} for r in records for sha in record_blobs(r)
    ]
    if refs:
        conn.execute(insert(blob_refs), refs)
    at = now()
    known = set(conn.execute(select(models.c.model_name).where(models.c.model_name.in_(names))).scalars())
    new_models = [n for n in names if n not in known]
    if new_models:
        conn.execute(
            insert(models),
            [{"model_name": n, "description": None, "created_at": at, "updated_at": at} for n in new_models],
        )
    for r in records:
        write_history(conn, "save", r.model_name, version=r.version, after=artifact_summary(r), at=at)


def put_fenced_version(
    conn: Connection, record: ModelMetadata, token: str, *, run: Callable[[Any], Any] | None = None
) -> bool:
    """PostgreSQL: commit a new version under its claim in one statement, inside the caller's write
    transaction (model locked): the claim's delete is the fence, and only when it removed the claim
    do the version row, its field rows, the model's row (``ON CONFLICT DO NOTHING``) and the
    ``save`` history row go in (data-modifying CTEs, each gated on the one before). What
    :meth:`Reservation.put` writes for a new version without blobs, in one round trip instead of
    five. False when the claim is not ``token``'s any more (nothing written); a row some writer
    put there without a claim fails the insert on the unique key (:class:`VersionExistsError`).
    ``run(query)`` sends the statement and returns its one row (default: ``conn.execute``)."""
    from sqlalchemy import Double, String, Text, cast, column, true, values
    from sqlalchemy.dialects import postgresql

    from .audit import actor, signed_move_seq
    from .schema import claims

    def constants(row: dict[str, Any], table: Any) -> Any:
        return select(*(bindparam(f"{table.name}_{k}", v, type_=table.c[k].type).label(k) for k, v in row.items()))

    drop_claim = delete(claims).where(claims.c.token == bindparam("fence_token", token))
    fence = drop_claim.returning(claims.c.token).cte("fence")
    row = record_row(record)
    new_row = (
        insert(versions)
        .from_select(list(row), constants(row, versions).where(select(fence.c.token).exists()))
        .returning(versions.c.id)
        .cte("new_version")
    )
    at = now()
    touched = {"model_name": record.model_name, "description": None, "created_at": at, "updated_at": at}
    model_row = (
        postgresql.insert(models)
        .from_select(list(touched), constants(touched, models).where(select(new_row.c.id).exists()))
        .on_conflict_do_nothing(index_elements=[models.c.model_name])
        .cte("model_row")
    )
    entry = {
        "at": at,
        "actor": actor(),
        "action": "save",
        "model_name": record.model_name,
        "version": record.version,
        "alias": None,
        "key": None,
        "before": None,
        "after": json.dumps(artifact_summary(record), separators=(",", ":")),
        "signature": None,
    }
    event_id = uuid.uuid4().hex
    stored = {**entry, "event_id": event_id, "seq": signed_move_seq(entry, None)}
    history_row = (
        insert(history)
        .from_select(list(stored), constants(stored, history).where(select(new_row.c.id).exists()))
        .returning(history.c.id)
        .cte("history_row")
    )
    ctes: list[Any] = [model_row]
    found = list(field_rows(0, record.metadata))
    if found:
        given = values(column("key", String), column("num", fields.c.num.type), column("str", Text), name="given").data(
            [(f["key"], f["num"], f["str"]) for f in found]
        )
        ctes.append(
            insert(fields)
            .from_select(
                ["version_id", "key", "num", "str"],
                select(new_row.c.id, given.c.key, cast(given.c.num, Double), cast(given.c.str, Text)).join_from(
                    new_row, given, true()
                ),
            )
            .cte("field_rows")
        )
    query = select(
        select(new_row.c.id).scalar_subquery().label("version_id"),
        select(history_row.c.id).scalar_subquery().label("history_id"),
    ).add_cte(*ctes)
    try:
        version_id, history_id = run(query) if run is not None else conn.execute(query).one()
    except SAIntegrityError as exc:  # a row no writer claimed (an older modelkeep, or by hand)
        raise VersionExistsError(
            f"model '{record.model_name}' version '{record.version}' was written by another "
            "writer without a claim (an older modelkeep?); nothing was registered"
        ) from exc
    if version_id is None:
        return False
    written = HistoryRow(int(history_id), event_id, entry, {})
    conn.info.setdefault(PENDING, []).append(written)
    return True


_record = parse_record
# Statements of every save, built once (SQLAlchemy reuses their compiled form and cache key).
_GET_RECORD = select(*RECORD_COLUMNS).where(
    versions.c.model_name == bindparam("model_name"), versions.c.version == bindparam("version")
)
_HIGHEST = (
    select(versions.c.version)
    .where(versions.c.model_name == bindparam("model_name"), versions.c.parsed.is_(True))
    .order_by(versions.c.sort_key.desc(), versions.c.id.desc())
    .limit(1)
)
_INSERT_VERSION = insert(versions)
#: One version's row as a record read wants it (record, description, trashed), built once.
_LIVE_RECORD = select(*RECORD_COLUMNS, versions.c.description, versions.c.deleted_at).where(
    versions.c.model_name == bindparam("model_name"), versions.c.version == bindparam("version")
)


class CheckedRow(NamedTuple):
    """One index row: its record, the model name and version it is stored under, and why the
    record does not belong to it (``None`` when it does)."""

    record: ModelMetadata
    model_name: str
    version: str
    error: IntegrityError | None


class SqlIndex:
    """Versions of every model, keyed by ``(model_name, version)``.

    ``url`` is any SQLAlchemy URL; ``schema`` (PostgreSQL) puts the tables in
    a schema of their own, created if needed. With ``create=False`` a registry that
    does not exist yet (no SQLite file; on PostgreSQL, no tables) raises
    :class:`RegistryNotFoundError` and nothing is created.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout: float = timeouts.CONNECT_TIMEOUT,
        read_timeout: float = timeouts.READ_TIMEOUT,
        create: bool = True,
    ) -> None:
        self.url = normalize_url(url)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        try:
            parsed = make_url(self.url)
        except Exception as exc:  # sqlalchemy raises ArgumentError with a terse text
            raise ConfigError(f"registry_url {url!r} is not a valid database URL: {exc} ({URL_FORMS})") from exc
        self.dialect = parsed.get_backend_name()
        self.schema = schema
        database = parsed.database or ":memory:"
        if not create and self.dialect == "sqlite" and database != ":memory:" and not os.path.isfile(database):
            raise missing_registry(os.path.dirname(os.path.abspath(database)))
        try:
            if self.dialect == "sqlite":
                engine = create_engine(self.url, connect_args={"timeout": 60})
                _sqlite_setup(engine)
            else:
                args = timeouts.postgres_connect_args(dict(parsed.query), connect_timeout, read_timeout)
                engine = create_engine(self.url, pool_size=2, max_overflow=4, connect_args=args)
                _postgres_setup(engine)
        except NoSuchModuleError as exc:  # a scheme no dialect has (ftp://, postgres://): the user's to fix
            raise ConfigError(
                f"registry_url {url!r} names no database modelkeep can open ({parsed.drivername}://): use {URL_FORMS}"
            ) from exc
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the database driver for {parsed.drivername!r} is not installed: {exc} "
                "(for PostgreSQL install modelkeep[postgres])"
            ) from exc
        options: dict[str, Any] = {}
        if self.dialect == "sqlite":  # a fresh registry's first save compiles nothing again
            options["compiled_cache"] = SHARED_COMPILED
        if schema is not None:
            options["schema_translate_map"] = {None: schema}
        if options:
            engine = engine.execution_options(**options)
        self.engine: Engine = engine
        #: Writes each history row's event file into the store before its transaction commits
        #: (set by the registry; ``None``: the index alone, no event files).
        self.journal: Journal | None = None
        self._exported = False  # rows from before schema 9 have been written out
        #: Who reads when no identity acts for the block (:func:`~modelkeep.identity.acting_as`):
        #: the registry sets its own (a token's owner); ``None``: nobody, every model visible.
        self.reader: Callable[[], Identity | None] | None = None
        self._open_schema(create)

    # -- plumbing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _write(
        self, *, power_safe: bool = True, before_commit: Callable[[], None] | None = None
    ) -> Iterator[Connection]:
        """A write transaction. ``power_safe=False`` (SQLite only; see :func:`_relaxed_sync`)
        commits without waiting for the disk: durable if the process crashes, not if the
        machine loses power. Only for rows that mean nothing once their process is gone.
        ``before_commit`` runs last before the COMMIT, once the block and its event files are
        written (a wait for the files the rows name to be durable: it overlaps that work).

        On PostgreSQL the connection runs in the driver's autocommit mode and the transaction's
        ``BEGIN`` is sent by modelkeep in the same round trip as its first statement (psycopg
        would send it as a query of its own): by :meth:`_lock_model` when that comes first, else
        just before the first statement. A write never depends on the driver's mode to be one
        transaction; COMMIT and ROLLBACK are sent as before."""
        committing = False
        postgres = self.dialect == "postgresql"
        options: dict[str, Any] = {_WRITE: True}
        if postgres:  # BEGIN is ours to send, with the first statement (see _postgres_setup)
            options["isolation_level"] = "AUTOCOMMIT"
        try:
            with (
                self.engine.connect().execution_options(**options) as conn,
                _relaxed_sync(conn, self.dialect == "sqlite" and not power_safe),
                conn.begin(),
            ):
                conn.info[PENDING] = []
                if postgres:
                    conn.info[_BEGIN] = True
                try:
                    yield conn
                    self._write_events(conn)
                    if before_commit is not None:
                        before_commit()
                finally:
                    # A connection that died in the block raises on any use: its error is the one to report.
                    with contextlib.suppress(SQLAlchemyError):
                        conn.info.pop(PENDING, None)
                        conn.info.pop(_BEGIN, None)  # the info outlives the checkout
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

    def _write_events(self, conn: Connection) -> None:
        """Write the event files of the history rows this transaction added (fsync'ed, before
        COMMIT: a crash in between leaves a file no row names, which gc removes), preceded the
        first time by those of rows written before schema 9 (the upgrade: see :meth:`export_events`)."""
        if self.journal is None:
            return
        queued: list[HistoryRow] = conn.info.get(PENDING) or []
        if not self._exported:
            queued = self._unexported(conn) + queued
            self._exported = True
        if queued:
            self.journal(queued)

    def _unexported(self, conn: Connection) -> list[HistoryRow]:
        """History rows without an event file yet (written by an older release), given one."""
        if conn.execute(select(history.c.id).where(history.c.event_id.is_(None)).limit(1)).first() is None:
            return []
        if self.dialect == "postgresql":  # one writer at a time names them
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('modelkeep:export-events'))"))
        seqs = _alias_seqs(conn)
        out = []
        for row in conn.execute(select(history).where(history.c.event_id.is_(None)).order_by(history.c.id)).all():
            event = _history_row(row._mapping, seqs, uuid.uuid4().hex)
            conn.execute(update(history).where(history.c.id == event.seq).values(event_id=event.event_id))
            out.append(event)
        return out

    @_retry_on_disconnect
    def history_rows(self, model_name: str, *, stored: bool = False) -> list[Any]:
        """The model's history rows as event files carry them (:class:`HistoryRow`), oldest first
        (what ``copy`` and bundles carry); a row not written out yet gets an id derived from its
        content. With ``stored``, ``(row, whether its event id is in the index)`` pairs."""
        with self._read() as conn:
            seqs = _alias_seqs(conn)
            query = select(history).where(history.c.model_name == model_name).order_by(history.c.id)
            found = [(r._mapping, r._mapping["event_id"]) for r in conn.execute(query)]
        rows = [(_history_row(m, seqs, eid), isinstance(eid, str)) for m, eid in found]
        return rows if stored else [row for row, _ in rows]

    @_retry_on_disconnect
    def history_models(self) -> list[str]:
        """Every model name the history mentions."""
        with self._read() as conn:
            return sorted(text_value(n) for n in conn.execute(select(history.c.model_name).distinct()).scalars())

    def export_events(self) -> int:
        """Write out the event files of history rows that have none (rows of an older release);
        returns how many. Every write does this once; ``gc`` and ``reindex`` call it first."""
        with self._write() as conn:
            found = self._unexported(conn)
            if found and self.journal is not None:
                self.journal(found)
        return len(found)

    def fixed_rows(self, statement: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of one fixed read ``statement`` (a construct built once, at import), by the
        shortest road: on SQLite through :func:`~.common.run`, on PostgreSQL straight to psycopg
        on a pooled connection (:func:`~.pg_batch.pooled_rows`). For the reads every API request
        makes (its token check); errors are translated as :meth:`_read` translates them."""
        if self.engine.dialect.driver != "psycopg":  # SQLite (and a driver other than psycopg 3)
            with self._read() as conn:
                return list(run(conn, statement, params))
        from .pg_batch import pooled_rows

        try:
            return pooled_rows(self.engine, self.schema, statement, params)
        except DBAPIError as exc:
            self._raise_db_error(exc)
            raise

    @contextlib.contextmanager
    def _read(self, *, single: bool = False) -> Iterator[Connection]:
        """A read. ``single`` (SQLite): the block runs one statement, which is then sent without
        BEGIN around it; sqlite3 runs it in a transaction of its own. PostgreSQL reads run in
        autocommit, without BEGIN and ROLLBACK: under READ COMMITTED every statement of a
        transaction takes a snapshot of its own anyway, so a read transaction adds two round
        trips and no consistency. The pool puts the connection back out of autocommit when it
        is returned, and a write never relies on that (:meth:`_write` sends its own BEGIN)."""
        try:
            with self.engine.connect() as conn:
                if single and self.dialect == "sqlite":
                    conn.execution_options(**{_SINGLE: True})
                elif self.dialect == "postgresql":
                    conn.execution_options(isolation_level="AUTOCOMMIT")
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
        """Take the model's write lock (PostgreSQL: a transaction-scoped advisory lock; as the
        transaction's first statement it goes in one round trip with its BEGIN)."""
        if self.dialect != "postgresql":
            return
        if conn.info.pop(_BEGIN, False):
            conn.exec_driver_sql(f"BEGIN; {self._lock_sql(conn, model_name)}")
            return
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "modelkeep:" + model_name})

    @staticmethod
    def _lock_sql(conn: Connection, model_name: str) -> str:
        """The statement of the model's write lock (PostgreSQL), as text."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        from psycopg import sql

        key = sql.Literal("modelkeep:" + model_name).as_string(raw)  # type: ignore[arg-type]
        return f"SELECT pg_advisory_xact_lock(hashtext({key}))"

    def _locked_one(self, conn: Connection, model_name: str, statement: Any) -> Any:
        """Take the model's write lock, then run ``statement`` and return its one row. PostgreSQL,
        as the transaction's first statements: BEGIN, the lock and ``statement`` in one message
        (one round trip; the lock is still a statement of its own, so ``statement``'s snapshot is
        taken once the lock is held)."""
        if self.dialect == "postgresql" and conn.info.pop(_BEGIN, False):
            script = f"BEGIN; {self._lock_sql(conn, model_name)}; {literal_sql(conn, statement)}"
            (row,) = run_script(conn, script)[-1]
            return row
        self._lock_model(conn, model_name)
        return conn.execute(statement).one()

    def lock_blobs(self, conn: Connection, *, exclusive: bool) -> None:
        """Savers that reference blobs hold this shared; blob removal holds it exclusive.

        On SQLite every write transaction is already exclusive.
        """
        if self.dialect == "postgresql":
            fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            conn.execute(text(f"SELECT {fn}(hashtext('modelkeep:blobs'))"))

    @_retry_on_disconnect
    def _open_schema(self, create: bool = True) -> None:
        """Create a new registry (unless ``create`` is false), or bring an older one up to :data:`SCHEMA_VERSION`.

        The usual case (already current) costs one read. Otherwise, under the write
        lock (and on PostgreSQL a schema-wide advisory lock), the steps of
        :mod:`.migrations` run in one transaction, so concurrent openers upgrade once
        and a crash mid-upgrade leaves the old schema intact.
        """
        try:
            if self._stamped_version() == SCHEMA_VERSION:
                return
            if not create:
                with self._read() as conn:
                    if self._schema_of(conn) is None:
                        self.engine.dispose()
                        raise missing_registry(self.safe_url, self.schema)
            with self._write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('modelkeep:schema'))"))
                    if self.schema is not None:
                        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                found = self._schema_of(conn)
                if found is None:
                    metadata_obj.create_all(conn, checkfirst=True)
                    conn.execute(insert(info).values(key="schema_version", value=str(SCHEMA_VERSION)))
                    return
                if found > SCHEMA_VERSION:
                    raise IncompatibleRegistryError(
                        f"the registry at {self.safe_url} was written with index schema {found}, newer than "
                        f"this modelkeep's {SCHEMA_VERSION}: upgrade modelkeep to open it"
                    )
                steps = pending(found)
                for step in steps:
                    logger.info("upgrading the registry index to schema %d: %s", step.version, step.summary)
                    step.upgrade(conn, self.dialect)
                if steps:
                    conn.execute(update(info).where(info.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
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

    def _stamped_version(self) -> int | None:
        """The recorded schema version, or ``None`` if it cannot be read cheaply (new database)."""
        try:
            with self.engine.connect() as conn:
                found = conn.execute(select(info.c.value).where(info.c.key == "schema_version")).scalar()
        except SQLAlchemyError:
            return None  # no tables yet, or an error that the locked path reports properly
        return None if found is None else int(found)

    def _schema_of(self, conn: Connection) -> int | None:
        """The schema of the registry behind ``conn``: ``None`` when it has no tables yet."""
        names = set(inspect(conn).get_table_names(schema=self.schema))
        if versions.name not in names:
            return None
        if info.name in names:
            found = conn.execute(select(info.c.value).where(info.c.key == "schema_version")).scalar()
            if found is not None:
                return int(found)
        return 1  # tables without a stamp: the 0.1 layout

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- visibility (see modelkeep.identity) --------------------------------------
    def viewer(self) -> Identity | None:
        """The identity reading now: the one acting for this block, else the registry's own."""
        return acting() or (self.reader() if self.reader is not None else None)

    def may_view(self, model_name: str) -> bool:
        """Whether the reader may see ``model_name``. Every read of one model asks this first and
        answers as if the model did not exist when it may not (never a hint that it does)."""
        return may_view(self.viewer(), model_name)

    def visible_names(self, conn: Connection) -> list[str] | None:
        """The model names the reader may see (``None``: all of them): models ever saved
        (``modelkeep_models``) and the globs of current promotion policies, for a
        ``WHERE model_name IN (...)`` that keeps a listing's order and limit exact."""
        who = self.viewer()
        if who is None or who.sees_everything():
            return None
        names = conn.execute(select(models.c.model_name).union(select(policies.c.model_glob))).scalars()
        return sorted(n for n in names if may_view(who, n))

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
                        top = self.highest_version(conn, model_name)
                        chosen = next_version(top, lambda v: self._get(conn, model_name, v) is not None)
                    else:
                        previous = self._get(conn, model_name, chosen)
                        if previous is not None and self._is_trashed(conn, model_name, chosen):
                            raise VersionTrashedError(
                                f"model '{model_name}' version '{chosen}' is in the trash; restore or purge it"
                            )
                        if previous is not None and not overwrite:
                            raise VersionExistsError(
                                f"model '{model_name}' version '{chosen}' already exists; "
                                "pass overwrite=True to replace it",
                                cli={"overwrite=True": "--overwrite"},
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
        self, model_name: str, version: str | None, *, overwrite: bool = False, sha256: str | None = None
    ) -> contextlib.AbstractContextManager[VersionClaim]:
        """Claim a version (the next free one when ``None``) in a committed row for the block.

        Files go under the version's folder only while the claim is held, and
        :meth:`VersionClaim.put` commits the row only if it still is: see
        :mod:`modelkeep.index.claims`. Raises :class:`VersionExistsError` for an
        existing version without ``overwrite``, and :class:`SaveInProgressError`
        when another save holds that version. ``sha256``: the bytes the save will place (the
        content dedup's lookup then rides on the claim where it can; see :func:`.claims.take`).
        """
        from .claims import claimed

        return claimed(self, model_name, version, overwrite=overwrite, sha256=sha256)

    @staticmethod
    def highest_version(conn: Connection, model_name: str) -> str | None:
        """The model's highest parsed version in the index (trashed ones included), or ``None``."""
        top = conn.execute(_HIGHEST, {"model_name": model_name}).scalar()
        return None if top is None else str(top)

    @staticmethod
    def put_new_versions(conn: Connection, records: list[ModelMetadata]) -> None:
        """:func:`put_new_versions` (for write claims' batches, which do not import this module)."""
        put_new_versions(conn, records)

    def reservation(
        self, conn: Connection, model_name: str, version: str, previous: ModelMetadata | None
    ) -> Reservation:
        """A :class:`Reservation` inside the caller's write transaction (used by write claims)."""
        return Reservation(self, conn, model_name, version, previous)

    @_retry_on_disconnect
    def put(self, record: ModelMetadata) -> None:
        """Insert or replace ``record`` as is (used by reindex and copy)."""
        with self._write() as conn:
            self._lock_model(conn, record.model_name)
            previous = self._get(conn, record.model_name, record.version)
            slot = Reservation(self, conn, record.model_name, record.version, previous)
            slot.put(record)

    @_retry_on_disconnect
    def delete(self, model_name: str, version: str, *, trashed_only: bool = False) -> ModelMetadata:
        """Remove one version's entry for good (a purge) and return it.

        Its tags go with it, and the purge is recorded in the history. With
        ``trashed_only`` a version that is not in the trash is refused. An aliased
        version is refused (delete it with ``force`` first). Raises
        :class:`VersionNotFoundError` if absent.
        """
        with self._write() as conn:
            self._lock_model(conn, model_name)
            return self.remove_version(conn, model_name, version, trashed_only=trashed_only)

    def remove_version(
        self, conn: Connection, model_name: str, version: str, *, trashed_only: bool = False
    ) -> ModelMetadata:
        """The body of :meth:`delete`, inside the caller's write transaction (model lock held)."""
        rec = self._get(conn, model_name, version)
        if rec is None:
            raise self._missing(conn, model_name, version)
        if trashed_only and not self._is_trashed(conn, model_name, version):
            raise VersionNotFoundError(f"model '{model_name}' version '{version}' is not in the trash; delete it first")
        pointing = conn.execute(
            select(aliases.c.alias).where(aliases.c.model_name == model_name, aliases.c.version == version)
        ).first()
        if pointing is not None:
            raise VersionInUseError(
                f"alias '{pointing[0]}' of model '{model_name}' points at version '{version}'; "
                "move or delete the alias first"
            )
        drop_fields(conn, model_name, version)
        conn.execute(delete(versions).where(versions.c.model_name == model_name, versions.c.version == version))
        conn.execute(delete(tags).where(tags.c.model_name == model_name, tags.c.version == version))
        drop_blob_refs(conn, model_name, version)
        write_history(conn, "purge", model_name, version=version, before=artifact_summary(rec))
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
            # Trash state and descriptions are not in the sidecars: keep them for versions that stay.
            kept = {
                (r[0], r[1]): (r[2], r[3])
                for r in conn.execute(
                    select(versions.c.model_name, versions.c.version, versions.c.deleted_at, versions.c.description)
                )
            }
            conn.execute(delete(blob_refs))
            conn.execute(delete(fields))
            conn.execute(delete(versions))
            at = now()
            for record in records:
                slot = Reservation(self, conn, record.model_name, record.version, None)
                slot.history_action = None
                slot.put(record)
                deleted_at, description = kept.get((record.model_name, record.version), (None, None))
                if deleted_at is not None or description is not None:
                    conn.execute(
                        update(versions)
                        .where(versions.c.model_name == record.model_name, versions.c.version == record.version)
                        .values(deleted_at=deleted_at, description=description)
                    )
            self._drop_dangling(conn, {(r.model_name, r.version) for r in records}, at)
            for name in sorted({r.model_name for r in records}):
                touch_model(conn, name, at)
                write_history(conn, "reindex", name, at=at)

    def _drop_dangling(self, conn: Connection, present: set[tuple[str, str]], at: str) -> None:
        """After a reindex: remove aliases (recorded) and tags of versions that are gone."""
        for model_name, alias, version in list(
            conn.execute(select(aliases.c.model_name, aliases.c.alias, aliases.c.version))
        ):
            if (model_name, version) not in present:
                conn.execute(delete(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias))
                version, alias = text_value(version), text_value(alias)  # a damaged row may hold bytes
                write_history(conn, "alias_delete", model_name, version=version, alias=alias, before=version, at=at)
        for model_name, version in list(conn.execute(select(tags.c.model_name, tags.c.version).distinct())):
            if version != "" and (model_name, version) not in present:
                conn.execute(delete(tags).where(tags.c.model_name == model_name, tags.c.version == version))

    @contextlib.contextmanager
    def lock_model(self, model_name: str) -> Iterator[None]:
        """Hold a model's write lock (what savers hold) for the block, writing nothing."""
        with self._write() as conn:
            self._lock_model(conn, model_name)
            yield

    @functools.cached_property
    def lifecycle(self) -> Lifecycle:
        """Aliases, tags, descriptions, trash and history of this index."""
        from .lifecycle import Lifecycle

        return Lifecycle(self)

    # -- reading ----------------------------------------------------------------
    def _is_trashed(self, conn: Connection, model_name: str, version: str) -> bool:
        return (
            conn.execute(
                select(versions.c.deleted_at).where(versions.c.model_name == model_name, versions.c.version == version)
            ).scalar()
            is not None
        )

    def _get(self, conn: Connection, model_name: str, version: str) -> ModelMetadata | None:
        row = conn.execute(_GET_RECORD, {"model_name": model_name, "version": version}).first()
        return None if row is None else bound_row(row)

    def _missing(self, conn: Connection, model_name: str, version: str) -> ModelNotFoundError:
        exists = conn.execute(select(versions.c.id).where(versions.c.model_name == model_name, LIVE).limit(1)).first()
        if exists is None or not self.may_view(model_name):
            return no_versions(model_name, self._model_names(conn))
        from ..suggest import versions_hint

        names = [
            r[0]
            for r in conn.execute(
                select(versions.c.version).where(versions.c.model_name == model_name, LIVE).order_by(*_ORDER_ASC)
            )
        ]
        return VersionNotFoundError(f"Model '{model_name}' has no version '{version}'{versions_hint(version, names)}")

    def _model_names(self, conn: Connection) -> list[str]:
        """The live models the reader may see (what "did you mean" suggests from)."""
        names = [r[0] for r in conn.execute(select(versions.c.model_name).where(LIVE).distinct())]
        return [n for n in names if self.may_view(n)]

    def _live_row(
        self,
        conn: Connection,
        statement: Any,
        params: dict[str, Any],
        model_name: str,
        version: str,
        *,
        deleted_at: int,
    ) -> Any:
        """The row ``statement`` selects for one live ``version`` (``params`` bind it; column
        ``deleted_at`` is its ``deleted_at``): :class:`ModelNotFoundError` for a model the
        reader may not see, as if it did not exist, the missing-version error, or the trash's."""
        if not self.may_view(model_name):
            raise no_versions(model_name, self._model_names(conn))
        row = conn.execute(statement, params).first()
        if row is None:
            raise self._missing(conn, model_name, version)
        if row[deleted_at] is not None:
            raise trashed_error(model_name, version)
        return row

    def _live(self, conn: Connection, model_name: str, version: str | None) -> ModelMetadata:
        """The live record of ``version`` (latest when ``None``) with its aliases, tags and description."""
        if version is not None:
            params = {"model_name": model_name, "version": version}
            row = self._live_row(conn, _LIVE_RECORD, params, model_name, version, deleted_at=RECORD_WIDTH + 1)
        else:
            if not self.may_view(model_name):  # as if it did not exist
                raise no_versions(model_name, self._model_names(conn))
            query = select(*RECORD_COLUMNS, versions.c.description, versions.c.deleted_at).where(
                versions.c.model_name == model_name, LIVE
            )
            row = conn.execute(query.order_by(*_ORDER_DESC).limit(1)).first()
            if row is None:
                raise no_versions(model_name, self._model_names(conn))
        rec = bound_row(row)
        return attach_lifecycle(conn, model_name, [(rec, row[RECORD_WIDTH])], version=rec.version)[0]

    @_retry_on_disconnect
    def get(self, model_name: str, version: str) -> ModelMetadata | None:
        """The record of one version (trashed too), or ``None`` (also for a model the reader may not see)."""
        if not self.may_view(model_name):
            return None
        with self._read() as conn:
            return self._get(conn, model_name, version)

    @_retry_on_disconnect
    def resolve(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """The record of ``version`` (latest when ``None``), with its aliases, tags and
        description; raises when absent or in the trash ("latest" skips the trash)."""
        with self._read() as conn:
            return self._live(conn, model_name, version)

    @_retry_on_disconnect
    def list_models(self) -> list[str]:
        """The live models the reader may see, by name."""
        with self._read() as conn:
            rows = conn.execute(select(versions.c.model_name).where(LIVE).distinct().order_by(versions.c.model_name))
            return [r[0] for r in rows if self.may_view(r[0])]

    @_retry_on_disconnect
    def list_versions(self, model_name: str) -> list[str]:
        """Version strings in ascending version order (unparsed ones first, by creation)."""
        if not self.may_view(model_name):
            return []
        with self._read() as conn:
            rows = conn.execute(
                select(versions.c.version).where(versions.c.model_name == model_name, LIVE).order_by(*_ORDER_ASC)
            )
            return [r[0] for r in rows]

    @_retry_on_disconnect
    def list_records(self, model_name: str) -> list[ModelMetadata]:
        """Live versions' records, ascending, with aliases, tags and descriptions (three queries)."""
        if not self.may_view(model_name):
            return []
        with self._read() as conn:
            rows = conn.execute(
                select(*RECORD_COLUMNS, versions.c.description)
                .where(versions.c.model_name == model_name, LIVE)
                .order_by(*_ORDER_ASC)
            )
            return attach_lifecycle(conn, model_name, [(bound_row(r, strict=False), r[RECORD_WIDTH]) for r in rows])

    def iter_records(self) -> Iterator[ModelMetadata]:
        """Every record of every model, trashed ones included: they still own their files
        (for gc and re-signing). A record that does not belong to its row raises (see
        :func:`.rows.binding_error`); :meth:`iter_checked_records` reports it instead."""
        for row in self.iter_checked_records():
            if row.error is not None:
                raise row.error
            yield row.record

    def iter_checked_records(self) -> Iterator[CheckedRow]:
        """Every row of every model, trashed ones included, with its record and the reason that
        record does not belong to it (``None`` when it does), for ``verify`` and ``gc``."""
        with self._read() as conn:
            query = select(*RECORD_COLUMNS).order_by(versions.c.model_name, *_ORDER_ASC)
            for row in conn.execute(query):
                record = _record(row[0], row[1], row[2])
                name, version = text_value(row[1]), text_value(row[2])
                if not self.may_view(name):  # only a reader with grants only: every other sees all
                    continue
                yield CheckedRow(record, name, version, binding_error(record, *row[1:RECORD_WIDTH]))

    @_retry_on_disconnect
    def summaries(self, *, limit: int | None = None, after: str | None = None) -> list[ModelSummary]:
        """Models with live versions, by name: count, latest version, last update.

        One statement whatever the number of models or versions: it walks ``modelkeep_models``
        by name (``after`` a name, at most ``limit`` of them) and asks three correlated,
        index-backed questions per model (``ix_modelkeep_versions_live`` for the count and the
        last update, ``ix_modelkeep_versions_order`` for the latest version), so a page costs
        a seek per model and an index-only count of its live versions, never a scan of the
        version rows.
        """
        own = (versions.c.model_name == models.c.model_name, LIVE)
        count = select(func.count()).select_from(versions).where(*own).scalar_subquery()
        updated = select(func.max(versions.c.updated_at)).where(*own).scalar_subquery()
        latest = (
            select(versions.c.version)
            .where(*own)
            .order_by(versions.c.parsed.desc(), versions.c.sort_key.desc(), versions.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = (
            select(models.c.model_name, count, latest, updated)
            .where(exists().where(*own))
            .order_by(models.c.model_name)
        )
        if after is not None:
            query = query.where(models.c.model_name > after)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [ModelSummary(r[0], int(r[1]), r[2], r[3]) for r in conn.execute(query) if self.may_view(r[0])]

    @_retry_on_disconnect
    def count_artifact_refs(self, artifact_key: str) -> int:
        """How many versions, trashed ones included, point at ``artifact_key`` (dedup references)."""
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(versions).where(versions.c.artifact_key == artifact_key)
                ).scalar_one()
            )

    @_retry_on_disconnect
    def find_artifact(self, sha256: str, *, exclude_key: str) -> str | None:
        """The key of some stored artifact with exactly these bytes, other than ``exclude_key``
        (a trashed version's too: its bytes stay until it is purged, and purge counts references)."""
        with self._read(single=True) as conn:
            return conn.execute(
                select(versions.c.artifact_key)
                .where(versions.c.sha256 == sha256, versions.c.artifact_key != exclude_key)
                .limit(1)
            ).scalar()

    @_retry_on_disconnect
    def find_artifacts(self, shas: set[str]) -> dict[str, str]:
        """:meth:`find_artifact` for many digests in one query: ``{sha256: some stored key}``."""
        if not shas:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                select(versions.c.sha256, versions.c.artifact_key).where(versions.c.sha256.in_(sorted(shas)))
            )
            return {text_value(sha): text_value(key) for sha, key in rows}

    @_retry_on_disconnect
    def artifact_keys(self) -> set[str]:
        with self._read() as conn:
            return {r[0] for r in conn.execute(select(versions.c.artifact_key))}


@contextlib.contextmanager
def _relaxed_sync(conn: Connection, relax: bool) -> Iterator[None]:
    """Commit the block's SQLite transaction with ``synchronous = NORMAL``: in WAL mode the
    commit is then atomic and survives a crash of the process, but its WAL frames are synced
    only by the next ``FULL`` commit (or checkpoint), so a power cut may undo it. Write claims
    use it: a claim fences other writers only while its own process lives, and a power cut
    ends every process; the files such a writer placed are named by no row and are removed
    by ``gc`` (tests/test_crash.py). Restored to ``FULL`` when the block ends."""
    if not relax:
        yield
        return
    import sqlite3

    raw = conn.connection.dbapi_connection
    assert raw is not None
    # on the driver's connection: in autocommit mode, outside any transaction (a closed connection is retried)
    send(conn, "PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        try:
            raw.cursor().execute("PRAGMA synchronous = FULL")
        except sqlite3.Error:  # never hand this connection out again with the relaxed setting
            conn.invalidate()


def _alias_seqs(conn: Connection) -> dict[tuple[Any, ...], Any]:
    """``(model, alias, version, signature) -> seq`` of every alias: the move number a history
    row that made the alias's current signed move needs in its event file."""
    query = select(aliases.c.model_name, aliases.c.alias, aliases.c.version, aliases.c.signature, aliases.c.seq)
    return {tuple(r[:4]): r[4] for r in conn.execute(query)}


def _history_row(mapping: Any, seqs: dict[tuple[Any, ...], Any], event_id: str | None) -> HistoryRow:
    values = {c: mapping[c] if mapping[c] is None else text_value(mapping[c]) for c in ROW_COLUMNS}
    if not isinstance(event_id, str) or len(event_id) != 32:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
        event_id = digest[:32]
    seq = seqs.get((values["model_name"], values["alias"], values["version"], values["signature"]))
    signed = values["action"] in ("alias_set", ALIAS_RESIGN) and values["signature"] is not None
    keep = signed and isinstance(seq, int)
    return HistoryRow(int(mapping["id"]), event_id, values, {"seq": seq} if keep else {})


def _postgres_setup(engine: Engine) -> None:
    """A ping before a pooled connection is used only when it sat idle for :data:`IDLE_PING_SECONDS`
    (``pool_pre_ping`` would cost a round trip at every checkout), and the ``BEGIN`` of a write
    transaction whose first statement is not the model lock (see :meth:`SqlIndex._write`)."""
    from sqlalchemy.exc import DisconnectionError

    idle_since = "modelkeep_idle_since"

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi: Any, record: Any) -> None:
        record.info[idle_since] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi: Any, record: Any) -> None:
        if record is not None:
            record.info[idle_since] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(idle_since, 0.0) <= IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi)
        except Exception as exc:  # the pool replaces it with a new connection
            raise DisconnectionError(f"a pooled connection is gone: {exc}") from exc

    @event.listens_for(engine, "before_cursor_execute")
    def _begin(conn: Connection, cursor: Any, *_args: Any) -> None:
        if conn.info.pop(_BEGIN, False):
            cursor.execute("BEGIN")


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
        options = conn.get_execution_options()
        if options.get(_SINGLE):  # one statement: sqlite3 runs it in a transaction of its own
            return
        # straight to the driver (two per save through SQLAlchemy's execution layer cost ~0.1 ms)
        send(conn, "BEGIN IMMEDIATE" if options.get(_WRITE) else "BEGIN")
