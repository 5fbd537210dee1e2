"""Write claims: who may write (or delete) the files of one version, recorded in the database.

The rule they enforce: no write or delete touches a key that a committed row,
other than the writer's own, might reference.

* Before any byte goes under ``<name>/<version>/``, a save commits a *claim*
  row ``(model_name, version, token)`` with a random per-attempt token. A
  claim is data, not a lock: it survives a dropped connection, a failover or a
  server restart, so no other writer can get that version while it exists
  (automatic versions skip claimed ones; an explicit version meets
  :class:`SaveInProgressError`).
* The version row is inserted by a transaction that first checks the claim is
  still this attempt's (fencing) and removes it in the same commit.
* A failed attempt deletes files only inside a transaction that confirms the
  claim is still its own and that no committed row names them.
* When the connection drops during a COMMIT, the outcome is read back (the
  claim by its token, the row by its exact record) instead of guessed.
* Claims of dead writers: a claim whose process is provably gone (same host
  and PID namespace, that PID no longer running the same process) is released
  by the next writer; any other stale claim is released by ``gc`` once older
  than its ``min_age`` and reported by ``verify``.
* Leases: a claim is good for :data:`CLAIM_LEASE_SECONDS` from when it was taken
  or last renewed (``claimed_at``). A save that uploads under its claim for
  longer (straight to the final key on S3) renews it from a heartbeat thread
  (:meth:`VersionClaim.kept_alive`); a renewal is fenced by the token, never
  revives an expired lease, and a killed writer's heartbeat dies with it, so its
  claim still goes stale and gc (or the next writer) can take the version.
* Checks without a read (a save whose bytes were staged before its claim; on PostgreSQL a read
  is a network round trip, on SQLite a connection checkout and a transaction of its own): while
  the lease is younger than :data:`LEASE_TRUSTED_FRACTION` of :data:`CLAIM_LEASE_SECONDS`,
  :meth:`VersionClaim.check` with ``trust_lease`` reads nothing. Nobody can have taken the claim
  by then: gc releases a claim only once ``claimed_at`` (written before the claim was sent) is
  :data:`CLAIM_LEASE_SECONDS` old by its own clock, or when the claim's process is provably dead
  (then it writes nothing more); a writer releases only a provably dead writer's claim; and the
  writer counts its lease on its monotonic clock from before the claim was sent. The other half
  of the lease is the margin for a gc host whose clock runs ahead of the writer's. Past it the
  check reads the claim as before, and the row's statement always does (the fence). Not covered:
  a live claim deleted by hand while its writer places its files is only caught by that fence
  (nothing is registered).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from ..errors import (
    ClaimLostError,
    CommitUnknownError,
    ConnectionLostError,
    ModelKeepError,
    SaveInProgressError,
    VersionExistsError,
    VersionTrashedError,
    for_item,
)
from ..layout import record_blobs
from ..metadata import ModelMetadata, utc_now
from ..versions import next_version, sort_key
from .common import RETRY_PAUSES, record_row, run
from .common import retry_on_disconnect as _retry_on_disconnect
from .schema import claims, versions

if TYPE_CHECKING:
    from .sql import SqlIndex

logger = logging.getLogger("modelkeep")

SAVE = "save"
DELETE = "delete"
#: A writer never writes under a version's folder once it has held the claim this long
#: (seconds), and gc never releases a claim younger than this unless its process is
#: provably dead, whatever its --min-age: a stale claim is only taken from a writer that
#: has already stopped writing.
CLAIM_LEASE_SECONDS = 900.0
#: :meth:`VersionClaim.check` with ``trust_lease`` reads nothing while the lease is younger than
#: this fraction of :data:`CLAIM_LEASE_SECONDS`: the rest is the margin for clocks that disagree.
LEASE_TRUSTED_FRACTION = 0.5
#: How often :meth:`VersionClaim.kept_alive` renews a claim's lease (seconds): several
#: renewals fit in one lease, so a slow or failed renewal or two do not let it run out.
CLAIM_RENEW_SECONDS = CLAIM_LEASE_SECONDS / 6


def lease_seconds() -> float:
    """:data:`CLAIM_LEASE_SECONDS` as it is now: read at call time, so another module's check of a
    lease (gc's) follows the one value a test or a deployment sets here, never a copy."""
    return CLAIM_LEASE_SECONDS


#: Pauses between read-backs of an unknown commit outcome (the database may be restarting).
READ_BACK_PAUSES = (0.0, 0.2, 0.5, 1.0, 2.0)


# -- who is claiming ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _process_identity() -> tuple[str, str, int, str]:
    host = socket.gethostname()
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return host, pidns, os.getpid(), _start_ticks(os.getpid())


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or ``""`` when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat, counted after the comm field


def owner_label() -> str:
    """``host/pid-namespace/pid/start-ticks`` of this process."""
    if _process_identity()[2] != os.getpid():  # forked since the cache was filled
        _process_identity.cache_clear()
    host, pidns, pid, start = _process_identity()
    return f"{host}/{pidns}/{pid}/{start}"[:256]


def describe_owner(owner: str) -> str:
    """``pid 123 on host`` for messages."""
    parts = owner.split("/")
    return f"pid {parts[2]} on {parts[0]}" if len(parts) == 4 else owner


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` provably no longer runs: same host and PID namespace as
    us, and that PID is gone or now belongs to a process started at another time."""
    parts = owner.split("/")
    if len(parts) != 4:
        return False
    host, pidns, pid_text, start = parts
    my_host, my_pidns, _my_pid, _ = _process_identity()
    if host != my_host or not pidns or pidns != my_pidns or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    return bool(start) and _start_ticks(pid) not in ("", start)


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimInfo:
    """A claim row as stored (for ``verify``, ``gc`` and ``doctor``)."""

    model_name: str
    version: str
    token: str
    owner: str
    claimed_at: str
    purpose: str

    def age_seconds(self, now: float | None = None) -> float:
        try:
            at = _dt.datetime.fromisoformat(self.claimed_at).timestamp()
        except ValueError:
            return float("inf")
        return (time.time() if now is None else now) - at

    def __str__(self) -> str:
        who = describe_owner(self.owner)
        return f"{self.purpose} of {self.model_name} {self.version} by {who} since {self.claimed_at}"


def _info(row: Any) -> ClaimInfo:
    return ClaimInfo(row.model_name, row.version, row.token, row.owner, row.claimed_at, row.purpose)


# The statements of every save, built once: SQLAlchemy then reuses their compiled form without
# rebuilding the expression and its cache key on each call.
_CLAIM_ROW = select(claims).where(
    claims.c.model_name == bindparam("model_name"), claims.c.version == bindparam("version")
)
_MODEL_CLAIMS = select(claims).where(claims.c.model_name == bindparam("model_name"))
_TOP = (
    select(
        select(versions.c.version)
        .where(versions.c.model_name == bindparam("model_name"), versions.c.parsed.is_(True))
        .order_by(versions.c.sort_key.desc(), versions.c.id.desc())
        .limit(1)
        .scalar_subquery()
        .label("top")
    )
).subquery("highest")
#: The model's highest version (as :meth:`SqlIndex.highest_version`) on every row of its claims,
#: and on one row of ``NULL`` claim columns when it has none.
_CLAIMS_AND_TOP = select(_TOP.c.top, *claims.c).select_from(
    _TOP.outerjoin(claims, claims.c.model_name == bindparam("model_name"))
)
_DROP_CLAIM = delete(claims).where(claims.c.token == bindparam("token"))
#: Built once (a statement built per claim cost ~0.1 ms of a small save).
_INSERT_CLAIM = insert(claims)
_VERSION_EXISTS = select(versions.c.id).where(
    versions.c.model_name == bindparam("model_name"), versions.c.version == bindparam("version")
)
#: A claim's insert that inserts nothing when the version has a row (on SQLite its row count says
#: which): the check that the next version is free, in the claim's own statement (see :func:`take`).
_CLAIM_IF_FREE = insert(claims).from_select(
    ["model_name", "version", "token", "owner", "claimed_at", "purpose"],
    select(*(bindparam(c, type_=claims.c[c].type).label(c) for c in ("model_name", "version", "token", "owner")))
    .add_columns(
        bindparam("claimed_at", type_=claims.c.claimed_at.type).label("claimed_at"),
        bindparam("purpose", type_=claims.c.purpose.type).label("purpose"),
    )
    .where(~_VERSION_EXISTS.exists()),
)
#: PostgreSQL: the row it returns says whether it claimed (the row count can be another statement's,
#: as modelkeep sends the transaction's BEGIN in the same message; see SqlIndex._write).
_CLAIM_IF_FREE_RETURNING = _CLAIM_IF_FREE.returning(claims.c.token)
#: The claim's token and an artifact with the same bytes, in one statement (see :meth:`VersionClaim.check_placing`).
_TOKEN_AND_DUPLICATE = select(
    select(claims.c.token)
    .where(claims.c.model_name == bindparam("model_name"), claims.c.version == bindparam("version"))
    .scalar_subquery()
    .label("token"),
    select(versions.c.artifact_key)
    .where(versions.c.sha256 == bindparam("sha256"), versions.c.artifact_key != bindparam("exclude_key"))
    .limit(1)
    .scalar_subquery()
    .label("duplicate"),
)

#: Up to two keys of stored artifacts with the bytes ``sha256`` (the claim's dedup lookup on SQLite;
#: two, so that one other than the new version's own key is among them, as in .pg_claim).
_DUPLICATES = select(versions.c.artifact_key).where(versions.c.sha256 == bindparam("sha256")).limit(2)


def _claim_row(conn: Connection, model_name: str, version: str) -> ClaimInfo | None:
    row = conn.execute(_CLAIM_ROW, {"model_name": model_name, "version": version}).first()
    return None if row is None else _info(row)


@_retry_on_disconnect
def _read_claim(index: SqlIndex, model_name: str, version: str) -> ClaimInfo | None:
    with index._read(single=True) as conn:
        return _claim_row(conn, model_name, version)


@_retry_on_disconnect
def _read_token_and_duplicate(
    index: SqlIndex, model_name: str, version: str, sha256: str, exclude_key: str
) -> tuple[str | None, str | None]:
    with index._read(single=True) as conn:
        params = {"model_name": model_name, "version": version, "sha256": sha256, "exclude_key": exclude_key}
        row = conn.execute(_TOKEN_AND_DUPLICATE, params).one()
    return row.token, row.duplicate


def in_progress(info: ClaimInfo) -> SaveInProgressError:
    what = "a save" if info.purpose == SAVE else "a delete"
    return SaveInProgressError(
        f"{what} of model '{info.model_name}' version '{info.version}' is in progress since {info.claimed_at} "
        f"({describe_owner(info.owner)}); try again when it is done. If that process died, "
        "`modelkeep gc` releases its claim once it is older than --min-age"
    )


# -- a claim held by this process -----------------------------------------------------------------

CLAIMED, COMMITTED, RELEASED, UNKNOWN = "claimed", "committed", "released", "unknown"


@dataclass
class VersionClaim:
    """This attempt's claim on one version; see :meth:`modelkeep.index.SqlIndex.claim`.

    ``previous`` is the committed record the version had when claimed (an
    overwrite), or ``None`` for a new version. ``state`` moves from
    ``claimed`` to ``committed`` (row in, claim kept until the block ends),
    ``released``, or ``unknown`` (the commit's outcome could not be read back:
    nothing is deleted then; ``gc`` settles it later).
    """

    index: SqlIndex
    model_name: str
    version: str
    token: str
    claimed_at: str
    previous: ModelMetadata | None
    purpose: str = SAVE
    state: str = CLAIMED
    record: ModelMetadata | None = field(default=None, repr=False)
    #: ``time.monotonic()`` when the lease began: before the claim (or its last renewal) was sent.
    taken: float = field(default_factory=time.monotonic, repr=False)
    #: ``(sha256, keys)``: stored artifacts with those bytes, read with the claim (see :func:`take`).
    duplicates: tuple[str, tuple[str, ...]] | None = field(default=None, repr=False)

    def check(self, *, trust_lease: bool = False) -> None:
        """Raise :class:`ClaimLostError` unless the claim is still this attempt's (read from the
        database) and its lease (taken or last renewed) is younger than :data:`CLAIM_LEASE_SECONDS`.
        Call it before each write.

        ``trust_lease`` (a save whose bytes were staged before its claim): no read while the
        lease is younger than :data:`LEASE_TRUSTED_FRACTION` of :data:`CLAIM_LEASE_SECONDS`, as
        nobody can have taken the claim yet (see the module's docstring, "Checks without a read")."""
        self.check_lease()
        if trust_lease and self.lease_trusted():
            return
        current = _read_claim(self.index, self.model_name, self.version)
        if current is None or current.token != self.token:
            self.state = RELEASED
            raise self._lost()

    def lease_trusted(self) -> bool:
        """Whether :meth:`check` may skip its read: the lease is younger than
        :data:`LEASE_TRUSTED_FRACTION` of :data:`CLAIM_LEASE_SECONDS` (on either database: the
        argument of "Checks without a read" holds for SQLite too, where a read is no round trip
        but costs a connection checkout and a transaction of its own)."""
        return time.monotonic() - self.taken < CLAIM_LEASE_SECONDS * LEASE_TRUSTED_FRACTION

    def check_placing(self, sha256: str, key: str, *, trust_lease: bool = False) -> str | None:
        """:meth:`check`, and in the same read the key of an artifact already stored with the bytes
        ``sha256`` (other than ``key``; ``None`` when there is none), so that the last check
        before the artifact is placed costs no extra round trip for the content dedup. With
        ``trust_lease``, a lease :meth:`check` trusts, and those keys read with the claim: no read."""
        self.check_lease()
        if trust_lease and self.lease_trusted() and self.duplicates is not None and self.duplicates[0] == sha256:
            return next((k for k in self.duplicates[1] if k != key), None)
        token, duplicate = _read_token_and_duplicate(self.index, self.model_name, self.version, sha256, key)
        if token != self.token:
            self.state = RELEASED
            raise self._lost()
        return duplicate

    def check_lease(self) -> None:
        """Raise :class:`ClaimLostError` once the lease (taken or last renewed) is older than
        :data:`CLAIM_LEASE_SECONDS`; no database read (for the instant before a write that
        directly follows :meth:`check`)."""
        if time.monotonic() - self.taken > CLAIM_LEASE_SECONDS:
            raise self._expired()

    def _expired(self) -> ClaimLostError:
        return ClaimLostError(
            f"this save held its write claim on model '{self.model_name}' version '{self.version}' "
            f"for more than {CLAIM_LEASE_SECONDS:g} s without renewing it; it stops before writing, "
            "as gc may release it"
        )

    def renew(self) -> None:
        """Extend the lease by :data:`CLAIM_LEASE_SECONDS` from now: ``claimed_at`` is rewritten
        if the claim is still this attempt's. :class:`ClaimLostError` when it is not, or when
        the lease already ran out (gc may have released it: an expired lease is never revived).
        Nothing happens once the claim is no longer held (committed, released)."""
        if self.state != CLAIMED:
            return
        started = time.monotonic()
        if started - self.taken > CLAIM_LEASE_SECONDS:
            raise self._expired()
        now = utc_now()
        with self.index._write(power_safe=False) as conn:  # like take(): a claim dies with its writer
            renewed = conn.execute(update(claims).where(claims.c.token == self.token).values(claimed_at=now)).rowcount
        if renewed != 1:
            raise self._lost()
        self.taken, self.claimed_at = started, now  # the lease runs from before the renewal was sent

    @contextlib.contextmanager
    def kept_alive(self, until: float | None = None) -> Iterator[VersionClaim]:
        """Renew the lease every :data:`CLAIM_RENEW_SECONDS` from a daemon thread for the block
        (a long upload under the claim). A renewal that fails is retried at the next beat; the
        lease simply runs out if none succeeds, and :meth:`check` then stops the writer. The
        thread dies with the process, so a killed writer's claim goes stale as usual. ``until``
        (a ``time.monotonic()`` instant): no renewal after it, so a claim whose owner forgot it
        (an upload a registry server's client never committed) goes stale even while the
        process lives."""
        stop = threading.Event()
        every = CLAIM_RENEW_SECONDS

        def beat() -> None:
            while not stop.wait(every) and (until is None or time.monotonic() < until):
                try:
                    self.renew()
                except ClaimLostError as exc:
                    logger.warning("%s", exc)
                    return
                except Exception as exc:  # the database may be away for a moment: try at the next beat
                    logger.debug("could not renew the claim on %s %s: %s", *self._names(), exc)

        thread = threading.Thread(target=beat, name=f"claim-lease-{self.token[:8]}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def _lost(self) -> ClaimLostError:
        return ClaimLostError(
            f"the write claim on model '{self.model_name}' version '{self.version}' was released while this "
            "save was still running (by gc, as stale); nothing was registered and no file of another save was touched"
        )

    def _fence(self, conn: Connection) -> None:
        self.index._lock_model(conn, self.model_name)
        current = _claim_row(conn, self.model_name, self.version)
        if current is None or current.token != self.token:
            raise self._lost()

    def put(
        self,
        record: ModelMetadata,
        *,
        before_commit: Callable[[], None] | None = None,
        history: bool = True,
        files_durable: Callable[[], None] | None = None,
    ) -> None:
        """Commit ``record`` as the version, if the claim is still ours (fencing).

        A new version's claim is removed in the same commit; an overwrite keeps
        it until the block ends (its sidecar and old artifact are handled under
        it). ``before_commit`` runs inside the transaction, after the shared blob
        lock is taken when the record uses blobs. ``files_durable`` waits until the files
        the row names are durable (their folder's ``fsync`` on a helper thread): it is called
        after the row's statements and its event file, just before the COMMIT, so nothing
        commits before it returns and the folder syncs while they are written.
        A dropped COMMIT is resolved by reading back; :class:`CommitUnknownError` when even that
        fails. Without ``history`` no history row is written (a copy carries the source's instead).
        """

        release = self.previous is None
        # PostgreSQL, a new version without blobs: the fence and every row in one statement
        one_statement = release and history and self.index.dialect == "postgresql" and not record_blobs(record)

        def attempt() -> None:
            # the files' wait comes after the rows and their event files, just before the COMMIT
            with self.index._write(before_commit=files_durable) as conn:
                if one_statement:  # the model's lock goes with the statement (Reservation.fence)
                    slot = self.index.reservation(conn, self.model_name, self.version, None)
                    slot.fence = self.token
                    slot.put(record)
                    if slot.record is None:
                        raise self._lost()
                    if before_commit is not None:
                        before_commit()
                    return
                if release:
                    # A new version: the claim is removed by the commit anyway, so removing it
                    # first is the fence (no row removed: it is not ours any more), and a row
                    # written meanwhile without a claim fails the insert (Reservation.put).
                    self.index._lock_model(conn, self.model_name)
                    if run(conn, _DROP_CLAIM, {"token": self.token}).rowcount != 1:
                        raise self._lost()
                    current = None
                else:
                    self._fence(conn)
                    current = self.index._get(conn, self.model_name, self.version)
                    previous = self.previous
                    assert previous is not None
                    if current is not None and current.to_dict() != previous.to_dict():
                        raise VersionExistsError(
                            f"model '{self.model_name}' version '{self.version}' was written by another "
                            "writer without a claim (an older modelkeep?); nothing was registered"
                        )
                if record_blobs(record):
                    self.index.lock_blobs(conn, exclusive=False)
                if before_commit is not None:
                    before_commit()
                slot = self.index.reservation(conn, self.model_name, self.version, current)
                if not history:  # a copy that carries the source's own history rows
                    slot.history_action = None
                slot.put(record)

        commit_retrying(attempt, [self], [record])
        self.record = record
        self.state = RELEASED if release else COMMITTED

    def _names(self) -> tuple[str, str]:
        return self.model_name, self.version

    def _read_back(self, mine: str) -> str:
        """After a dropped COMMIT: ``committed`` if our row is in, ``claimed`` if not and the
        claim is still ours, ``released`` if neither, ``unknown`` if the database stays away."""

        for pause in READ_BACK_PAUSES:
            time.sleep(pause)
            try:
                with self.index._read() as conn:
                    raw = conn.execute(
                        select(versions.c.record).where(
                            versions.c.model_name == self.model_name, versions.c.version == self.version
                        )
                    ).scalar()
                    held = conn.execute(select(claims.c.token).where(claims.c.token == self.token)).scalar()
            except ConnectionLostError:
                continue
            except Exception as exc:  # the server may be down for a while: keep asking, then give up
                logger.debug("reading back the commit outcome failed: %s", exc)
                continue
            if raw is not None and _same_json(raw, mine):
                return COMMITTED
            return CLAIMED if held is not None else RELEASED
        return UNKNOWN

    def abandon(
        self,
        keys: Iterable[str],
        remove: Callable[[str], None],
        restore: Callable[[ModelMetadata], None] | None = None,
    ) -> None:
        """After a failed attempt: remove ``keys`` (this attempt's files) and the claim.

        Only inside a transaction that confirms the claim is still ours and
        that no committed row names a key; a new version's sidecar is only
        removed while no row exists for the version. Nothing is removed when
        the commit's outcome is unknown or the claim was lost. Removal errors
        are logged at debug level (``gc`` removes leftovers): the error that
        made the save fail is the one to report.
        """
        if self.state != CLAIMED:
            return

        wanted = list(dict.fromkeys(keys))

        def attempt() -> None:
            with self.index._write() as conn:
                self.index._lock_model(conn, self.model_name)
                current = _claim_row(conn, self.model_name, self.version)
                if current is None or current.token != self.token:
                    logger.debug("claim on %s %s is no longer ours; leaving its files alone", *self._names())
                    return
                row = self.index._get(conn, self.model_name, self.version)
                if row is not None and (self.previous is None or row.to_dict() != self.previous.to_dict()):
                    logger.debug("%s %s was committed after all; nothing to undo", *self._names())
                else:
                    if row is not None and restore is not None:
                        try:
                            restore(row)
                        except Exception as exc:  # verify reports the sidecar, gc rewrites it
                            logger.debug("could not restore the sidecar of %s %s: %s", *self._names(), exc)
                    used = {
                        r[0]
                        for r in conn.execute(
                            select(versions.c.artifact_key).where(versions.c.artifact_key.in_(wanted))
                        )
                    }
                    version_dir = f"{self.model_name}/{self.version}/"
                    for key in wanted:
                        if key in used or (row is not None and key.startswith(version_dir) and key.endswith(".json")):
                            continue
                        try:
                            remove(key)
                        except Exception as exc:  # never hide the error that made the save fail
                            logger.debug("could not remove %s after a failed save: %s", key, exc)
                conn.execute(delete(claims).where(claims.c.token == self.token))

        for try_number in range(1, len(RETRY_PAUSES) + 2):
            try:
                attempt()
                break
            except (ConnectionLostError, CommitUnknownError) as exc:  # removals are idempotent: try again
                if try_number == len(RETRY_PAUSES) + 1:
                    logger.debug("could not release the claim on %s %s: %s (gc releases it)", *self._names(), exc)
            except Exception as exc:
                logger.debug("could not release the claim on %s %s: %s (gc releases it)", *self._names(), exc)
                break
        self.state = RELEASED

    def end(self) -> None:
        """After the block that held the claim: remove it once its row is committed (an
        overwrite's claim outlives the row's commit), give it up with nothing written when no row
        was committed; a claim whose commit's outcome is unknown is left for ``gc``."""
        if self.state == CLAIMED:
            self.abandon([], lambda _key: None)
        elif self.state == COMMITTED:
            self.release()

    def release(self) -> None:
        """Remove the claim (after a committed overwrite's follow-up work, or a finished delete)."""
        if self.state == RELEASED:
            return

        for try_number in range(1, len(RETRY_PAUSES) + 2):
            try:
                with self.index._write() as conn:
                    conn.execute(delete(claims).where(claims.c.token == self.token))
                break
            except (ConnectionLostError, CommitUnknownError) as exc:
                if try_number == len(RETRY_PAUSES) + 1:
                    logger.warning("could not release the claim on %s %s: %s (gc releases it)", *self._names(), exc)
            except Exception as exc:
                logger.warning("could not release the claim on %s %s: %s (gc releases it)", *self._names(), exc)
                break
        self.state = RELEASED


def _same_json(a: str, b: str) -> bool:
    return a == b or json.loads(a) == json.loads(b)


# -- taking and settling claims -------------------------------------------------------------------


def take(
    index: SqlIndex,
    model_name: str,
    version: str | None,
    *,
    overwrite: bool = False,
    purpose: str = SAVE,
    must_exist: bool = False,
    sha256: str | None = None,
) -> VersionClaim:
    """Commit a claim on ``version`` (the next free one when ``None``) and return it. ``sha256``:
    the bytes the save will place, looked up for the content dedup with the claim when that costs
    no round trip (:meth:`VersionClaim.check_placing` then needs no read)."""

    token = uuid.uuid4().hex
    owner = owner_label()
    previous: ModelMetadata | None = None
    started = time.monotonic()  # the lease runs from before the claim is sent (see VersionClaim.check)
    # PostgreSQL: the usual claim (no other claim on the model, a plain next patch or a new
    # explicit version) is one message, with the dedup lookup of ``sha256`` (see .pg_claim)
    quick = index.dialect == "postgresql" and purpose == SAVE and not must_exist
    tries = len(RETRY_PAUSES) + 1
    for try_number in range(1, tries + 1):
        claimed_at = utc_now()
        try:
            if quick:
                from .pg_claim import quick_claim  # psycopg is there: PostgreSQL only

                row = {"model_name": model_name, "token": token, "owner": owner, "at": claimed_at, "purpose": purpose}
                got = quick_claim(index, row, version, sha256)
                if got is not None:
                    same = None if sha256 is None else (sha256, got[1])
                    return VersionClaim(
                        index, model_name, got[0], token, claimed_at, None, purpose, taken=started, duplicates=same
                    )
                quick = False  # not the usual case: choose the version below, as everywhere else
            with index._write(power_safe=False) as conn:  # see _relaxed_sync: a claim dies with its writer
                index._lock_model(conn, model_name)
                # the next version's check that it has no row rides on the claim's insert
                defer = version is None
                chosen, previous = _choose(
                    index, conn, model_name, version, overwrite=overwrite, must_exist=must_exist, defer=defer
                )
                row = {
                    "model_name": model_name,
                    "version": chosen,
                    "token": token,
                    "owner": owner,
                    "claimed_at": claimed_at,
                    "purpose": purpose,
                }
                if defer and not _claimed_if_free(index, conn, row):  # it has a row: look row by row
                    chosen, previous = _choose(
                        index, conn, model_name, version, overwrite=overwrite, must_exist=must_exist
                    )
                    row["version"] = chosen
                    defer = False
                if not defer:
                    run(conn, _INSERT_CLAIM, row)
                # SQLite: stored identical bytes looked up in the claim's transaction, not in a read
                # of its own before the artifact is placed (as .pg_claim does on PostgreSQL)
                same = None
                if sha256 is not None and purpose == SAVE and index.dialect == "sqlite":
                    same = (sha256, tuple(run(conn, _DUPLICATES, {"sha256": sha256}).scalars()))
            return VersionClaim(
                index, model_name, chosen, token, claimed_at, previous, purpose, taken=started, duplicates=same
            )
        except ConnectionLostError as exc:
            if try_number == tries:
                raise
            logger.warning("%s; retrying on a new connection", exc)
            time.sleep(RETRY_PAUSES[try_number - 1])
        except CommitUnknownError as exc:
            found = _find_token(index, token)
            if found is not None:
                return VersionClaim(
                    index, model_name, found.version, token, found.claimed_at, previous, purpose, taken=started
                )
            # read back: not committed, so nothing was written (as a connection lost before COMMIT)
            if try_number == tries:
                raise ConnectionLostError(f"{exc}; it was not committed: nothing was written") from exc
            logger.warning("%s; it was not committed; retrying on a new connection", exc)
            time.sleep(RETRY_PAUSES[try_number - 1])
    raise AssertionError("unreachable")


def _claimed_if_free(index: SqlIndex, conn: Connection, row: dict[str, str]) -> bool:
    """Insert the claim ``row`` unless its version has a row; whether it was inserted."""
    if index.dialect == "postgresql":
        return conn.execute(_CLAIM_IF_FREE_RETURNING, row).first() is not None
    return bool(run(conn, _CLAIM_IF_FREE, row).rowcount == 1)


def _find_token(index: SqlIndex, token: str) -> ClaimInfo | None:
    """Read back a claim by its token after a dropped COMMIT (``None``: it was not committed)."""
    for pause in READ_BACK_PAUSES:
        time.sleep(pause)
        try:
            with index._read() as conn:
                row = conn.execute(select(claims).where(claims.c.token == token)).first()
            return None if row is None else _info(row)
        except Exception as exc:
            logger.debug("reading back a claim failed: %s", exc)
    raise CommitUnknownError(
        f"lost the connection to the registry database {index.safe_url} while claiming a version, "
        "and it did not come back; nothing was written (gc releases the claim if it was taken)"
    )


@dataclass
class _ModelClaims:
    """One model's claims as its writer sees them under the model's write lock: the live claims
    by version (dead writers' dropped), and its highest parsed version, claimed or committed
    (known only when read with the model's top version)."""

    held: dict[str, ClaimInfo]
    highest: str | None

    def add(self, info: ClaimInfo) -> None:
        """Count a claim this transaction has just inserted (``take_many``'s next item sees it)."""
        self.held[info.version] = info
        self.highest = _highest([self.highest, info.version])


def _highest(versions: Iterable[str | None]) -> str | None:
    """The highest parsed version among ``versions`` (equal ones: the greater spelling), or ``None``."""
    keyed = [(k, v) for v in versions if v and (k := sort_key(v)) is not None]
    return max(keyed)[1] if keyed else None


def _model_claims(conn: Connection, model_name: str, *, with_top: bool) -> _ModelClaims:
    """The model's claims (and its highest version when ``with_top``), in one statement; the
    claims of writers that provably died are dropped."""
    top = None
    if with_top:  # the model's claims and its highest version, in one statement
        rows = run(conn, _CLAIMS_AND_TOP, {"model_name": model_name}).all()
        top = rows[0].top if rows and rows[0].top is not None else None
        held = {c.version: c for c in (_info(r) for r in rows if r.token is not None)}
    else:
        held = {c.version: c for c in map(_info, run(conn, _MODEL_CLAIMS, {"model_name": model_name}))}
    mine = owner_label()
    for info in list(held.values()):
        if info.owner != mine and owner_is_dead(info.owner):  # its process is gone: it can write nothing any more
            logger.info("releasing the claim of a process that died: %s", info)
            run(conn, _DROP_CLAIM, {"token": info.token})
            del held[info.version]
    return _ModelClaims(held, _highest([*held, top]))


def _choose(
    index: SqlIndex,
    conn: Connection,
    model_name: str,
    version: str | None,
    *,
    overwrite: bool,
    must_exist: bool,
    defer: bool = False,
    known: _ModelClaims | None = None,
) -> tuple[str, ModelMetadata | None]:
    """The version to claim and its committed record (if any), under the model's write lock.
    ``defer`` (automatic versions): skip only claimed versions, and leave the check that the
    version has no row to the claim's insert (:data:`_CLAIM_IF_FREE`). ``known``: the model's
    claims as this transaction already read them (``take_many``), instead of reading them again."""
    state = known if known is not None else _model_claims(conn, model_name, with_top=version is None)
    held = state.held
    if version is None:

        def taken(v: str) -> bool:
            params = {"model_name": model_name, "version": v}
            return v in held or (not defer and run(conn, _VERSION_EXISTS, params).first() is not None)

        return next_version(state.highest, taken), None
    if version in held:
        raise in_progress(held[version])
    previous = index._get(conn, model_name, version)
    if previous is not None and index._is_trashed(conn, model_name, version):
        raise VersionTrashedError(f"model '{model_name}' version '{version}' is in the trash; restore or purge it")
    if previous is not None and not overwrite:
        raise VersionExistsError(
            f"model '{model_name}' version '{version}' already exists; pass overwrite=True to replace it",
            cli={"overwrite=True": "--overwrite"},
        )
    if previous is None and must_exist:
        raise index._missing(conn, model_name, version)
    return version, previous


@contextlib.contextmanager
def claimed(
    index: SqlIndex, model_name: str, version: str | None, *, overwrite: bool = False, sha256: str | None = None
) -> Iterator[VersionClaim]:
    """Hold a committed claim for the block; released (or left to gc when unknown) afterwards."""
    claim = take(index, model_name, version, overwrite=overwrite, sha256=sha256)
    try:
        yield claim
    finally:
        claim.end()


# -- batches (ModelPersistence.save_many) ------------------------------------------------------------


def take_many(index: SqlIndex, wanted: list[tuple[str, str | None]]) -> list[VersionClaim]:
    """Claim a new version for each ``(model_name, version or None)`` in one committed
    transaction, with the same rules as :func:`take` (no overwrite). A refusal names the
    item (:func:`~modelkeep.errors.for_item`) and leaves no claim; the models are locked in
    name order, so two batches never wait on each other in a cycle."""
    tokens = [uuid.uuid4().hex for _ in wanted]
    owner = owner_label()
    tries = len(RETRY_PAUSES) + 1
    for try_number in range(1, tries + 1):
        claimed_at = utc_now()
        chosen: list[str] = []
        try:
            with index._write(power_safe=False) as conn:  # see take(): a claim dies with its writer
                for name in sorted({m for m, _ in wanted}):
                    index._lock_model(conn, name)
                rows = []
                # each model's claims read once: a batch of n versions of one model reads n rows, not n²/2
                models: dict[str, _ModelClaims] = {}
                for position, (model_name, version) in enumerate(wanted):
                    try:
                        if model_name not in models:
                            models[model_name] = _model_claims(conn, model_name, with_top=True)
                        known = models[model_name]
                        picked, _ = _choose(
                            index, conn, model_name, version, overwrite=False, must_exist=False, known=known
                        )
                    except ModelKeepError as exc:
                        raise for_item(exc, position, model_name) from exc
                    chosen.append(picked)
                    info = ClaimInfo(model_name, picked, tokens[position], owner, claimed_at, SAVE)
                    known.add(info)
                    rows.append(asdict(info))
                if rows:
                    run(conn, _INSERT_CLAIM, rows)  # one statement: each model's state above counted them
            break
        except ConnectionLostError as exc:
            if try_number == tries:
                raise
            logger.warning("%s; retrying on a new connection", exc)
            time.sleep(RETRY_PAUSES[try_number - 1])
        except CommitUnknownError:
            found = _find_token(index, tokens[0])  # one transaction: all of them or none
            if found is not None:
                claimed_at = found.claimed_at
                break
            if try_number == tries:
                raise
    return [
        VersionClaim(index, model_name, version, token, claimed_at, None, SAVE)
        for (model_name, _), version, token in zip(wanted, chosen, tokens, strict=True)
    ]


def check_many(index: SqlIndex, slots: list[VersionClaim]) -> None:
    """:meth:`VersionClaim.check` for a batch, in one query: raise :class:`ClaimLostError` unless
    every claim is still this batch's and younger than :data:`CLAIM_LEASE_SECONDS`."""
    for slot in slots:
        if time.monotonic() - slot.taken > CLAIM_LEASE_SECONDS:
            slot.check()  # raises the lease error
    with index._read() as conn:
        held = set(conn.execute(select(claims.c.token).where(claims.c.token.in_([s.token for s in slots]))).scalars())
    for slot in slots:
        if slot.token not in held:
            slot.state = RELEASED
            raise slot._lost()


def put_many(
    index: SqlIndex,
    slots: list[VersionClaim],
    records: list[ModelMetadata],
    *,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Commit every ``records[i]`` as the new version ``slots[i]`` claims, in one transaction
    that first checks every claim is still this batch's (fencing) and removes them all: the
    batch is registered whole or not at all. History rows and event files as :meth:`VersionClaim.put`.
    A dropped COMMIT is resolved by reading back the first record."""
    tokens = [s.token for s in slots]
    names = sorted({s.model_name for s in slots})

    def attempt() -> None:
        with index._write() as conn:
            for name in names:
                index._lock_model(conn, name)
            held = set(conn.execute(select(claims.c.token).where(claims.c.token.in_(tokens))).scalars())
            for slot in slots:
                if slot.token not in held:
                    slot.state = RELEASED
                    raise slot._lost()
            taken = {
                (r[0], r[1])
                for r in conn.execute(
                    select(versions.c.model_name, versions.c.version).where(
                        versions.c.model_name.in_(names), versions.c.version.in_({s.version for s in slots})
                    )
                )
            }
            for slot in slots:
                if (slot.model_name, slot.version) in taken:
                    raise VersionExistsError(
                        f"model '{slot.model_name}' version '{slot.version}' was written by another "
                        "writer without a claim (an older modelkeep?); nothing of the batch was registered"
                    )
            if any(record_blobs(r) for r in records):
                index.lock_blobs(conn, exclusive=False)
            if before_commit is not None:
                before_commit()
            index.put_new_versions(conn, records)
            conn.execute(delete(claims).where(claims.c.token.in_(tokens)))

    commit_retrying(attempt, slots, records)
    for slot, record in zip(slots, records, strict=True):
        slot.record = record
        slot.state = RELEASED


def commit_retrying(
    attempt: Callable[[], None], slots: Sequence[VersionClaim], records: Sequence[ModelMetadata]
) -> None:
    """Run the row transaction ``attempt`` of ``slots`` (one save, or a ``save_many`` batch, whose
    ``records`` it commits), on a fresh connection when it dropped before COMMIT. When it dropped
    during COMMIT, the first slot's row is read back: committed is done, released is a lost
    claim, unknown marks every slot :data:`UNKNOWN` (nothing may be cleaned up; gc settles it) and
    raises :class:`CommitUnknownError` carrying ``records`` (the caller can look them up later),
    and known-not-committed with the claim still held commits again (after the last try,
    :class:`ConnectionLostError`: nothing was registered, and ``abandon`` cleans up)."""
    owner = slots[0]
    tries = len(RETRY_PAUSES) + 1
    for try_number in range(1, tries + 1):
        try:
            attempt()
            return
        except ConnectionLostError as exc:  # dropped before COMMIT: nothing was written
            if try_number == tries:
                raise
            logger.warning("%s; retrying on a new connection", exc)
            time.sleep(RETRY_PAUSES[try_number - 1])
        except CommitUnknownError as exc:
            outcome = owner._read_back(record_row(records[0])["record"])  # its row as the attempt wrote it
            if outcome == COMMITTED:
                logger.info("the commit of %s %s went through before the connection dropped", *owner._names())
                return
            if outcome == RELEASED:
                raise owner._lost() from exc
            if outcome == UNKNOWN:
                for slot in slots:
                    slot.state = UNKNOWN
                exc.records = tuple(records)
                raise
            if try_number == tries:  # read back: not committed, and the claim is still ours
                raise ConnectionLostError(
                    f"lost the connection to the registry database {owner.index.safe_url} while committing "
                    f"model '{owner.model_name}' version '{owner.version}', {tries} times; each time the "
                    "outcome was read back: not committed, nothing was registered"
                ) from exc
            logger.warning("%s; it was not; committing again", exc)


@_retry_on_disconnect
def list_claims(index: SqlIndex, model_name: str | None = None) -> list[ClaimInfo]:
    """Every claim (of one model), oldest first."""
    query = select(claims).order_by(claims.c.claimed_at)
    if model_name is not None:
        query = query.where(claims.c.model_name == model_name)
    with index._read() as conn:
        return [_info(r) for r in conn.execute(query)]


@_retry_on_disconnect
def count_claims(index: SqlIndex) -> int:
    with index._read() as conn:
        return int(conn.execute(select(func.count()).select_from(claims)).scalar_one())


def settle_version(
    index: SqlIndex,
    model_name: str,
    version: str,
    *,
    min_age_seconds: float,
    clean: Callable[[ModelMetadata | None], None],
    now: float | None = None,
) -> ClaimInfo | None:
    """For gc: under the model's write lock, release the version's claim if it is stale
    (older than ``min_age_seconds``, or its process died), then call ``clean`` with the
    committed record (or ``None``) to remove leftovers. Claims younger than
    :data:`CLAIM_LEASE_SECONDS` are never released (unless their process died). A live claim means a save is
    writing there: nothing is touched and :class:`SaveInProgressError` is raised.
    Returns the released claim, if any."""
    with index._write() as conn:
        index._lock_model(conn, model_name)
        info = _claim_row(conn, model_name, version)
        if info is not None:
            young = info.age_seconds(now) < max(min_age_seconds, CLAIM_LEASE_SECONDS)
            if young and not owner_is_dead(info.owner):
                raise in_progress(info)
            conn.execute(delete(claims).where(claims.c.token == info.token))
        clean(index._get(conn, model_name, version))
        return info


@contextlib.contextmanager
def deleting(index: SqlIndex, model_name: str, version: str, *, trashed_only: bool = False) -> Iterator[ModelMetadata]:
    """Remove a version's row for good (a purge: see :meth:`SqlIndex.delete`) and, in the
    same commit, claim the version, so that its files can be deleted without racing a new
    save of the same version; the claim is released when the block ends."""

    token = uuid.uuid4().hex
    for try_number in range(1, len(RETRY_PAUSES) + 2):
        try:
            with index._write() as conn:
                index._lock_model(conn, model_name)
                held = _claim_row(conn, model_name, version)
                if held is not None and not owner_is_dead(held.owner):
                    raise in_progress(held)
                if held is not None:
                    conn.execute(delete(claims).where(claims.c.token == held.token))
                rec = index.remove_version(conn, model_name, version, trashed_only=trashed_only)
                claimed_at = utc_now()
                conn.execute(
                    insert(claims).values(
                        model_name=model_name,
                        version=version,
                        token=token,
                        owner=owner_label(),
                        claimed_at=claimed_at,
                        purpose=DELETE,
                    )
                )
            break
        except ConnectionLostError:
            if try_number == len(RETRY_PAUSES) + 1:
                raise
        except CommitUnknownError:
            if _find_token(index, token) is None:
                raise
            break
    assert rec is not None
    claim = VersionClaim(index, model_name, version, token, claimed_at, rec, DELETE, state=COMMITTED)
    try:
        yield rec
    finally:
        claim.release()
