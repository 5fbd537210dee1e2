"""Lifecycle operations on the index: aliases, tags, descriptions, the trash and the history.

Every change takes the model's write lock (what savers hold), checks its
preconditions inside that transaction, and appends its history row in the same
transaction, so the audit log never disagrees with the state it describes, even
after a crash. An alias only ever points at a live version: moving it checks the
target under the lock, and trashing a version checks (and with ``force``
removes) its aliases under the same lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from ..errors import (
    AliasConflictError,
    AliasNotFoundError,
    InvalidNameError,
    VersionInUseError,
    VersionNotFoundError,
    no_versions,
)
from ..events import alias_event, next_seq, removal_event
from ..metadata import HistoryEntry
from ..policies import refusal
from ..suggest import alias_hint
from ..versions import validate_alias, validate_model_name, validate_version
from .audit import ALIAS_RESIGN, LIVE, MODEL_LEVEL, USERS_LOG, now, write_history
from .common import ORDER_DESC as _ORDER_DESC
from .common import RECORD_COLUMNS, RECORD_SHA256, RECORD_WIDTH, SQL_INT_MAX, bound_row, trashed_error
from .common import retry_on_disconnect as _retry_on_disconnect
from .policies import check_move, lock_policies
from .rows import history_entry, text_value
from .schema import aliases, history, models, tags, versions

if TYPE_CHECKING:
    from ..metadata import ModelMetadata
    from ..policies import Policy
    from .sql import SqlIndex

# The state reads of every alias move and its plan, built once (SQLAlchemy reuses their
# compiled form and cache key instead of building and compiling them per call).
_ONE_VERSION = (versions.c.model_name == bindparam("model_name"), versions.c.version == bindparam("version"))
_ONE_ALIAS = (aliases.c.model_name == bindparam("model_name"), aliases.c.alias == bindparam("alias"))
_VERSION_STATE = select(versions.c.deleted_at, versions.c.sha256).where(*_ONE_VERSION)
_SHA256 = select(versions.c.sha256).where(*_ONE_VERSION)
_ALIAS_TARGET = select(aliases.c.version).where(*_ONE_ALIAS)
_ALIAS_STATE_COLUMNS = (aliases.c.version, aliases.c.seq, aliases.c.signature, aliases.c.previous, aliases.c.updated_at)
_ALIAS_STATE = select(*_ALIAS_STATE_COLUMNS).where(*_ONE_ALIAS)
#: A move's plan in one statement: the target's row (its record, whether it is in the trash)
#: and the alias's row, if any (its state, after the record's columns and ``deleted_at``).
_PLAN_ROWS = (
    select(*RECORD_COLUMNS, versions.c.deleted_at, aliases.c.alias, *_ALIAS_STATE_COLUMNS)
    .select_from(
        versions.outerjoin(
            aliases, and_(aliases.c.model_name == versions.c.model_name, aliases.c.alias == bindparam("alias"))
        )
    )
    .where(*_ONE_VERSION)
)
_ALIAS_NAMES = select(aliases.c.alias).where(aliases.c.model_name == bindparam("model_name")).order_by(aliases.c.alias)
_LAST_SEQ = select(func.max(history.c.seq)).where(
    history.c.model_name == bindparam("model_name"), history.c.alias == bindparam("alias")
)


def _check_expected(model_name: str, alias: str, current: str | None, expected: str | None) -> None:
    """A move's compare-and-set (:meth:`Lifecycle.set_alias`'s ``expected``, checked again under
    the model's lock after its plan checked it): :class:`AliasConflictError` unless ``alias``
    points at ``expected`` now (``""``: unless it does not exist)."""
    if expected is not None and current != (expected or None):
        where = f"points at version '{current}'" if current else "does not exist"
        wanted = f"'{expected}'" if expected else "absent"
        raise AliasConflictError(
            f"alias '{alias}' of model '{model_name}' {where}, not {wanted} as expected; "
            "someone else moved it: check and try again"
        )


def signer_fingerprint(signature: str | None) -> str | None:
    """The fingerprint of the key that made ``signature`` (``None`` for HMAC or no signature)."""
    from ..signing import parse

    return parse(signature).fingerprint if signature else None


#: Seconds a planned alias move's time may be away from the server's clock when it is made.
MOVE_SKEW = 300.0


def _state_of(row: Sequence[Any]) -> AliasState:
    """An alias's state from the columns of :data:`_ALIAS_STATE` (version, move number,
    signature, from-version, time)."""
    seq = row[1] if isinstance(row[1], int) and not isinstance(row[1], bool) else None
    # A damaged row may hold other types: they then verify as nothing.
    signature, previous, at = (value if isinstance(value, str) else None for value in row[2:5])
    return AliasState(text_value(row[0]), seq, signature, previous, at)


def _planned(
    model_name: str, alias: str, move: tuple[int, str], last: int | None, *, check_time: bool
) -> tuple[int, str]:
    """``move`` (``(seq, at)`` of :meth:`Lifecycle.plan_move`), checked: numbered above ``last``
    and (``check_time``) timed within :data:`MOVE_SKEW` of now; else :class:`AliasConflictError`."""
    seq, at = move
    where = f"alias '{alias}' of model '{model_name}'"
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(at, str):
        raise AliasConflictError(f"the planned move of {where} needs a move number and a time")
    if seq <= (last or 0):
        raise AliasConflictError(f"{where} was moved since this move was planned (move {last}): plan it again")
    if check_time:
        _check_planned_time(f"the planned move of {where}", at)
    return seq, at


def _check_planned_time(what: str, at: Any) -> None:
    """Refuse a planned event's time that is not an aware ISO time within :data:`MOVE_SKEW` of now."""
    try:
        when = _dt.datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise AliasConflictError(f"{what} has no valid time: {str(at)[:40]!r}")
    if abs((_dt.datetime.now(_dt.timezone.utc) - when).total_seconds()) > MOVE_SKEW:
        raise AliasConflictError(f"{what} was planned too long ago ({at}): plan it again")


#: Signs an event dict (:mod:`modelkeep.events`): the signature, or ``None`` with no key.
Signer = Callable[[dict[str, Any]], "str | None"]
MAX_TAG_KEY = 256


class AliasState(NamedTuple):
    """An alias's row: the version it points at, its move number and its signature, and
    (schema 7) the version it was moved from and when, which the signature also covers."""

    version: str
    seq: int | None
    signature: str | None
    previous: str | None = None
    at: str | None = None


MAX_TEXT = 1 << 20


def _text(value: object, what: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidNameError(f"{what} contains a NUL byte")
    if len(value) > max_len:
        raise InvalidNameError(f"{what} is longer than {max_len} characters")
    return value


def _already_trashed(model_name: str, version: str) -> VersionNotFoundError:
    """The error for trashing a version that is in the trash already."""
    return VersionNotFoundError(f"model '{model_name}' version '{version}' is already in the trash")


def validate_tag_key(key: object) -> str:
    """A tag key: a non-empty string of at most 256 characters without NUL."""
    key = _text(key, "tag key", MAX_TAG_KEY)
    if not key.strip():
        raise InvalidNameError("tag key must not be empty")
    return key


def as_utc_iso(when: _dt.datetime | _dt.date | str) -> str:
    """``when`` as the index writes times (UTC, microseconds); naive times count as UTC."""
    if isinstance(when, str):
        try:
            when = _dt.datetime.fromisoformat(when)
        except ValueError as exc:
            raise InvalidNameError(f"{when!r} is not an ISO-8601 date or time") from exc
    if not isinstance(when, _dt.datetime):
        when = _dt.datetime(when.year, when.month, when.day)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    try:
        return when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidNameError(f"{when.isoformat()!r} is out of range in UTC") from None


class Lifecycle:
    """The lifecycle state of one :class:`SqlIndex` (reach it as ``index.lifecycle``)."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index

    # -- helpers ------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, model_name: str) -> Iterator[Connection]:
        """One write transaction holding the model's write lock (what savers hold)."""
        with self._index._write() as conn:
            self._index._lock_model(conn, model_name)
            yield conn

    def _version_state(self, conn: Connection, model_name: str, version: str) -> tuple[bool, str | None]:
        """``(exists, deleted_at)`` of one version."""
        return self._version_row(conn, model_name, version)[:2]

    def _version_row(self, conn: Connection, model_name: str, version: str) -> tuple[bool, str | None, str]:
        """``(exists, deleted_at, sha256)`` of one version, in one statement."""
        row = conn.execute(_VERSION_STATE, {"model_name": model_name, "version": version}).first()
        return (False, None, "") if row is None else (True, row[0], str(row[1]))

    def _require_live(
        self,
        conn: Connection,
        model_name: str,
        version: str,
        trashed: Callable[[str, str], Exception] = trashed_error,
    ) -> str:
        """Refuse a version that is missing (or not visible) or in the trash; returns the SHA-256
        of its bytes, read by the same statement (what a move or a removal signs)."""
        exists, deleted_at, sha256 = self._version_row(conn, model_name, version)
        if not exists or not self._index.may_view(model_name):  # an invisible model: as if missing
            raise self._index._missing(conn, model_name, version)
        if deleted_at is not None:
            raise trashed(model_name, version)
        return sha256

    def _require_model(self, conn: Connection, model_name: str) -> None:
        if (
            not self._index.may_view(model_name)  # an invisible model: as if missing
            or conn.execute(select(models.c.model_name).where(models.c.model_name == model_name)).first() is None
        ):
            raise no_versions(model_name)

    def _alias_target(self, conn: Connection, model_name: str, alias: str) -> str | None:
        found = conn.execute(_ALIAS_TARGET, {"model_name": model_name, "alias": alias}).scalar()
        return None if found is None else text_value(found)

    def _sha256(self, conn: Connection, model_name: str, version: str) -> str:
        return str(conn.execute(_SHA256, {"model_name": model_name, "version": version}).scalar_one())

    def _alias_names(self, conn: Connection, model_name: str) -> list[str]:
        return list(conn.execute(_ALIAS_NAMES, {"model_name": model_name}).scalars().all())

    def _no_alias(self, conn: Connection, model_name: str, alias: str) -> AliasNotFoundError:
        """The error for an unknown alias, suggesting the ones that exist (:func:`alias_hint`)
        (none of a model the reader may not see: it has no aliases for them)."""
        hint = alias_hint(alias, self._alias_names(conn, model_name) if self._index.may_view(model_name) else [])
        return AliasNotFoundError(f"model '{model_name}' has no alias '{alias}'{hint}")

    # -- aliases --------------------------------------------------------------------
    @_retry_on_disconnect
    def set_alias(
        self,
        model_name: str,
        alias: str,
        version: str,
        *,
        expected: str | None = None,
        sign: Signer | None = None,
        move: tuple[int, str] | None = None,
    ) -> str | None:
        """Point ``alias`` at ``version`` (a live version); returns where it pointed before.

        With ``expected``, a compare-and-set: :class:`AliasConflictError` unless the
        alias currently points at ``expected`` (``""``: unless it does not exist).
        Setting it to where it already points changes nothing and writes no history (but
        re-signs the alias, so that an unsigned alias, or one whose version was overwritten
        since, carries a valid signature). ``sign`` signs the move
        (:func:`modelkeep.events.alias_event`: from-version, to-version, time), numbered above the
        alias's previous move. A move (not a re-sign) is judged by the policies that govern it
        (:mod:`modelkeep.index.policies`) in this same transaction: :class:`PolicyError` if any
        condition fails.

        ``move`` (``(seq, at)``, from :meth:`plan_move`) numbers and times the move as planned,
        for a signature made elsewhere (a registry server's client signs the event it planned):
        :class:`AliasConflictError` if that number is no longer above the alias's last move, or
        the time is more than :data:`MOVE_SKEW` seconds away from now.
        """
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        version = validate_version(version)
        if expected:
            expected = validate_version(expected)
        with self._locked(model_name) as conn:
            sha256 = self._require_live(conn, model_name, version)
            state = self._alias_state(conn, model_name, alias)
            current = state.version if state is not None else None
            if current is None:  # one alias per name whatever its case: "Production" is not a second "production"
                twin = [a for a in self._alias_names(conn, model_name) if a.lower() == alias.lower()]
                if twin:
                    raise InvalidNameError(
                        f"model '{model_name}' already has the alias '{twin[0]}', which differs from '{alias}' "
                        f"only in case: use '{twin[0]}' (alias names that differ only in case are refused)"
                    )
            _check_expected(model_name, alias, current, expected)
            # Above the row's last move, or (set again after a removal) above every move in the
            # history, so that a mover with a slower clock never numbers below an earlier move.
            last = state.seq if state is not None else self._last_seq(conn, model_name, alias)
            seq, at = next_seq(last), now()
            if move is not None:
                seq, at = _planned(model_name, alias, move, last, check_time=current != version)
            # A re-sign (same version) keeps the move's from-version and time; a move records its own.
            resign = state is not None and current == version
            previous, moved_at = (state.previous, state.at) if resign and state is not None else (current, at)
            signature = None
            if sign is not None:
                signature = sign(alias_event(model_name, alias, version, sha256, seq, previous=previous, at=moved_at))
            if current == version:
                if signature is not None:  # unsigned, or signed for bytes since overwritten: sign it now
                    conn.execute(
                        update(aliases)
                        .where(aliases.c.model_name == model_name, aliases.c.alias == alias)
                        .values(seq=seq, signature=signature, previous=previous, updated_at=moved_at)
                    )
                return current
            lock_policies(self._index, conn, exclusive=False)
            _, failures = check_move(self._index, conn, model_name, alias, version, signer_fingerprint(signature))
            if failures:
                raise refusal(model_name, alias, version, failures)
            values = {"version": version, "updated_at": at, "seq": seq, "signature": signature, "previous": previous}
            if current is None:
                conn.execute(insert(aliases).values(model_name=model_name, alias=alias, **values))
            else:
                conn.execute(
                    update(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias).values(**values)
                )
            write_history(
                conn,
                "alias_set",
                model_name,
                version=version,
                alias=alias,
                before=current,
                after=version,
                at=at,
                signature=signature,
                seq=seq if signature is not None else None,
                state={"seq": seq},
            )
            return current

    @_retry_on_disconnect
    def plan_move(self, model_name: str, alias: str, version: str) -> dict[str, Any]:
        """The event :meth:`set_alias` would sign if ``alias`` moved to ``version`` now (number,
        from-version, time and the version's SHA-256), for a signer elsewhere; pass its ``seq``
        and ``at`` back as ``move``. Nothing is written."""
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        version = validate_version(version)
        with self._index._read() as conn:
            sha256 = self._require_live(conn, model_name, version)
            return self._plan(conn, model_name, alias, version, sha256, self._alias_state(conn, model_name, alias))

    @_retry_on_disconnect
    def plan_move_with_record(
        self, model_name: str, alias: str, version: str, *, expected: str | None = None
    ) -> tuple[dict[str, Any], ModelMetadata]:
        """:meth:`plan_move` and the live record of ``version`` (its signed fields: without its
        aliases, tags and description), read in one statement with the alias's state: what a
        registry server's client checks the event against before it signs it. With
        ``expected``, :class:`AliasConflictError` first unless the alias points there now
        (``""``: unless it does not exist), as :meth:`set_alias` checks again under the model's
        lock. Nothing is written."""
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        version = validate_version(version)
        params = {"model_name": model_name, "version": version, "alias": alias}
        with self._index._read() as conn:
            row = self._index._live_row(conn, _PLAN_ROWS, params, model_name, version, deleted_at=RECORD_WIDTH)
            record = bound_row(row)  # checked against the row
            found = row[RECORD_WIDTH + 1 :]
            state = _state_of(found[1:]) if found[0] is not None else None
            _check_expected(model_name, alias, state.version if state is not None else None, expected)
            # The row's SHA-256, as a move signs it under the lock (_require_live).
            sha256 = str(row[RECORD_SHA256])
            return self._plan(conn, model_name, alias, version, sha256, state), record

    def _plan(
        self, conn: Connection, model_name: str, alias: str, version: str, sha256: str, state: AliasState | None
    ) -> dict[str, Any]:
        """The event of moving ``alias`` (now at ``state``) to ``version`` (with ``sha256``) now."""
        seq = next_seq(state.seq if state is not None else self._last_seq(conn, model_name, alias))
        if state is not None and state.version == version:  # a re-sign keeps the move's from and time
            return alias_event(model_name, alias, version, sha256, seq, previous=state.previous, at=state.at)
        previous = state.version if state is not None else None
        return alias_event(model_name, alias, version, sha256, seq, previous=previous, at=now())

    @_retry_on_disconnect
    def check_alias_move(
        self, model_name: str, alias: str, version: str, *, fingerprint: str | None = None
    ) -> tuple[list[Policy], list[tuple[str, str]]]:
        """The policies governing a move of ``alias`` to ``version`` and the conditions it would
        break, judged as :meth:`set_alias` judges them (``fingerprint``: the mover's signing key)."""
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        version = validate_version(version)
        with self._index._read() as conn:
            self._require_live(conn, model_name, version)
            return check_move(self._index, conn, model_name, alias, version, fingerprint)

    @_retry_on_disconnect
    def resign_aliases(self, model_name: str, version: str, sign: Signer) -> list[str]:
        """Re-sign every alias that points at ``version`` (after an overwrite changed its bytes,
        which each move's signature names); returns those aliases. Each re-sign writes an
        ``alias_resign`` history row (signature and move number; the move's from-version and
        time are unchanged), so that a rebuild from the store's event files restores it."""
        with self._locked(model_name) as conn:
            pointing = list(
                conn.execute(
                    select(aliases.c.alias, aliases.c.seq, aliases.c.previous, aliases.c.updated_at).where(
                        aliases.c.model_name == model_name, aliases.c.version == version
                    )
                )
            )
            if not pointing:
                return []
            sha256 = self._sha256(conn, model_name, version)
            for alias, last, previous, at in pointing:
                seq = next_seq(last if isinstance(last, int) else None)
                event = alias_event(model_name, alias, version, sha256, seq, previous=previous, at=at)
                signature = sign(event)
                conn.execute(
                    update(aliases)
                    .where(aliases.c.model_name == model_name, aliases.c.alias == alias)
                    .values(seq=seq, signature=signature)
                )
                write_history(
                    conn,
                    ALIAS_RESIGN,
                    model_name,
                    version=version,
                    alias=alias,
                    after={"sha256": sha256},
                    signature=signature,
                    seq=seq,
                    state={"seq": seq},
                )
            return [alias for alias, *_ in pointing]

    @staticmethod
    def _last_seq(conn: Connection, model_name: str, alias: str) -> int | None:
        """The highest move number the history records for ``alias``."""
        found = conn.execute(_LAST_SEQ, {"model_name": model_name, "alias": alias}).scalar()
        return found if isinstance(found, int) and not isinstance(found, bool) else None

    @staticmethod
    def _alias_state(conn: Connection, model_name: str, alias: str) -> AliasState | None:
        row = conn.execute(_ALIAS_STATE, {"model_name": model_name, "alias": alias}).first()
        return None if row is None else _state_of(row)

    @_retry_on_disconnect
    def alias_state(self, model_name: str, alias: str) -> AliasState:
        """Where ``alias`` points, with its move number and signature (what a reader checks);
        :class:`AliasNotFoundError` if there is no such alias."""
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        with self._index._read() as conn:
            found = self._alias_state(conn, model_name, alias) if self._index.may_view(model_name) else None
            if found is None:
                raise self._no_alias(conn, model_name, alias)
        return found

    @_retry_on_disconnect
    def signed_removals(self, model_name: str, version: str) -> list[tuple[str, str]]:
        """``(at, signature)`` of each signed removal of ``version`` (trash) in the history, newest first."""
        with self._index._read() as conn:
            rows = conn.execute(
                select(history.c.at, history.c.signature)
                .where(
                    history.c.model_name == model_name,
                    history.c.version == version,
                    history.c.action == "delete",
                    history.c.signature.is_not(None),
                )
                .order_by(history.c.id.desc())
            )
            return [(str(at), str(sig)) for at, sig in rows]

    @_retry_on_disconnect
    def signed_moves_after(self, model_name: str, alias: str, seq: int) -> list[tuple[AliasState, str]]:
        """Each signed move of ``alias`` in the history numbered above ``seq``, with the SHA-256
        the index now has for its version (what a reader checks for a replayed older move)."""
        with self._index._read() as conn:
            rows = conn.execute(
                select(history.c.after, history.c.before, history.c.at, history.c.seq, history.c.signature)
                .where(
                    history.c.model_name == model_name,
                    history.c.alias == alias,
                    history.c.action == "alias_set",
                    history.c.signature.is_not(None),
                    history.c.seq > seq,
                )
                .order_by(history.c.id)
            )
            found = []
            for after, before, at, number, signature in rows:
                version, previous = (_json_text(v) for v in (after, before))
                if version is None or not isinstance(number, int):
                    continue
                sha = conn.execute(
                    select(versions.c.sha256).where(versions.c.model_name == model_name, versions.c.version == version)
                ).scalar()
                found.append((AliasState(version, number, str(signature), previous, str(at)), str(sha or "")))
            return found

    @_retry_on_disconnect
    def delete_alias(self, model_name: str, alias: str, *, expected: str | None = None) -> str:
        """Remove ``alias``; returns the version it pointed at. :class:`AliasNotFoundError` if absent;
        with ``expected``, :class:`AliasConflictError` unless it points there."""
        model_name = validate_model_name(model_name)
        alias = validate_alias(alias)
        with self._locked(model_name) as conn:
            current = self._alias_target(conn, model_name, alias)
            if current is None:
                raise self._no_alias(conn, model_name, alias)
            _check_expected(model_name, alias, current, expected)
            conn.execute(delete(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias))
            write_history(conn, "alias_delete", model_name, version=current, alias=alias, before=current)
            return current

    @_retry_on_disconnect
    def get_aliases(self, model_name: str) -> dict[str, str]:
        """``{alias: version}`` of a model, sorted by alias."""
        model_name = validate_model_name(model_name)
        if not self._index.may_view(model_name):
            return {}
        with self._index._read() as conn:
            rows = conn.execute(
                select(aliases.c.alias, aliases.c.version)
                .where(aliases.c.model_name == model_name)
                .order_by(aliases.c.alias)
            )
            return {text_value(a): text_value(v) for a, v in rows}

    @_retry_on_disconnect
    def all_aliases(self, models: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
        """``{model: {alias: version}}`` of every model that has aliases (only of ``models``,
        when given: a page of the models page), in one query."""
        query = select(aliases.c.model_name, aliases.c.alias, aliases.c.version).order_by(
            aliases.c.model_name, aliases.c.alias
        )
        wanted = None if models is None else set(models)
        if wanted is not None:
            if not wanted:
                return {}
            # The page's range of names, not an IN list: the same statement for any page.
            query = query.where(aliases.c.model_name.between(min(wanted), max(wanted)))
        with self._index._read() as conn:
            out: dict[str, dict[str, str]] = {}
            for m, a, v in conn.execute(query):
                name = text_value(m)
                if wanted is None or name in wanted:
                    out.setdefault(name, {})[text_value(a)] = text_value(v)
            return {m: found for m, found in out.items() if self._index.may_view(m)}

    @_retry_on_disconnect
    def resolve_alias(self, model_name: str, alias: str) -> str:
        """The version ``alias`` points at; :class:`AliasNotFoundError` if there is no such alias."""
        return self.alias_state(model_name, alias).version

    # -- tags and descriptions --------------------------------------------------------
    def _tag_scope(self, conn: Connection, model_name: str, version: str | None) -> str:
        if version is None:
            self._require_model(conn, model_name)
            return MODEL_LEVEL
        self._require_live(conn, model_name, version)
        return version

    @_retry_on_disconnect
    def set_tag(self, model_name: str, key: str, value: str, *, version: str | None = None) -> None:
        """Set a tag on the model (``version=None``) or on one live version."""
        model_name = validate_model_name(model_name)
        key = validate_tag_key(key)
        value = _text(value, f"value of tag {key!r}", MAX_TEXT)
        if version is not None:
            version = validate_version(version)
        with self._locked(model_name) as conn:
            scope = self._tag_scope(conn, model_name, version)
            where = (tags.c.model_name == model_name, tags.c.version == scope, tags.c.key == key)
            before = conn.execute(select(tags.c.value).where(*where)).scalar()
            if before == value:
                return
            if before is None:
                conn.execute(insert(tags).values(model_name=model_name, version=scope, key=key, value=value))
            else:
                conn.execute(update(tags).where(*where).values(value=value))
            write_history(conn, "tag_set", model_name, version=version, key=key, before=before, after=value)

    @_retry_on_disconnect
    def delete_tag(self, model_name: str, key: str, *, version: str | None = None) -> None:
        """Remove a tag; :class:`KeyError` (``ModelNotFoundError``) if it is not set."""
        model_name = validate_model_name(model_name)
        key = validate_tag_key(key)
        if version is not None:
            version = validate_version(version)
        with self._locked(model_name) as conn:
            scope = self._tag_scope(conn, model_name, version)
            where = (tags.c.model_name == model_name, tags.c.version == scope, tags.c.key == key)
            before = conn.execute(select(tags.c.value).where(*where)).scalar()
            if before is None:
                on = f"version '{version}' of model '{model_name}'" if version else f"model '{model_name}'"
                raise VersionNotFoundError(f"{on} has no tag {key!r}")
            conn.execute(delete(tags).where(*where))
            write_history(conn, "tag_delete", model_name, version=version, key=key, before=before)

    @_retry_on_disconnect
    def get_tags(self, model_name: str, *, version: str | None = None) -> dict[str, str]:
        """The model's tags (``version=None``) or one version's, sorted by key."""
        model_name = validate_model_name(model_name)
        scope = MODEL_LEVEL if version is None else validate_version(version)
        if version is None and not self._index.may_view(model_name):
            return {}
        with self._index._read() as conn:
            if version is not None:
                self._require_live(conn, model_name, scope)
            rows = conn.execute(
                select(tags.c.key, tags.c.value)
                .where(tags.c.model_name == model_name, tags.c.version == scope)
                .order_by(tags.c.key)
            )
            return {text_value(k): text_value(v) for k, v in rows}

    @_retry_on_disconnect
    def set_description(self, model_name: str, text: str | None, *, version: str | None = None) -> None:
        """Describe the model (``version=None``) or one live version; ``None`` clears it."""
        model_name = validate_model_name(model_name)
        if text is not None:
            text = _text(text, "description", MAX_TEXT)
        if version is not None:
            version = validate_version(version)
        with self._locked(model_name) as conn:
            at = now()
            if version is None:
                self._require_model(conn, model_name)
                where_m = models.c.model_name == model_name
                before = conn.execute(select(models.c.description).where(where_m)).scalar()
                if before == text:
                    return
                conn.execute(update(models).where(where_m).values(description=text, updated_at=at))
            else:
                self._require_live(conn, model_name, version)
                where_v = (versions.c.model_name == model_name, versions.c.version == version)
                before = conn.execute(select(versions.c.description).where(*where_v)).scalar()
                if before == text:
                    return
                conn.execute(update(versions).where(*where_v).values(description=text))
            write_history(conn, "describe", model_name, version=version, before=before, after=text, at=at)

    @_retry_on_disconnect
    def get_description(self, model_name: str, *, version: str | None = None) -> str | None:
        """The model's description (``version=None``) or one live version's."""
        model_name = validate_model_name(model_name)
        with self._index._read() as conn:
            if version is None:
                self._require_model(conn, model_name)
                return conn.execute(select(models.c.description).where(models.c.model_name == model_name)).scalar()
            version = validate_version(version)
            self._require_live(conn, model_name, version)
            return conn.execute(
                select(versions.c.description).where(versions.c.model_name == model_name, versions.c.version == version)
            ).scalar()

    # -- trash ----------------------------------------------------------------------
    def _trash(
        self,
        conn: Connection,
        model_name: str,
        version: str,
        *,
        force: bool,
        reason: str | None,
        sign: Signer | None,
        at: str | None = None,
    ) -> str:
        pointing = list(
            conn.execute(
                select(aliases.c.alias)
                .where(aliases.c.model_name == model_name, aliases.c.version == version)
                .order_by(aliases.c.alias)
            ).scalars()
        )
        at = at or now()
        if pointing and not force:
            raise VersionInUseError(
                f"model '{model_name}' version '{version}' is what alias(es) {', '.join(pointing)} point at; "
                "move the alias first, or delete with force=True (which removes the alias too)",
                cli={"delete with force=True": "pass --force"},
            )
        for alias in pointing:
            conn.execute(delete(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias))
            write_history(conn, "alias_delete", model_name, version=version, alias=alias, before=version, at=at)
        conn.execute(
            update(versions)
            .where(versions.c.model_name == model_name, versions.c.version == version)
            .values(deleted_at=at)
        )
        after: dict[str, Any] = {"deleted_at": at}
        if reason:
            after["reason"] = reason
        if pointing:
            after["removed_aliases"] = pointing
        signature = None
        if sign is not None:
            signature = sign(removal_event(model_name, version, self._sha256(conn, model_name, version), at))
        write_history(conn, "delete", model_name, version=version, after=after, at=at, signature=signature)
        return at

    @_retry_on_disconnect
    def trash(
        self, model_name: str, version: str, *, force: bool = False, sign: Signer | None = None, at: str | None = None
    ) -> str:
        """Move a live version to the trash; returns the time it was trashed.

        An aliased version raises :class:`VersionInUseError` unless ``force``, which
        removes its aliases (each recorded in the history) in the same transaction.
        ``sign`` signs the removal (:func:`modelkeep.events.removal_event`), so that readers
        who saw this version as the latest accept the one before it. ``at`` (from
        :meth:`plan_removal`, for a signer elsewhere) is the removal's time, within
        :data:`MOVE_SKEW` seconds of now, else :class:`AliasConflictError` (plan again).
        """
        if at is not None:
            _check_planned_time(f"the removal of model '{model_name}' version '{version}'", at)
        model_name = validate_model_name(model_name)
        version = validate_version(version)
        with self._locked(model_name) as conn:
            exists, deleted_at = self._version_state(conn, model_name, version)
            if not exists:
                raise self._index._missing(conn, model_name, version)
            if deleted_at is not None:
                raise _already_trashed(model_name, version)
            return self._trash(conn, model_name, version, force=force, reason=None, sign=sign, at=at)

    @_retry_on_disconnect
    def plan_removal(self, model_name: str, version: str) -> dict[str, Any]:
        """The removal event :meth:`trash` would sign if ``version`` went to the trash now, for a
        signer elsewhere; pass its ``at`` back to :meth:`trash`. Nothing is written."""
        model_name = validate_model_name(model_name)
        version = validate_version(version)
        with self._index._read() as conn:
            sha256 = self._require_live(conn, model_name, version, _already_trashed)  # the words of trash()
            return removal_event(model_name, version, sha256, now())

    @_retry_on_disconnect
    def trashed_version(self, model_name: str, version: str) -> bool:
        """True when ``version`` exists and is in the trash."""
        with self._index._read() as conn:
            return self._version_state(conn, model_name, version)[1] is not None

    @_retry_on_disconnect
    def restore(self, model_name: str, version: str) -> None:
        """Bring a trashed version back; :class:`VersionNotFoundError` if it is not in the trash."""
        model_name = validate_model_name(model_name)
        version = validate_version(version)
        with self._locked(model_name) as conn:
            exists, deleted_at = self._version_state(conn, model_name, version)
            if not exists or deleted_at is None:
                state = "is not in the trash" if exists else "does not exist (purged?)"
                raise VersionNotFoundError(f"model '{model_name}' version '{version}' {state}")
            conn.execute(
                update(versions)
                .where(versions.c.model_name == model_name, versions.c.version == version)
                .values(deleted_at=None)
            )
            write_history(conn, "restore", model_name, version=version, before={"deleted_at": deleted_at})

    @_retry_on_disconnect
    def trashed(
        self, model_name: str | None = None, *, older_than: _dt.datetime | str | None = None
    ) -> list[tuple[str, str, str]]:
        """``(model, version, deleted_at)`` of trashed versions, oldest trash first."""
        query = select(versions.c.model_name, versions.c.version, versions.c.deleted_at).where(
            versions.c.deleted_at.is_not(None)
        )
        if model_name is not None:
            query = query.where(versions.c.model_name == validate_model_name(model_name))
        if older_than is not None:
            query = query.where(versions.c.deleted_at < as_utc_iso(older_than))
        with self._index._read() as conn:
            rows = conn.execute(query.order_by(versions.c.deleted_at, versions.c.id))
            return [(m, v, d) for m, v, d in rows if self._index.may_view(m)]

    @_retry_on_disconnect
    def prune(self, model_name: str, keep_last: int, *, dry_run: bool = False, sign: Signer | None = None) -> list[str]:
        """Trash every live version but the newest ``keep_last`` (in version order), never an
        aliased one; returns the versions trashed (or, ``dry_run``, that would be)."""
        model_name = validate_model_name(model_name)
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise InvalidNameError(f"keep_last must be a whole number >= 0, got {keep_last!r}")
        with self._locked(model_name) as conn:
            newest_first = list(
                conn.execute(
                    select(versions.c.version).where(versions.c.model_name == model_name, LIVE).order_by(*_ORDER_DESC)
                ).scalars()
            )
            if not self._index.may_view(model_name) or (
                not newest_first and not self._version_state_any(conn, model_name)
            ):
                raise no_versions(model_name)
            aliased = set(conn.execute(select(aliases.c.version).where(aliases.c.model_name == model_name)).scalars())
            chosen = [v for v in newest_first[keep_last:] if v not in aliased]
            if not dry_run:
                for version in chosen:
                    self._trash(
                        conn, model_name, version, force=False, reason=f"prune keep_last={keep_last}", sign=sign
                    )
            return chosen

    def _version_state_any(self, conn: Connection, model_name: str) -> bool:
        return (
            conn.execute(select(versions.c.id).where(versions.c.model_name == model_name).limit(1)).first() is not None
        )

    # -- history --------------------------------------------------------------------
    @_retry_on_disconnect
    def history(
        self,
        model_name: str | None = None,
        *,
        alias: str | None = None,
        since: _dt.datetime | str | None = None,
        until: _dt.datetime | str | None = None,
        limit: int | None = None,
        actions: tuple[str, ...] | None = None,
    ) -> list[HistoryEntry]:
        """Audit rows, oldest first; ``limit`` keeps the most recent ones.

        ``since`` is inclusive, ``until`` exclusive; both take datetimes (naive = UTC)
        or ISO-8601 strings. The rows about users, tokens and grants (model ``_users``, see
        :data:`~.audit.USERS_LOG`) are listed only to admins (and when no identity acts).
        """
        query = select(history)
        if model_name is not None:
            name = model_name if model_name == USERS_LOG else validate_model_name(model_name)
            query = query.where(history.c.model_name == name)
        if alias is not None:
            query = query.where(history.c.alias == validate_alias(alias))
        if since is not None:
            query = query.where(history.c.at >= as_utc_iso(since))
        if until is not None:
            query = query.where(history.c.at < as_utc_iso(until))
        if actions is not None:
            query = query.where(history.c.action.in_(actions))
        query = query.order_by(history.c.id.desc())
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidNameError(f"limit must be a whole number >= 0, got {limit!r}")
            query = query.limit(min(limit, SQL_INT_MAX))  # more rows than that: every row
        who = self._index.viewer()
        if who is not None and not who.at_least("admin"):  # users, tokens and grants: admins only
            query = query.where(history.c.model_name != USERS_LOG)
        with self._index._read() as conn:
            seen = self._index.visible_names(conn)
            if seen is not None:  # only the rows of models the reader may see, limit and all
                query = query.where(history.c.model_name.in_(seen))
            rows = list(conn.execute(query))
        return [history_entry(r._mapping) for r in reversed(rows)]

    # -- damage ---------------------------------------------------------------------
    @_retry_on_disconnect
    def damaged_rows(self, model_name: str | None = None) -> list[tuple[str, str, str | None, str]]:
        """``(what, model, version, why)`` for each history, alias or tag row that cannot be read
        as written (a value that is not JSON, a cell of the wrong type); ``verify`` lists them."""
        out: list[tuple[str, str, str | None, str]] = []
        where_h = [] if model_name is None else [history.c.model_name == model_name]
        where_a = [] if model_name is None else [aliases.c.model_name == model_name]
        where_t = [] if model_name is None else [tags.c.model_name == model_name]
        with self._index._read() as conn:
            for row in conn.execute(select(history).where(*where_h).order_by(history.c.id)):
                entry = history_entry(row._mapping)
                if entry.damaged:
                    out.append((f"history row {entry.id}", entry.model_name, entry.version, entry.damaged))
            for name, alias, version in conn.execute(
                select(aliases.c.model_name, aliases.c.alias, aliases.c.version).where(*where_a)
            ):
                bad = [f"{what} is a {type(v).__name__}" for what, v in (("alias", alias), ("version", version))]
                if not (isinstance(alias, str) and isinstance(version, str)):
                    out.append((f"alias {text_value(alias)}", text_value(name), text_value(version), _wrong(bad)))
            for name, version, key, value in conn.execute(
                select(tags.c.model_name, tags.c.version, tags.c.key, tags.c.value).where(*where_t)
            ):
                bad = [f"{what} is a {type(v).__name__}" for what, v in (("key", key), ("value", value))]
                if not (isinstance(key, str) and isinstance(value, str)):
                    scope = text_value(version) or None
                    out.append((f"tag {text_value(key)}", text_value(name), scope, _wrong(bad)))
        return out


def _json_text(value: object) -> str | None:
    """A history ``before``/``after`` cell holding a JSON string, as that string (else ``None``)."""
    import json

    try:
        found = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return found if isinstance(found, str) else None


def _wrong(found: list[str]) -> str:
    return "; ".join(f for f in found if not f.endswith(" is a str")) + ", not text"
