"""Signatures over HTTP, on the client's side: signed alias moves, their checks, re-signing, events.

The keys stay here (the server half is :mod:`modelkeep.api.signing_routes`):

* **Moving an alias** with a key (the per-user key, ``signing_key_file`` or a shared secret): the
  client asks the server for the event the move would be now, checks that it is the move asked
  for (model, alias, version, and the SHA-256 of the record the server serves for it), signs it
  and sends the signature; the server moves the alias only if the move is still that event.
  Without a key, the server moves it as a local registry without a key would.
* **Checking an alias** (:meth:`verify_alias`, a load through an alias): the client reads the
  alias's signed move, its record and the later signed moves the history records, and judges
  them with its own trusted keys and ``trusted_releasers`` (:class:`modelkeep.freshness.Freshness`,
  with what this client has seen of this server in its own config folder). A server that rewrites
  a move, replays an older one or serves another version's bytes is refused as a local index
  rewritten by an attacker is.
* **Re-signing** (:meth:`sign`): each version this client's keys trust (or every one, with
  ``include_untrusted``) is downloaded and its digests checked here, then signed here; the server
  stores the signature only if the manifest signed is the one it holds.
* **The event feed** (:meth:`events`): pages of ``GET /events``, polled with ``follow``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import AliasConflictError, InvalidNameError, SignatureError, VersionExistsError
from ..versions import validate_alias, validate_model_name, validate_version
from .wire import path_segment as _segment
from .wire import record_from_wire

if TYPE_CHECKING:
    from ..freshness import Freshness
    from ..index.lifecycle import AliasState
    from ..metadata import ModelMetadata
    from ..resign import ResignReport
    from ..signing import Keyring, Verdict

#: How often a signed alias move is planned and sent again when another move got in between.
MOVE_ATTEMPTS = 3


def _state(data: Any) -> AliasState:
    from ..errors import IntegrityError
    from ..index.lifecycle import AliasState

    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise IntegrityError("the server sent an alias state without a version")
    seq = data.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    texts = [data.get(k) for k in ("signature", "previous", "at")]
    signature, previous, at = (v if isinstance(v, str) else None for v in texts)
    return AliasState(data["version"], seq, signature, previous, at)


class _Served:
    """What :class:`Freshness` reads from an index, as the server answers it: the later signed
    moves of an alias (sent with its state), and a version's signed removals (asked when needed)."""

    def __init__(self, client: SigningMixin, later: Iterable[tuple[AliasState, str]]) -> None:
        self.client = client
        self.later = list(later)

    def signed_moves_after(self, model_name: str, alias: str, seq: int) -> list[tuple[AliasState, str]]:
        return [(state, sha) for state, sha in self.later if (state.seq or 0) > seq]

    def signed_removals(self, model_name: str, version: str) -> list[tuple[str, str]]:
        path = f"/models/{_segment(model_name, 'model name')}/versions/{_segment(version, 'version')}/removals"
        found = self.client.request("GET", path)["removals"]
        return [(str(at), str(sig)) for at, sig in found if isinstance(at, str) and isinstance(sig, str)]


class SigningMixin:
    """Signed alias moves, their checks, re-signing and the event feed for
    :class:`~modelkeep.api.client.HttpRegistry`."""

    url: str
    options: dict[str, Any]

    @property
    def keyring(self) -> Keyring:  # pragma: no cover - HttpRegistry's (a cached property)
        raise NotImplementedError

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def get_version(  # pragma: no cover - HttpRegistry's
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> ModelMetadata:
        raise NotImplementedError

    def list_models(self) -> list[str]:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    # -- settings ---------------------------------------------------------------------------------
    @cached_property
    def trusted_releasers(self) -> tuple[str, ...]:
        """Fingerprints (or 16+ hex digit prefixes) of the keys whose alias moves this client trusts
        (``trusted_releasers=``, else ``MODELKEEP_TRUSTED_RELEASERS``); when set, every load through
        an alias requires a move signed by one of them."""
        from ..config import persistence_defaults

        found = persistence_defaults(trusted_releasers=self.options.get("trusted_releasers"))["trusted_releasers"]
        return tuple(r.strip().lower() for r in found or () if r.strip())

    def _mover_fingerprint(self) -> str | None:
        """The fingerprint of the key this client signs alias moves with (``None``: HMAC or none)."""
        from ..keys import PrivateKey

        key = self.keyring.signer()
        return key.fingerprint if isinstance(key, PrivateKey) else None

    def _freshness(self, later: Iterable[tuple[AliasState, str]] = ()) -> Freshness:
        """The rollback checks of this server's loads, with what this user has seen of it (in
        its own config folder; the server is named by its URL)."""
        from ..freshness import Freshness, SeenMarks
        from ..keys import config_dir

        marks = SeenMarks(config_dir() / "seen", f"server={self.url}")
        return Freshness(self.keyring, _Served(self, later), marks)  # type: ignore[arg-type]

    def forget_seen(self, model_name: str | None = None) -> None:
        """Forget which versions and alias moves this user has seen on this server (one model, or
        all): "latest" and aliases are then trusted again as they are (see :mod:`modelkeep.freshness`)."""
        self._freshness().marks.forget(None if model_name is None else validate_model_name(model_name))

    # -- checking aliases -------------------------------------------------------------------------
    def _checked_alias(
        self, model_name: str, alias: str, *, version: str | None = None, require: bool = False, found: Any = None
    ) -> tuple[ModelMetadata, Verdict]:
        """The record ``alias`` points at, after its move was judged with this client's keys
        (``found``: what ``GET .../state`` answers, when the caller has it already)."""
        from ..errors import IntegrityError

        model_name, alias = validate_model_name(model_name), validate_alias(alias)
        if found is None:
            path = f"/models/{_segment(model_name, 'model name')}/aliases/{_segment(alias, 'alias')}/state"
            found = self.request("GET", path)
        state = _state(found.get("state") if isinstance(found, dict) else None)
        record = record_from_wire(found["record"])
        if record.model_name != model_name or record.version != state.version or record.artifact is None:
            raise IntegrityError(
                f"the server answered alias '{alias}' of model '{model_name}' with the record of model "
                f"'{record.model_name}' version '{record.version}', not of the version the alias points at"
            )
        if version is not None and state.version != version:
            raise InvalidNameError(
                f"alias '{alias}' of model '{model_name}' points at version '{state.version}', not '{version}'"
            )
        moves = [m for m in found.get("later") or () if isinstance(m, dict)]
        later = [(_state(m.get("state")), str(m.get("sha256"))) for m in moves]
        verdict = self._freshness(later).check_alias(
            record, alias, state, require=require, releasers=self.trusted_releasers
        )
        return record, verdict

    def verify_alias(self, model_name: str, alias: str, *, version: str | None = None) -> Verdict:
        """Check that ``alias`` points where it does by a move signed with a key THIS client
        trusts (as ``load(..., require_signed_alias=True)`` does, without loading); with
        ``version``, also that it points there. Raises :class:`SignatureError` or
        :class:`RollbackError`; the server's keys play no part."""
        name = validate_model_name(model_name)
        return self._checked_alias(name, alias, version=version, require=True)[1]

    # -- moving aliases ---------------------------------------------------------------------------
    def set_alias(self, model_name: str, alias: str, version: str, *, expected: str | None = None) -> None:
        """Point ``alias`` at a live ``version`` (with ``expected``: compare-and-set). With a
        signing key here, the move is signed here (the key never leaves this client)."""
        path = f"/models/{_segment(model_name, 'model name')}/aliases/{_segment(alias, 'alias')}"
        key = self.keyring.signer()
        if key is None:
            self.request("PUT", path, json={"version": version, "expected": expected})
            return
        from ..keys import PrivateKey
        from ..signing import sign_event

        public = key.public.pem().decode() if isinstance(key, PrivateKey) else None
        params = {"version": version} if expected is None else {"version": version, "expected": expected}
        for attempt in range(1, MOVE_ATTEMPTS + 1):
            plan = self.request("GET", path + "/plan", params=params)
            event = plan["event"]
            self._check_plan(event, model_name, alias, version, plan.get("record"))
            body = {
                "version": version,
                "expected": expected,
                "event": event,
                "signature": sign_event(event, key),
                "public_key": public,
            }
            try:
                self.request("POST", path + "/signed", json=body)
                return
            except AliasConflictError:
                if attempt == MOVE_ATTEMPTS:
                    raise

    def _check_plan(self, event: Any, model_name: str, alias: str, version: str, record: Any = None) -> None:
        """Refuse to sign anything but the move asked for, to the bytes the server serves for it
        (``record``: the version's record the plan came with, else it is asked for; either way
        it is the server's word, judged here with this client's keys)."""
        from ..events import ALIAS
        from ..signing import INVALID

        model_name, alias, version = validate_model_name(model_name), validate_alias(alias), validate_version(version)
        asked = {"event": ALIAS, "model_name": model_name, "alias": alias, "version": version}
        if not isinstance(event, dict) or any(event.get(k) != v for k, v in asked.items()):
            raise SignatureError(f"the server planned another alias move than the one asked for: {str(event)[:300]}")
        if set(event) != {*asked, "sha256", "seq", "from", "at"}:
            raise SignatureError(f"the server planned an alias move with unexpected fields: {sorted(event)}")
        found = self.get_version(model_name, version) if record is None else record_from_wire(record)
        if (found.model_name, found.version) != (model_name, version):
            raise SignatureError(
                f"the server planned the move of alias '{alias}' with the record of model '{found.model_name}' "
                f"version '{found.version}', not of version '{version}'"
            )
        if found.artifact is None or event.get("sha256") != found.artifact.sha256:
            raise SignatureError(
                f"the server planned the move of alias '{alias}' to bytes other than those of model "
                f"'{model_name}' version '{version}'"
            )
        if self.keyring.verdict(found).status == INVALID:
            raise SignatureError(
                f"model '{model_name}' version '{version}' has a signature that does not match (checked here): "
                "its record or bytes were altered; an alias is not moved to it"
            )

    # -- the trash ----------------------------------------------------------------------------------
    def delete(self, model_name: str, version: str, *, force: bool = False) -> None:
        """Move a version to the trash (``force``: even when an alias points at it). With a
        signing key here, the removal is signed here, so that readers who saw this version as
        the latest accept the one before it."""
        path = f"/models/{_segment(model_name, 'model name')}/versions/{_segment(version, 'version')}"
        key = self.keyring.signer()
        if key is None:
            self.request("DELETE", path, params={"force": "1"} if force else None)
            return
        from ..events import REMOVAL
        from ..keys import PrivateKey
        from ..signing import sign_event

        model_name, version = validate_model_name(model_name), validate_version(version)
        public = key.public.pem().decode() if isinstance(key, PrivateKey) else None
        for attempt in range(1, MOVE_ATTEMPTS + 1):
            event = self.request("GET", path + "/removal-plan")["event"]
            asked = {"event": REMOVAL, "model_name": model_name, "version": version}
            if (
                not isinstance(event, dict)
                or set(event) != {*asked, "sha256", "at"}
                or any(event.get(k) != v for k, v in asked.items())
            ):
                raise SignatureError(f"the server planned another removal than the one asked for: {str(event)[:300]}")
            body = {"force": bool(force), "event": event, "signature": sign_event(event, key), "public_key": public}
            try:
                self.request("POST", path + "/trash", json=body)
                return
            except AliasConflictError:
                if attempt == MOVE_ATTEMPTS:
                    raise

    # -- re-signing ---------------------------------------------------------------------------------
    def sign(
        self, model_name: str | None = None, version: str | None = None, *, include_untrusted: bool = False
    ) -> ResignReport:
        """Re-sign versions with this client's signing key (after a key rotation), as
        :meth:`ModelPersistence.sign` does: only versions that verify under a key trusted HERE
        (every one with ``include_untrusted``), after their bytes were downloaded and re-hashed
        here. The server stores each signature only if the manifest signed is the one it holds
        (admins only)."""
        from ..keys import PrivateKey
        from ..resign import ResignReport
        from ..signing import ECDSA_SCHEME, HMAC_SCHEME, manifest
        from ..storage.hashing import Expected
        from .client_transfers import VersionFiles

        key = self.keyring.signer()
        if key is None:
            raise SignatureError("no signing key: configure signing_key_file or signing_key, or allow the per-user key")
        private = key if isinstance(key, PrivateKey) else None
        report = ResignReport(signer="shared HMAC key" if private is None else private.public.label)
        if model_name is None:
            if version is not None:
                raise ValueError("a version needs a model name")
            records = [r for m in self.list_models() for r in self.list_version_records(m)]
        elif version is None:
            records = self.list_version_records(model_name)
        else:
            records = [self.get_version(model_name, validate_version(version))]
        identity = (HMAC_SCHEME, None) if private is None else (ECDSA_SCHEME, private.fingerprint)
        public = None if private is None else private.public.pem().decode()
        for record in records:
            if not report.to_sign(self.keyring, record, identity, include_untrusted):
                continue
            where = (record.model_name, record.version)
            art = record.artifact
            if art is None:
                report.skipped.append((*where, "no artifact"))
                continue
            VersionFiles(self, record).verify(art.key, Expected.of(art.sha256, art.size, art.extra))
            body = {"manifest": manifest(record), "signature": self.keyring.sign(record), "public_key": public}
            path = f"/models/{_segment(record.model_name)}/versions/{_segment(record.version)}/signature"
            try:
                self.request("PUT", path, json=body)
            except VersionExistsError:
                report.skipped.append((*where, "changed while signing; run again"))
                continue
            report.signed.append(where)
        return report

    # -- the event feed -----------------------------------------------------------------------------
    def event_horizon(self) -> int:
        """The server's largest committed event id: :meth:`events` from it yields what happens from now on."""
        return int(self.request("GET", "/events/horizon")["since"])

    def events(
        self,
        since: int | None = None,
        model: str | None = None,
        types: str | Iterable[str] | None = None,
        follow: bool = False,
        *,
        poll: float = 0.5,
        stop: threading.Event | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The server's history as event dicts, oldest first, after history id ``since``, as
        :meth:`ModelPersistence.events` (only the models this client's user may see). With
        ``follow``, asks again every ``poll`` seconds until ``stop`` is set."""
        patterns = types if types is None or isinstance(types, str) else ",".join(types)
        while True:
            params = {k: v for k, v in (("since", since), ("model", model), ("types", patterns)) if v is not None}
            page = self.request("GET", "/events", params=params)["events"]
            for event in page:
                yield event
                if isinstance(event.get("id"), int):
                    since = event["id"]
            if page:
                continue
            if not follow or (stop is not None and stop.is_set()):
                return
            if stop is not None:
                stop.wait(poll)
            else:
                time.sleep(poll)
