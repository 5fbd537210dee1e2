"""Rollback detection: "latest" and aliases never quietly go back to an older signed version.

An attacker who can rewrite the index can delete a model's newest rows, or point an alias at an
older version, and every record left is still genuinely signed. Signatures alone cannot show
that; two things together do:

* **Signed alias moves.** Each move of an alias is signed by the mover
  (:func:`modelkeep.events.alias_event`: model, alias, version, its SHA-256 and a move number
  that only grows). A load through an alias checks that signature: an invalid one is always
  refused, an unsigned or untrusted one when signatures are required.
* **What this reader has seen.** In the reader's own config folder (``seen/``, never the
  store), per registry and model, :class:`SeenMarks` keeps the highest version it loaded with a
  trusted signature (and when), and per alias the highest signed move number. A load of
  "latest" that resolves below that version, or an alias whose move number is below the one
  seen, is a rollback: :class:`~modelkeep.errors.RollbackError` when signatures are required,
  else a :class:`RollbackWarning`. A load of a version by its number is never refused for this.

Removing a version on purpose must not look like an attack: the trash signs a removal event
(:func:`modelkeep.events.removal_event`, with the version's SHA-256 and the time). A signed
removal of the version a reader saw, made after the reader last saw it, lowers the reader's
mark instead of raising an error.

A registry is identified by where this reader opens it (the store's URL, the index's URL and
schema), which the attacker cannot change. What this does not cover: a reader that never saw
the newer version (first use, or a fresh config folder), and an index rolled back before this
reader ever loaded from it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RollbackError, SignatureError
from .events import alias_events, removal_event
from .keys import names_key
from .signing import INVALID, Keyring, Verdict
from .versions import sort_key

if TYPE_CHECKING:
    from .index.lifecycle import AliasState, Lifecycle
    from .metadata import ModelMetadata

logger = logging.getLogger("modelkeep")


#: How often (seconds) a reader renews the time it last saw its newest version; a signed
#: removal made and undone (restored) within this long before that can be replayed.
REFRESH_SECONDS = 60.0


class RollbackWarning(UserWarning):
    """ "latest" or an alias went back to an older version than this reader saw (signatures are
    not required, so the load goes on)."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class SeenMarks:
    """What one reader has seen of one registry, in a JSON file of its own config folder.

    ``{"registry": ..., "models": {name: {"latest": {"version", "sha256", "seen_at"},
    "aliases": {alias: seq}}}}``. Reads and writes are best effort: a folder that cannot be
    written only means less protection, never a failed load.
    """

    def __init__(self, folder: str | os.PathLike[str], registry: str) -> None:
        self.registry = registry
        digest = hashlib.sha256(registry.encode()).hexdigest()[:32]
        self.path = Path(folder) / f"{digest}.json"
        self._models: dict[str, Any] | None = None

    def read(self) -> dict[str, Any]:
        """``{model: entry}``, read from the file once per :class:`SeenMarks` (one load)."""
        if self._models is None:
            self._models = self._read()
        return self._models

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("registry") != self.registry:
            return {}
        models = data.get("models")
        return models if isinstance(models, dict) else {}

    def model(self, model_name: str) -> dict[str, Any]:
        found = self.read().get(model_name)
        return found if isinstance(found, dict) else {}

    def update(self, model_name: str, **changes: Any) -> None:
        """Merge ``changes`` (``latest=...``, ``aliases={alias: seq}``) into one model's entry
        (read again first, so that another process's marks of other models are kept)."""
        models = self._models = self._read()
        entry = models.get(model_name) if isinstance(models.get(model_name), dict) else {}
        assert isinstance(entry, dict)
        for key, value in changes.items():
            if key == "aliases":
                entry["aliases"] = {**(entry.get("aliases") or {}), **value}
            elif value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        models[model_name] = entry
        self._write({"registry": self.registry, "models": models})

    def forget(self, model_name: str | None = None) -> None:
        """Drop what was seen of one model (all models with ``None``)."""
        if model_name is None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return
        models = self._models = self._read()
        if models.pop(model_name, None) is not None:
            self._write({"registry": self.registry, "models": models})

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.debug("cannot record what this reader saw in %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


def _older(version: str, than: str) -> bool:
    """Whether ``version`` sorts before ``than`` (versions that do not parse are never compared)."""
    a, b = sort_key(version), sort_key(than)
    return a is not None and b is not None and a < b


class Freshness:
    """The rollback checks of one registry's loads (see the module's docstring)."""

    def __init__(self, keyring: Keyring, lifecycle: Lifecycle, marks: SeenMarks) -> None:
        self.keyring = keyring
        self.lifecycle = lifecycle
        self.marks = marks

    def _rolled_back(self, message: str, required: bool | None = None) -> None:
        if self.keyring.required or required:
            raise RollbackError(message)
        warnings.warn(RollbackWarning(message), stacklevel=4)

    # -- aliases ------------------------------------------------------------------
    def move_verdict(self, model_name: str, alias: str, state: AliasState, sha256: str) -> Verdict:
        """Judge one signed move: the current event (with from-version and time), else the older
        form without them (moves signed before schema 7)."""
        events = alias_events(model_name, alias, state.version, sha256, state.seq or 0, state.previous, state.at)
        verdicts = [self.keyring.event_verdict(state.signature, event) for event in events]
        return next((v for v in verdicts if v.trusted), verdicts[0])

    def check_alias(
        self,
        record: ModelMetadata,
        alias: str,
        state: AliasState,
        *,
        require: bool = False,
        releasers: tuple[str, ...] = (),
    ) -> Verdict:
        """Judge the move that made ``alias`` point at ``record``, before anything is read.

        ``require`` (``load(..., require_signed_alias=True)``) or ``releasers`` (fingerprints:
        ``trusted_releasers``) refuse a move that is not signed by a trusted key (one of the
        releasers), and an older signed move replayed over a newer one the history records."""
        art = record.artifact
        assert art is not None
        name = record.model_name
        where = f"alias '{alias}' of model '{name}'"
        required = require or bool(releasers) or self.keyring.required
        found = self.move_verdict(name, alias, state, art.sha256)
        if found.status == INVALID:
            raise SignatureError(
                f"{where} points at version '{state.version}', but the signature of that move does not match: "
                "the alias was moved, or the version's bytes replaced, by someone without the key; move it "
                "again with a signing key (modelkeep alias set)"
            )
        seen = (self.marks.model(name).get("aliases") or {}).get(alias)
        seen = seen if isinstance(seen, int) else None
        if not found.trusted:
            if seen is not None:
                self._rolled_back(
                    f"{where} points at version '{state.version}' by a move that is not signed by a trusted key "
                    f"({found.reason}), but this reader has already seen a signed move of it: the index may have "
                    "been rolled back",
                    required,
                )
            elif required:
                raise SignatureError(
                    f"{where} points at version '{state.version}' by a move that is not signed by a trusted key "
                    f"({found.reason}); move the alias again with a signing key (modelkeep alias set), or load "
                    "the version by its number"
                )
            return found
        if releasers and not any(names_key(r, found.fingerprint) for r in releasers):
            raise SignatureError(
                f"{where} points at version '{state.version}' by a move signed by {found.signer or 'a shared key'}, "
                f"which is not one of the trusted releasers ({', '.join(r[:16] for r in releasers)})"
            )
        if seen is not None and (state.seq or 0) < seen:
            self._rolled_back(
                f"{where} points at version '{state.version}' by an older move than this reader has already "
                f"seen (move {state.seq} < {seen}): the index may have been rolled back; load the version by "
                "its number to use it anyway",
                required,
            )
        elif required:
            self._check_not_replayed(name, alias, state, where)
        if seen is None or (state.seq or 0) > seen:
            self.marks.update(name, aliases={alias: state.seq or 0})
        return found

    def _check_not_replayed(self, name: str, alias: str, state: AliasState, where: str) -> None:
        """Refuse an alias row that is an older signed move copied back over a newer one the
        history still records (or a newer move whose record was altered)."""
        for later, sha256 in self.lifecycle.signed_moves_after(name, alias, state.seq or 0):
            verdict = self.move_verdict(name, alias, later, sha256)
            if verdict.trusted or verdict.status == INVALID:
                what = "a newer signed move" if verdict.trusted else "a newer move whose record was altered"
                raise RollbackError(
                    f"{where} points at version '{state.version}' by move {state.seq}, but the history records "
                    f"{what} (number {later.seq}, to version '{later.version}', at {later.at}): an older signed "
                    "move was replayed into the index; move the alias again with a signing key"
                )

    # -- latest -------------------------------------------------------------------
    def check_latest(self, record: ModelMetadata) -> None:
        """Before "latest" is read: refuse (or warn about) a version below the one this reader saw."""
        mark = self.marks.model(record.model_name).get("latest")
        if not isinstance(mark, dict) or not isinstance(mark.get("version"), str):
            return
        if not _older(record.version, mark["version"]):
            return
        if self._removed_since(record.model_name, mark):
            logger.info(
                "model '%s': version %s, which this reader saw as the latest, was removed by a signed "
                "trash; the latest is now %s",
                record.model_name,
                mark["version"],
                record.version,
            )
            self.marks.update(record.model_name, latest=None)
            return
        self._rolled_back(
            f"the latest version of model '{record.model_name}' resolves to '{record.version}', but this reader "
            f"has already loaded signed version '{mark['version']}' from this registry ({mark.get('seen_at')}), "
            "and no signed removal of it was made since: the index may have been rolled back. Load a version by "
            "its number to use it anyway; if versions were removed on purpose without a signing key, "
            "forget_seen() (modelkeep keys forget-seen) resets what this reader remembers"
        )

    def _removed_since(self, model_name: str, mark: dict[str, Any]) -> bool:
        """Whether a trusted signed removal of the marked version was made after the reader saw it."""
        seen_at = str(mark.get("seen_at") or "")
        for at, signature in self.lifecycle.signed_removals(model_name, mark["version"]):
            event = removal_event(model_name, mark["version"], str(mark.get("sha256")), at)
            if at > seen_at and self.keyring.event_verdict(signature, event).trusted:
                return True
        return False

    def note_loaded(self, record: ModelMetadata, verdict: Verdict) -> None:
        """After a load with a trusted signature: remember the version if it is the highest seen."""
        art = record.artifact
        if not verdict.trusted or art is None or sort_key(record.version) is None:
            return
        mark = self.marks.model(record.model_name).get("latest")
        now = _now()
        if isinstance(mark, dict) and isinstance(mark.get("version"), str):
            if _older(record.version, mark["version"]):
                return
            if mark["version"] == record.version and mark.get("sha256") == art.sha256:
                # Seen again. A signed removal counts only if made after the reader last saw the
                # version (so one from before a restore cannot be replayed); that time is renewed
                # every REFRESH_SECONDS rather than by a file write on every load.
                try:
                    age = (now - _dt.datetime.fromisoformat(str(mark.get("seen_at")))).total_seconds()
                except ValueError:
                    age = REFRESH_SECONDS
                if 0 <= age < REFRESH_SECONDS:
                    return
        seen = {"version": record.version, "sha256": art.sha256, "seen_at": now.isoformat(timespec="microseconds")}
        self.marks.update(record.model_name, latest=seen)
