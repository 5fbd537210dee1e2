"""Record the deep parameters of versions saved before modelkeep 0.2 (``modelkeep backfill-params``).

modelkeep before 0.2 stored ``get_params(deep=False)``, with each nested estimator
(and list of steps) as its repr, so ``params.logisticregression__C`` of an older pipeline
cannot be searched. The index's schema upgrade cannot fix that: only the model
object knows its parameters, and opening a registry must not unpickle anything.
This maintenance step does, for the versions that need it
(:func:`modelkeep.params.looks_recorded_before_0_2`): it loads each one through
the normal :meth:`ModelPersistence.load` (signature, digests, allow-list, under
the reader's own trust settings), records :func:`modelkeep.params.capture` of the
loaded model, and rewrites the version's sidecar and index row (under the model's
write lock, with a ``backfill_params`` history row). A version that does not load
under the reader's trust is skipped and reported; one whose ``model_params`` were
given by hand at save is left as it is (and reported apart). The signature covers the artifact, not the metadata,
so signed versions stay signed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import MetadataError, ModelKeepError, VersionExistsError
from .layout import sidecar_bytes, sidecar_key
from .params import PARAMS_KEY, TRUNCATED_KEY, bounded, capture, looks_recorded_before_0_2, shallow_keys
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .metadata import ModelMetadata
    from .registry import ModelPersistence

logger = logging.getLogger("modelkeep")

#: The history action of a backfilled version.
HISTORY_ACTION = "backfill_params"


@dataclass(frozen=True)
class Skipped:
    """A version :func:`backfill_params` left as it was, and why (``cli_reason``: in the CLI's spelling)."""

    model_name: str
    version: str
    reason: str
    cli_reason: str

    def to_dict(self) -> dict[str, str]:
        return {"model_name": self.model_name, "version": self.version, "reason": self.reason}


@dataclass
class BackfillReport:
    """What :meth:`ModelPersistence.backfill_params` did (or, with ``dry_run``, would do).

    ``checked``: live versions looked at; ``updated``: ``(model, version)`` whose
    deep parameters were recorded; ``unchanged``: loaded, with nothing to add;
    ``given``: loaded, but their ``model_params`` were passed to ``save`` by hand
    (they differ from the model's ``get_params()``), so they are left as they are;
    ``skipped``: not loaded (refused under this reader's trust, corrupt, missing)
    or changed meanwhile, each with its reason. Versions whose parameters are
    already deep (or that have none) are only counted in ``checked``.
    """

    dry_run: bool = False
    checked: int = 0
    updated: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    given: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "checked": self.checked,
            "updated": [list(v) for v in self.updated],
            "unchanged": [list(v) for v in self.unchanged],
            "given": [list(v) for v in self.given],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def __str__(self) -> str:
        verb = "would record" if self.dry_run else "recorded"
        return (
            f"checked {self.checked} version(s): {verb} the deep parameters of {len(self.updated)}, "
            f"{len(self.unchanged)} unchanged, {len(self.given)} with parameters given at save, "
            f"{len(self.skipped)} skipped"
        )


class _Changed(Exception):
    """The version changed between its load and its rewrite (rolls the rewrite back)."""


#: Rewrites one version's record with the captured fields: in the index and store on a registry's host,
#: a request to :func:`rewrite_from_client`'s route through a server.
Rewrite = Callable[["ModelMetadata", dict[str, Any]], None]
#: What a client may send for one version (:func:`rewrite_from_client`): a JSON-encoded truncation report.
MAX_TRUNCATION_REPORT = 64 * 1024
#: Why a rewrite found the version changed since it was read.
CHANGED = "the version changed while its parameters were recorded; run again"


def backfill_params(
    p: Any,
    model_name: str | None = None,
    version: str | None = None,
    *,
    dry_run: bool = False,
    rewrite: Rewrite | None = None,
) -> BackfillReport:
    """Record deep parameters for the live versions that lack them; see the module docstring.

    ``p`` is a :class:`~modelkeep.registry.ModelPersistence` or a registry server's client: the
    versions are read and loaded through its public methods (a client loads with its own keys
    and allow-list), and each one is written by ``rewrite`` (by default in ``p``'s own index and store)."""
    write: Rewrite = rewrite if rewrite is not None else (lambda record, fields: _rewrite(p, record, fields))
    report = BackfillReport(dry_run=dry_run)
    for record in _records(p, model_name, version):
        report.checked += 1
        if not looks_recorded_before_0_2(record.metadata.get(PARAMS_KEY)):
            continue
        where = (record.model_name, record.version)
        try:
            model = p.load(record.model_name, record.version)  # verified, signature-checked, allow-listed
        except ModelKeepError as exc:
            report.skipped.append(Skipped(*where, str(exc), exc.for_cli()))
            continue
        if shallow_keys(model) != set(record.metadata[PARAMS_KEY]):
            report.given.append(where)  # not what modelkeep captured: the saver passed them by hand
            continue
        fields = capture(model)
        del model
        if not fields or all(record.metadata.get(k) == v for k, v in fields.items()):
            report.unchanged.append(where)
            continue
        if not dry_run:
            try:
                write(record, fields)
            except (_Changed, VersionExistsError) as exc:  # trashed, being saved or changed meanwhile
                reason = CHANGED if isinstance(exc, _Changed) else str(exc)
                report.skipped.append(Skipped(*where, reason, reason))
                continue
        report.updated.append(where)
    logger.info("backfill-params: %s", report)
    return report


def _records(p: Any, model_name: str | None, version: str | None) -> list[ModelMetadata]:
    if model_name is None:
        if version is not None:
            raise ValueError("a version needs a model name")
        return [r for name in p.list_models() for r in p.list_version_records(name)]
    if version is None:
        return p.list_version_records(validate_model_name(model_name))
    return [p.get_version(model_name, validate_version(version))]


def _rewrite(p: ModelPersistence, record: ModelMetadata, fields: dict[str, Any]) -> None:
    metadata = {k: v for k, v in record.metadata.items() if k != TRUNCATED_KEY} | fields
    updated = replace(record, metadata=metadata)
    with p.index.reserve(record.model_name, record.version, overwrite=True) as slot:
        now = slot.previous
        if now is None or now.to_dict() != record.to_dict():  # replaced meanwhile
            raise _Changed
        slot.history_action = HISTORY_ACTION
        p.store.write_bytes(sidecar_key(record.model_name, record.version), sidecar_bytes(updated))
        slot.put(updated)


def rewrite_from_client(p: ModelPersistence, model_name: str, version: str, fields: Any, expect: Any) -> None:
    """Record the deep parameters a registry server's client captured from its own load of a
    version (``modelkeep backfill-params`` through a server: the server never unpickles).

    The server cannot check that the client loaded the model, so it takes only what a backfill
    could have produced: the version must still read as ``expect`` (the record the client saw)
    and still have parameters in the shape of modelkeep before 0.2; ``fields`` holds
    ``model_params`` (bounded again here, as a save bounds them) and at most a truncation
    report, and the new parameters keep every name the old ones had. Anything else is a
    :class:`~modelkeep.errors.MetadataError`; a version changed since the client read it is a
    :class:`~modelkeep.errors.VersionExistsError` ("run again")."""
    record = p.get_version(validate_model_name(model_name), validate_version(version))
    if record.to_dict() != expect:
        raise VersionExistsError(f"{model_name} {version}: {CHANGED}")
    old = record.metadata.get(PARAMS_KEY)
    if not isinstance(old, dict) or not looks_recorded_before_0_2(old):
        raise MetadataError(f"{model_name} {version}: its parameters are not in the shape of modelkeep before 0.2")
    if not isinstance(fields, dict) or PARAMS_KEY not in fields or not set(fields) <= {PARAMS_KEY, TRUNCATED_KEY}:
        raise MetadataError(f"'fields' must hold {PARAMS_KEY!r} and at most {TRUNCATED_KEY!r}")
    params = fields[PARAMS_KEY]
    if not isinstance(params, dict) or not set(old) <= set(params):
        raise MetadataError(f"{PARAMS_KEY!r} must be an object keeping every parameter name recorded before")
    checked = bounded(params)
    truncated = fields.get(TRUNCATED_KEY)
    if truncated is not None:
        if not isinstance(truncated, dict) or len(json.dumps(truncated)) > MAX_TRUNCATION_REPORT:
            raise MetadataError(f"{TRUNCATED_KEY!r} must be an object of at most {MAX_TRUNCATION_REPORT} bytes")
        checked.setdefault(TRUNCATED_KEY, truncated)
    try:
        _rewrite(p, record, checked)
    except _Changed:
        raise VersionExistsError(f"{model_name} {version}: {CHANGED}") from None
