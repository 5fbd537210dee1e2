"""The lifecycle half of :class:`~modelkeep.ModelPersistence`: aliases, tags,
descriptions, the audit history, the trash (delete, restore, purge) and retention.

The state lives in the index (see :mod:`modelkeep.index.lifecycle`); this mixin
validates the caller's arguments, resolves ``name@alias`` references, and removes
a purged version's files after its index entry is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import AliasConflictError, InvalidNameError, SignatureError, VersionNotFoundError
from .identity import AccessPolicy, Identity, acting, acting_as
from .layout import record_blobs
from .metadata import HistoryEntry, ModelMetadata
from .versions import validate_alias, validate_model_name, validate_version

if TYPE_CHECKING:
    from .index import SqlIndex
    from .index.lifecycle import AliasState
    from .signing import Keyring
    from .storage import ArtifactStore
    from .users import UserStore

logger = logging.getLogger("modelkeep")

#: Actions that move or remove an alias, as :meth:`LifecycleMixin.alias_history` reports them.
ALIAS_ACTIONS = ("alias_set", "alias_delete")
_AGE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Age = _dt.timedelta | float | int | str


def parse_age(age: Age) -> _dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``, a number of seconds, or a timedelta."""
    if isinstance(age, _dt.timedelta):
        seconds = age.total_seconds()
    elif isinstance(age, (int, float)) and not isinstance(age, bool):
        seconds = float(age)
    elif isinstance(age, str) and (m := _AGE_RE.fullmatch(age)):
        seconds = float(m[1]) * _AGE_UNITS[m[2].lower()]
    else:
        raise InvalidNameError(f"age {age!r} is not understood; use e.g. '30d', '12h', '90m' or seconds")
    if seconds < 0:
        raise InvalidNameError(f"age {age!r} must not be negative")
    try:
        return _dt.timedelta(seconds=seconds)
    except OverflowError:  # beyond timedelta.max (about 2.7 million years), or infinite
        raise InvalidNameError(f"age {age!r} is too large; use e.g. '30d', '12h', '90m' or seconds") from None


def age_cutoff(age: Age) -> _dt.datetime:
    """The time ``age`` ago (UTC): an age reaching back before year 1 is year 1, so that
    "older than" it selects nothing rather than failing."""
    delta = parse_age(age)
    try:
        return _dt.datetime.now(_dt.timezone.utc) - delta
    except OverflowError:
        return _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def split_reference(model_name: str, version: str | None, alias: str | None) -> tuple[str, str | None, str | None]:
    """``("churn@production", None, None)`` -> ``("churn", None, "production")``; also ``version="@production"``."""
    if isinstance(model_name, str) and "@" in model_name:
        model_name, _, named = model_name.partition("@")
        if alias is not None and alias != named:
            raise InvalidNameError(f"two aliases given: '@{named}' and alias={alias!r}")
        alias = named
    if isinstance(version, str) and version.startswith("@"):
        if alias is not None and alias != version[1:]:
            raise InvalidNameError(f"two aliases given: alias {alias!r} and version {version!r}")
        alias, version = version[1:], None
    model_name = validate_model_name(model_name)
    if alias is not None:
        alias = validate_alias(alias)
    if version is not None:
        version = validate_version(version)
    return model_name, version, alias


class Reference(NamedTuple):
    """How a load named its version: through ``alias`` (with the alias row's ``state``), as the
    latest, or by number (neither)."""

    alias: str | None
    state: AliasState | None
    latest: bool


class LifecycleMixin:
    """Aliases, tags, descriptions, history and the trash, on :class:`ModelPersistence`.

    Alias moves and removals to the trash are signed with the registry's key
    (:mod:`modelkeep.events`), so that readers can tell them from a rolled-back index.
    """

    store: ArtifactStore
    keyring: Keyring
    #: Who uses this object (see :mod:`modelkeep.identity`); ``None``: no role checks.
    identity: Identity | None = None
    #: Protected aliases and who may move them (checked when an identity acts).
    access: AccessPolicy = AccessPolicy()

    # -- identity ---------------------------------------------------------------------
    @functools.cached_property
    def users(self) -> UserStore:
        """The registry's users, grants and API tokens (see :class:`modelkeep.users.UserStore`);
        changing them needs the admin role when an identity acts."""
        from .users import UserStore

        return UserStore(self.index, self._who)

    def sign_in(self, token: str, *, name: str | None = None) -> Identity:
        """Act as the owner of API ``token`` from now on: their role is checked and their name
        goes into the history. ``name`` (e.g. ``MODELKEEP_USER``) must then be that owner.
        Raises :class:`~modelkeep.errors.AuthenticationError` for an unknown, revoked or expired
        token. The identity carries the owner's grants as they are now."""
        self.identity = self.users.token_identity(token, name=name)
        return self.identity

    def _who(self) -> Identity | None:
        """The identity acting now: one set for this block (the UI's request), else this object's."""
        return acting() or self.identity

    @contextlib.contextmanager
    def _as(self, role: str, what: str, model_name: str | None = None) -> Iterator[Identity | None]:
        """Check ``role`` (on ``model_name``, else registry-wide), then run the block as the
        acting identity (for the history)."""
        who = self._who()
        self.access.require(who, role, what, model_name)
        with acting_as(who):
            yield who

    @property
    def index(self) -> SqlIndex:  # ModelPersistence.index
        raise NotImplementedError

    # -- references -------------------------------------------------------------------
    def _lookup(self, model_name: str, version: str | None, alias: str | None) -> ModelMetadata:
        """The live record ``name[@alias]`` / ``version`` / ``alias=`` names (latest by default)."""
        return self._resolve_reference(model_name, version, alias)[0]

    def _resolve_reference(
        self, model_name: str, version: str | None, alias: str | None
    ) -> tuple[ModelMetadata, Reference]:
        """The live record a reference names, and how it was named (for the rollback checks)."""
        model_name, version, alias = split_reference(model_name, version, alias)
        state = None
        if alias is not None:
            state = self.index.lifecycle.alias_state(model_name, alias)
            if version is not None and version != state.version:
                raise InvalidNameError(
                    f"alias '{alias}' of model '{model_name}' points at version '{state.version}', not '{version}'"
                )
            version = state.version
            return self.index.resolve(model_name, version), Reference(alias, state, latest=False)
        return self.index.resolve(model_name, version), Reference(None, None, latest=version is None)

    # -- aliases ----------------------------------------------------------------------
    def set_alias(self, model_name: str, alias: str, version: str, *, expected: str | None = None) -> None:
        """Point ``alias`` (``production``, ``champion``...) at a live ``version``.

        With ``expected``, a compare-and-set: raises :class:`AliasConflictError` if
        the alias points anywhere else right now (someone moved it meanwhile).
        ``expected=""`` means the alias must not exist yet. Every move is recorded in
        the history, and signed with this registry's key (setting an alias to where it already
        points re-signs it). With an identity, a protected alias needs an admin (or a named user).
        A move that breaks the alias's promotion policy (:meth:`set_policy`) raises
        :class:`PolicyError`, naming each failed condition and the value seen.
        """
        with self._as("maintainer", "move aliases", model_name) as who:
            self.access.require_alias(who, alias, "move it", model_name)
            self.index.lifecycle.set_alias(model_name, alias, version, expected=expected, sign=self.keyring.sign_event)

    def plan_alias_move(self, model_name: str, alias: str, version: str) -> dict[str, Any]:
        """The alias-move event (:func:`modelkeep.events.alias_event`) that moving ``alias`` to
        ``version`` now would sign: for a signer whose key is elsewhere (a registry server's
        client), which signs it and hands it to :meth:`set_alias_signed`. Nothing is written."""
        return self.index.lifecycle.plan_move(model_name, alias, version)

    def set_alias_signed(
        self,
        model_name: str,
        alias: str,
        version: str,
        *,
        event: dict[str, Any],
        signature: str,
        public_key: str | None = None,
        expected: str | None = None,
    ) -> None:
        """:meth:`set_alias`, with the move signed elsewhere: ``event`` is the planned move
        (:meth:`plan_alias_move`) and ``signature`` its signature by the mover's own key, stored
        as made; the move happens only if it is still exactly that event (else
        :class:`AliasConflictError`: plan and sign again). A public-key signature comes with
        ``public_key`` (PEM) and must verify under it, so that the fingerprint a promotion policy
        checks is the mover's; a shared-key (HMAC) one cannot be checked here, and is stored for
        readers to judge. The same roles, protected aliases and policies apply as to :meth:`set_alias`."""
        check_event_signature("an alias move", event, signature, public_key)
        seq, at = event.get("seq"), event.get("at")
        sign = _as_planned(event, signature, f"alias '{alias}' of model '{model_name}' changed since its move")

        with self._as("maintainer", "move aliases", model_name) as who:
            self.access.require_alias(who, alias, "move it", model_name)
            self.index.lifecycle.set_alias(
                model_name,
                alias,
                version,
                expected=expected,
                sign=sign,
                move=(seq, at),  # type: ignore[arg-type]
            )

    def plan_removal(self, model_name: str, version: str) -> dict[str, Any]:
        """The removal event (:func:`modelkeep.events.removal_event`) that moving ``version`` to the
        trash now would sign, for a signer elsewhere (see :meth:`delete_signed`). Nothing is written."""
        return self.index.lifecycle.plan_removal(model_name, version)

    def delete_signed(
        self,
        model_name: str,
        version: str,
        *,
        event: dict[str, Any],
        signature: str,
        public_key: str | None = None,
        force: bool = False,
    ) -> None:
        """:meth:`delete`, with the removal signed elsewhere: ``event`` is the planned removal
        (:meth:`plan_removal`) and ``signature`` its signature by the remover's own key (checked
        as :meth:`set_alias_signed` checks a move's). :class:`AliasConflictError` when the
        version changed since the plan, or the plan is too old: plan and sign again."""
        check_event_signature("a removal", event, signature, public_key)
        sign = _as_planned(event, signature, f"model '{model_name}' version '{version}' changed since its removal")
        at = event.get("at")
        with self._as("maintainer", "move versions to the trash", model_name) as who:
            if force and who is not None:
                for alias, target in self.get_aliases(model_name).items():
                    if target == version:
                        self.access.require_alias(who, alias, "remove it by forcing a delete", model_name)
            self.index.lifecycle.trash(model_name, version, force=force, sign=sign, at=str(at))
        logger.info("deleted %s version %s (moved to the trash, signed by the client)", model_name, version)

    def delete_alias(self, model_name: str, alias: str, *, expected: str | None = None) -> str:
        """Remove an alias (recorded in the history) and return the version it pointed at;
        :class:`AliasNotFoundError` if absent.

        With ``expected``, only if it still points there (:class:`AliasConflictError` otherwise).
        """
        with self._as("maintainer", "remove aliases", model_name) as who:
            self.access.require_alias(who, alias, "remove it", model_name)
            return self.index.lifecycle.delete_alias(model_name, alias, expected=expected)

    def get_aliases(self, model_name: str) -> dict[str, str]:
        """``{alias: version}`` of a model."""
        return self.index.lifecycle.get_aliases(model_name)

    def all_aliases(self, models: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
        """``{model: {alias: version}}`` of every model with aliases, or of ``models`` only
        (one query, however many models)."""
        return self.index.lifecycle.all_aliases(models)

    # -- tags and descriptions ------------------------------------------------------------
    def set_tag(self, model_name: str, key: str, value: str, *, version: str | None = None) -> None:
        """Set a key/value tag on the model, or on one version with ``version=``."""
        with self._as("writer", "set tags", model_name):
            self.index.lifecycle.set_tag(model_name, key, value, version=version)

    def delete_tag(self, model_name: str, key: str, *, version: str | None = None) -> None:
        """Remove a tag from the model, or from one version with ``version=``."""
        with self._as("writer", "remove tags", model_name):
            self.index.lifecycle.delete_tag(model_name, key, version=version)

    def get_tags(self, model_name: str, *, version: str | None = None) -> dict[str, str]:
        """The model's tags, or one version's with ``version=``."""
        return self.index.lifecycle.get_tags(model_name, version=version)

    def set_description(self, model_name: str, text: str | None, *, version: str | None = None) -> None:
        """Describe the model, or one version with ``version=``; ``None`` clears it."""
        with self._as("writer", "change descriptions", model_name):
            self.index.lifecycle.set_description(model_name, text, version=version)

    def get_description(self, model_name: str, *, version: str | None = None) -> str | None:
        """The model's description, or one version's with ``version=``."""
        return self.index.lifecycle.get_description(model_name, version=version)

    # -- history --------------------------------------------------------------------
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
        """The audit log, oldest first: every save, overwrite, delete, restore, purge,
        alias, tag and description change, with time, actor and before/after values.

        Filter by model, alias, and time (``since`` inclusive, ``until`` exclusive;
        datetimes or ISO-8601 strings, naive ones in UTC), and ``actions`` (e.g.
        ``("alias_set", "alias_delete")``); ``limit`` keeps the newest.
        """
        return self.index.lifecycle.history(
            model_name, alias=alias, since=since, until=until, limit=limit, actions=actions
        )

    def alias_history(self, model_name: str, alias: str) -> list[HistoryEntry]:
        """Every move and removal of one alias, oldest first (``after`` is the version, or ``None``)."""
        return self.index.lifecycle.history(model_name, alias=alias, actions=ALIAS_ACTIONS)

    def alias_at(self, model_name: str, alias: str, when: _dt.datetime | str) -> str | None:
        """The version ``alias`` pointed at, at time ``when`` (``None`` if it did not exist then).

        Answers "which version was in production on March 3rd".
        """
        moves = self.index.lifecycle.history(model_name, alias=alias, until=when, actions=ALIAS_ACTIONS)
        if not moves or moves[-1].action == "alias_delete":
            return None
        return str(moves[-1].after)

    # -- trash ------------------------------------------------------------------------
    def delete(self, model_name: str, version: str, *, force: bool = False) -> None:
        """Move a version to the trash: it no longer lists, resolves or loads, and its
        bytes stay until :meth:`purge`. Undo with :meth:`restore`.

        A version an alias points at is refused (:class:`VersionInUseError`) unless
        ``force``, which removes those aliases too (recorded in the history); with an
        identity, a protected one among them needs an admin.
        """
        with self._as("maintainer", "move versions to the trash", model_name) as who:
            if force and who is not None:
                for alias, target in self.get_aliases(model_name).items():
                    if target == version:
                        self.access.require_alias(who, alias, "remove it by forcing a delete", model_name)
            self.index.lifecycle.trash(model_name, version, force=force, sign=self.keyring.sign_event)
        logger.info("deleted %s version %s (moved to the trash)", model_name, version)

    def restore(self, model_name: str, version: str) -> None:
        """Bring a version back from the trash."""
        with self._as("maintainer", "restore versions", model_name):
            self.index.lifecycle.restore(model_name, version)
        logger.info("restored %s version %s from the trash", model_name, version)

    def list_trash(self, model_name: str | None = None) -> list[tuple[str, str, str]]:
        """``(model, version, deleted_at)`` of every trashed version (of one model), oldest first."""
        return self.index.lifecycle.trashed(model_name)

    def purge(
        self, model_name: str | None = None, version: str | None = None, *, older_than: Age | None = None
    ) -> list[tuple[str, str]]:
        """Remove trashed versions for good, bytes included; returns ``(model, version)`` pairs.

        One version (``model_name`` and ``version``), all of a model's trash, or all
        trash; ``older_than`` (``"30d"``, seconds, a timedelta) keeps younger trash.
        Shared bytes are kept while another version references them (dedup and blobs).
        A ``version`` that is not in the trash raises :class:`VersionNotFoundError`.
        With an identity, purging needs the admin role (on ``model_name``, or registry-wide).
        """
        with self._as("admin", "purge the trash", model_name):
            return self._purge(model_name, version, older_than)

    def _purge(self, model_name: str | None, version: str | None, older_than: Age | None) -> list[tuple[str, str]]:
        if version is not None:
            if model_name is None:
                raise InvalidNameError("purge of one version needs its model_name")
            targets = [(validate_model_name(model_name), validate_version(version))]
        else:
            cutoff = None
            if older_than is not None:
                cutoff = age_cutoff(older_than)
            targets = [(m, v) for m, v, _ in self.index.lifecycle.trashed(model_name, older_than=cutoff)]
        done = []
        for name, ver in targets:
            try:
                self._purge_one(name, ver)
            except VersionNotFoundError:
                if version is not None:
                    raise
                continue  # restored or purged by someone else meanwhile
            done.append((name, ver))
        return done

    def _purge_one(self, model_name: str, version: str) -> None:
        """Drop the index entry (with its history row), then the files nobody else uses."""
        from .index.claims import deleting
        from .layout import sidecar_key

        started = time.perf_counter()
        # The version stays claimed while its files go, so a new save of it cannot race the removal.
        with deleting(self.index, model_name, version, trashed_only=True) as record:
            art = record.artifact
            if art is not None and self.index.count_artifact_refs(art.key) == 0:
                self.store.delete(art.key, missing_ok=True)
            if art is not None and art.extra.get("blobs"):
                from .blobs import BlobStore

                self.index.release_blobs(record_blobs(record), BlobStore(self.store).delete_many)
            self.store.delete(sidecar_key(model_name, version), missing_ok=True)
            self.store.remove_empty_dirs(f"{model_name}/{version}")
        logger.info(
            "purged %s version %s (%d bytes) in %.1f ms",
            model_name,
            version,
            art.size if art else 0,
            (time.perf_counter() - started) * 1000,
        )

    def prune(self, model_name: str, keep_last: int, *, dry_run: bool = False) -> list[str]:
        """Trash every version of ``model_name`` but the newest ``keep_last`` (version order),
        never an aliased one. Returns the versions trashed (``dry_run``: that would be).
        With an identity, pruning needs the admin role on the model."""
        if dry_run:
            return self.index.lifecycle.prune(model_name, keep_last, dry_run=True)
        with self._as("admin", "prune versions", model_name):
            return self.index.lifecycle.prune(model_name, keep_last, dry_run=dry_run, sign=self.keyring.sign_event)

    def _purge_for_gc(self, older_than: Age, *, dry_run: bool) -> list[tuple[str, str]]:
        if dry_run:
            cutoff = age_cutoff(older_than)
            return [(m, v) for m, v, _ in self.index.lifecycle.trashed(older_than=cutoff)]
        return self.purge(older_than=older_than)


def lifecycle_json(record: ModelMetadata) -> dict[str, Any]:
    """``record.to_dict()`` plus its aliases, tags and description (for ``--json`` output)."""
    return {**record.to_dict(), **record.lifecycle_dict()}


def check_event_signature(what: str, event: Any, signature: Any, public_key: str | None) -> None:
    """Check a signature of ``event`` made elsewhere before it is stored: a public-key one must
    verify under ``public_key`` (PEM), whose fingerprint it names, so that the fingerprint a
    policy checks is the signer's; a shared-key (HMAC) one cannot be checked without the secret.
    :class:`SignatureError` otherwise."""
    from .signing import ECDSA_SCHEME, HMAC_SCHEME, event_verdict, parse

    if not isinstance(event, dict) or not isinstance(signature, str) or not signature:
        raise SignatureError(f"{what} signed elsewhere needs the planned event and its signature")
    parsed = parse(signature)
    if parsed.scheme == ECDSA_SCHEME:
        from .keys import public_key_from_pem

        if not isinstance(public_key, str):
            raise SignatureError(f"a public-key signature of {what} needs the signer's public key")
        key = public_key_from_pem(public_key.encode(), "the signer's public key")
        if key.fingerprint != parsed.fingerprint:
            raise SignatureError(
                f"{what} is signed by key {str(parsed.fingerprint)[:16]}, not by the public key sent "
                f"({key.fingerprint[:16]})"
            )
        if not event_verdict(signature, event, trusted={key.fingerprint: key}).trusted:
            raise SignatureError(f"the signature of {what} does not match the event sent")
    elif parsed.scheme != HMAC_SCHEME:
        raise SignatureError(f"unknown signature scheme {parsed.scheme!r}")


def _as_planned(event: dict[str, Any], signature: str, changed: str) -> Any:
    """A signer that returns ``signature`` for exactly ``event``, else :class:`AliasConflictError`."""

    def sign(built: dict[str, Any]) -> str:
        if built != event:
            raise AliasConflictError(f"{changed} was planned: plan and sign again")
        return signature

    return sign
