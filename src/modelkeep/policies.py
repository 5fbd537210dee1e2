"""Promotion policies: the conditions a version must meet before an alias may point at it.

A :class:`Policy` names a model (or a glob of model names, ``churn*``) and an alias, and any of:

* ``filter``: an expression in the search grammar (``metrics.accuracy >= 0.92``) the version
  must match, evaluated by the search compiler, so it means exactly what ``search`` means;
* ``require_signature``: the public keys (stored in the policy, by fingerprint) of which one
  must have signed the version;
* ``require_input_signature``: the version records an input signature;
* ``approvals``: how many approvals of this version (of these very bytes) for this alias, by
  users other than the one who saved it;
* ``allowed``: the users, or signing-key fingerprints, that may move the alias.

:meth:`modelkeep.index.lifecycle.Lifecycle.set_alias` checks every policy that matches inside
the transaction that moves the alias (:mod:`modelkeep.index.policies`), so the library, the
command line, the UI and ``serve`` all obey the same rules; a move that breaks one raises
:class:`~modelkeep.errors.PolicyError` naming each failed condition and the value seen.

This module holds the policy itself and the judgement; it does no I/O.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InvalidNameError, PolicyError
from .versions import validate_alias

if TYPE_CHECKING:
    from .keys import PublicKey
    from .metadata import ModelMetadata

#: The history actions of policy changes and approvals (what event consumers map).
POLICY_SET = "policy_set"
POLICY_DELETE = "policy_delete"
APPROVE = "approve"
MAX_GLOB = 128
#: A model name (letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit) in which
#: ``*``, ``?`` and ``[...]`` may stand for characters; never a path (no ``/``, no leading ``.``).
_GLOB = re.compile(r"[A-Za-z0-9*?\[][A-Za-z0-9._\-*?\[\]!]*")


def validate_model_glob(model: object) -> str:
    """``model`` as a policy's model name or glob (``churn``, ``churn*``, ``team-[ab]-*``);
    :class:`InvalidNameError` otherwise. A glob is also a folder name in the store's event
    files, so it is held to model names' characters plus the glob's own."""
    if not isinstance(model, str) or len(model.strip()) > MAX_GLOB or not _GLOB.fullmatch(model.strip()):
        raise InvalidNameError(
            f"policy model must be a model name or a glob of one (letters, digits, '.', '_', '-' and "
            f"'*', '?', '[...]', starting with a letter, digit or glob character; at most {MAX_GLOB}), "
            f"got {model!r}"
        )
    return model.strip()


@dataclass(frozen=True)
class Policy:
    """The rules for moving ``alias`` of the models ``model`` (a glob) names."""

    model: str
    alias: str
    filter: str | None = None
    #: fingerprint -> PEM public key: the version must be signed by one of them.
    require_signature: dict[str, str] = field(default_factory=dict)
    require_input_signature: bool = False
    approvals: int = 0
    allowed: tuple[str, ...] = ()
    updated_at: str | None = None
    updated_by: str | None = None

    def conditions(self) -> dict[str, Any]:
        """The conditions as stored (JSON-able); only those that are set."""
        out: dict[str, Any] = {}
        if self.filter:
            out["filter"] = self.filter
        if self.require_signature:
            out["require_signature"] = dict(sorted(self.require_signature.items()))
        if self.require_input_signature:
            out["require_input_signature"] = True
        if self.approvals:
            out["approvals"] = self.approvals
        if self.allowed:
            out["allowed"] = list(self.allowed)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The policy for ``--json`` output and the history (keys shown by fingerprint only)."""
        shown = self.conditions()
        if self.require_signature:
            shown["require_signature"] = sorted(self.require_signature)
        return {
            "model": self.model,
            "alias": self.alias,
            "conditions": shown,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }

    def matches(self, model_name: str) -> bool:
        """Whether this policy governs ``model_name``."""
        from fnmatch import fnmatchcase

        return fnmatchcase(model_name, self.model)

    def describe(self) -> list[str]:
        """One line per condition, for people."""
        lines = []
        if self.filter:
            lines.append(f"filter: {self.filter}")
        if self.require_signature:
            lines.append(f"require_signature: one of {', '.join(fp[:16] for fp in sorted(self.require_signature))}")
        if self.require_input_signature:
            lines.append("require_input_signature: yes")
        if self.approvals:
            lines.append(f"approvals: {self.approvals}")
        if self.allowed:
            lines.append(f"allowed: {', '.join(self.allowed)}")
        return lines or ["(no conditions)"]


def from_row(model: str, alias: str, conditions: str, updated_at: str, updated_by: str) -> Policy:
    """A stored policy; a row that cannot be read is a policy nothing passes (fail closed)."""
    try:
        data = json.loads(conditions)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return make_policy(model, alias, updated_at=updated_at, updated_by=updated_by, **_stored(data))
    except (ValueError, TypeError, ConfigError) as exc:
        return Policy(model, alias, filter=f"damaged policy row ({exc})", updated_at=updated_at, updated_by=updated_by)


def _stored(data: dict[str, Any]) -> dict[str, Any]:
    known = {"filter", "require_signature", "require_input_signature", "approvals", "allowed"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown conditions {', '.join(sorted(unknown))}")
    out = dict(data)
    if isinstance(out.get("require_signature"), dict):
        out["require_signature"] = list(out["require_signature"].values())
    return out


def _public_key(spec: Any) -> PublicKey:
    from .keys import PublicKey, load_public_key, public_key_from_pem

    if isinstance(spec, PublicKey):
        return spec
    if isinstance(spec, bytes) or (isinstance(spec, str) and "-----BEGIN" in spec):
        return public_key_from_pem(spec.encode() if isinstance(spec, str) else spec, "a require_signature key")
    if isinstance(spec, (str, os.PathLike)):
        return load_public_key(spec)
    raise InvalidNameError(f"require_signature takes public keys (files, PEM text), not {type(spec).__name__}")


def make_policy(
    model: str,
    alias: str,
    *,
    filter: str | None = None,
    require_signature: Iterable[Any] | None = None,
    require_input_signature: bool = False,
    approvals: int = 0,
    allowed: Iterable[str] | None = None,
    updated_at: str | None = None,
    updated_by: str | None = None,
) -> Policy:
    """A validated :class:`Policy`; ``require_signature`` takes public key files, PEM text or
    :class:`~modelkeep.keys.PublicKey` objects. :class:`InvalidNameError` for a bad argument,
    :class:`~modelkeep.errors.FilterError` for a filter that does not parse."""
    from .search.grammar import parse_filter, unparse

    model = validate_model_glob(model)
    alias = validate_alias(alias)
    if filter is not None and not filter.strip():
        filter = None
    if filter is not None:
        filter = unparse(parse_filter(filter))
    if isinstance(approvals, bool) or not isinstance(approvals, int) or not 0 <= approvals <= 100:
        raise InvalidNameError(f"approvals must be a whole number from 0 to 100, got {approvals!r}")
    keys = {k.fingerprint: k.pem().decode() for k in map(_public_key, require_signature or ())}
    given = [allowed] if isinstance(allowed, str) else list(allowed or ())
    if not all(isinstance(a, str) and a.strip() and len(a) <= 256 for a in given):
        raise InvalidNameError("allowed takes non-empty user names or key fingerprints")
    names = tuple(dict.fromkeys(a.strip() for a in given))
    return Policy(
        model.strip(), alias, filter, keys, bool(require_input_signature), approvals, names, updated_at, updated_by
    )


@dataclass
class MoveFacts:
    """What a policy judges a move by (gathered in the move's transaction)."""

    record: ModelMetadata
    #: Who moves the alias (the history's actor) and the fingerprint of the key signing the move.
    mover: str
    fingerprint: str | None
    #: Who saved the version (the history's ``save``/``overwrite`` actor), ``None`` if unknown.
    author: str | None
    #: Users who approved these bytes of the version for this alias.
    approvers: list[str]
    #: Whether the version matches a filter (the search compiler, in the same transaction).
    matches: Callable[[str], bool]


def _seen_fields(record: ModelMetadata, expression: str) -> str:
    """``name = value`` of every field ``expression`` mentions, as this version has it."""
    from .index.rows import scalar_fields
    from .search.compile import field_names
    from .search.grammar import format_value, parse_filter

    values = scalar_fields(record.metadata)
    art = record.artifact
    builtins: dict[str, Any] = {
        "model_name": record.model_name,
        "version": record.version,
        "model_type": record.model_type,
        "format": art.format if art else None,
        "size": art.size if art else None,
        "created_at": record.created_at,
        "alias": ", ".join(record.aliases) or None,
    }
    shown = []
    for name in field_names(parse_filter(expression)):
        if name in builtins:
            value: Any = builtins[name]
        elif name.startswith("tags."):
            value = record.tags.get(name[5:])
        else:
            value = values.get(name, values.get(name[8:]) if name.startswith("metrics.") else None)
        shown.append(f"{name} = {'(missing)' if value is None else format_value(value)}")
    return ", ".join(shown)


def judge(policy: Policy, facts: MoveFacts) -> list[tuple[str, str]]:
    """``(condition, what was seen)`` for each condition of ``policy`` the move breaks."""
    from .errors import FilterError
    from .keys import names_key
    from .signing import verdict

    failed: list[tuple[str, str]] = []
    record = facts.record
    if policy.filter:
        try:
            ok = facts.matches(policy.filter)
            seen = _seen_fields(record, policy.filter)
        except FilterError as exc:
            ok, seen = False, str(exc)
        if not ok:
            failed.append((f"filter {policy.filter}", seen))
    if policy.require_signature:
        from .keys import public_key_from_pem

        trusted = {fp: public_key_from_pem(pem.encode()) for fp, pem in policy.require_signature.items()}
        found = verdict(record, trusted=trusted)
        if not found.trusted:
            wanted = ", ".join(fp[:16] for fp in sorted(trusted))
            failed.append((f"require_signature (one of {wanted})", found.reason))
    if policy.require_input_signature and record.input_signature is None:
        failed.append(("require_input_signature", "the version has no input signature"))
    if policy.approvals:
        counted = sorted({a for a in facts.approvers if a != facts.author})
        seen = f"{len(counted)} approval{'s' if len(counted) != 1 else ''}"
        if counted:
            seen += f" ({', '.join(counted)})"
        if facts.author is not None and facts.author in facts.approvers:
            seen += f"; {facts.author} saved this version, so their own approval does not count"
        if len(counted) < policy.approvals:
            failed.append((f"approvals {policy.approvals}", seen))
    if policy.allowed:
        ok = any(a == facts.mover or names_key(a, facts.fingerprint) for a in policy.allowed)
        if not ok:
            key = f" with key {facts.fingerprint[:16]}" if facts.fingerprint else " with no signing key"
            failed.append((f"allowed {', '.join(policy.allowed)}", f"moved by {facts.mover}{key}"))
    return failed


def refusal(model_name: str, alias: str, version: str, failures: list[tuple[str, str]]) -> PolicyError:
    """The error for a refused move: every failed condition and the value seen, on one line."""
    reasons = "; ".join(f"{condition}: seen {seen}" for condition, seen in failures)
    message = f"moving alias '{alias}' of model '{model_name}' to version '{version}' breaks its policy: {reasons}"
    cli: dict[str, str] = {}
    if any(condition.startswith("approvals") for condition, _ in failures):
        api = f"approve({model_name!r}, {version!r}, {alias!r})"
        message += f" (someone other than its author approves it: {api})"
        cli[api] = f"modelkeep approve {model_name} {version} --for {alias}"
    return PolicyError(message, failures, cli=cli)


@dataclass(frozen=True)
class MoveCheck:
    """Whether a move would pass its policies (``check_alias_move``), and why."""

    model_name: str
    alias: str
    version: str
    policies: list[Policy]
    failures: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        where = f"{self.model_name}@{self.alias} -> {self.version}"
        if not self.policies:
            return f"{where} would pass: no policy governs this alias"
        if self.ok:
            return f"{where} would pass: every condition holds ({'; '.join(self._conditions())})"
        reasons = "; ".join(f"{condition}: seen {seen}" for condition, seen in self.failures)
        return f"{where} would be refused: {reasons}"

    def _conditions(self) -> list[str]:
        return [line for p in self.policies for line in p.describe()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "alias": self.alias,
            "version": self.version,
            "ok": self.ok,
            "policies": [p.to_dict() for p in self.policies],
            "failures": [{"condition": c, "seen": s} for c, s in self.failures],
        }
