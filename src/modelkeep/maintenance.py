"""Registry maintenance: ``verify``, ``gc`` and ``reindex``.

The store keeps three kinds of files under its root:

* ``<model>/<version>/...``: each version's artifact and its sidecar
  ``<model>_v<version>_metadata.json`` (the record, as JSON);
* ``.blobs/<xx>/<sha256>``: content-addressed buffers of the ``native`` format;
* ``.tmp/...``: staged files of saves in progress, or left by a crash.

Anything else under the root (the SQLite index beside the models, for
example) is not touched. A crash at any point of a save leaves at most files
that no index entry names; :func:`collect_garbage` removes them and
:func:`verify_registry` reports them as *orphaned*. The index itself is never
left naming a missing or half-written artifact.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactNotFoundError,
    IntegrityError,
    InvalidNameError,
    MetadataError,
    ModelKeepError,
    SaveInProgressError,
    SignatureError,
    UnsafeKeyError,
    no_versions,
)
from .index.claims import ClaimInfo, lease_seconds, list_claims, owner_is_dead, settle_version
from .layout import (
    BLOB_DIR,
    blob_digest,
    blob_key,
    check_blob_id,
    is_temporary,
    record_blobs,
    referenced_keys,
    sidecar_bytes,
    sidecar_key,
    version_dir,
)
from .metadata import ModelMetadata
from .storage.hashing import Expected
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .registry import ModelPersistence
    from .storage import ArtifactStore

logger = logging.getLogger("modelkeep")

#: Kinds of :class:`Problem`.
MISSING = "missing"
"""The index lists a version whose artifact (or one of its blobs) is not in the store."""
CORRUPT = "corrupt"
"""An artifact or blob does not hash to the digest recorded at save."""
SIGNATURE = "signature"
"""The manifest signature does not verify, or signatures are required and it is missing or untrusted."""
SIDECAR = "sidecar"
"""A version's sidecar metadata file is missing or disagrees with the index (``reindex`` would be wrong)."""
UNSAFE = "unsafe"
"""An index entry or sidecar names a key outside the store, a bad blob id, or a symbolic link in a
local store: someone else wrote it. Nothing is read, written or deleted through it."""
ORPHANED = "orphaned"
"""A file no index entry names: a staged temp file, or an artifact, sidecar or blob of no version."""
DAMAGED = "damaged"
"""An index row that cannot be read as written (a record, history value, alias or tag that is not
valid JSON or has the wrong type): listings show it as damaged instead of failing."""
EVENT = "event"
"""The history and the store's event files disagree: a row whose file is missing or wrong, or a
file no row names (left by a change that never committed). ``gc`` repairs both."""
CLAIM = "claim"
"""A version's write claim left by a writer that died, or held for longer than :data:`CLAIM_REPORT_AGE`."""

#: ``verify`` reports write claims older than this (seconds); younger ones are saves in progress.
CLAIM_REPORT_AGE = 300.0


@dataclass(frozen=True)
class Problem:
    """One thing :func:`verify_registry` found wrong."""

    kind: str
    key: str
    detail: str
    model_name: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "model_name": self.model_name,
            "version": self.version,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        where = f"{self.model_name} {self.version}: " if self.model_name else ""
        return f"{self.kind}: {where}{self.key}: {self.detail}"


@dataclass
class VerifyReport:
    """The result of :func:`verify_registry`; ``ok`` when nothing was found."""

    versions_checked: int = 0
    blobs_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: versions per signature status (``trusted``, ``unsigned``, ``untrusted``) that passed the check
    signatures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every artifact is present and intact, and nothing is orphaned."""
        return not self.problems

    def of_kind(self, *kinds: str) -> list[Problem]:
        """The problems of the given kinds (``MISSING``, ``CORRUPT``, ...)."""
        return [p for p in self.problems if p.kind in kinds]

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for p in self.problems:
            counts[p.kind] += 1
        return {
            "ok": self.ok,
            "versions_checked": self.versions_checked,
            "blobs_checked": self.blobs_checked,
            "bytes_checked": self.bytes_checked,
            "counts": dict(sorted(counts.items())),
            "signatures": dict(sorted(self.signatures.items())),
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass(frozen=True)
class Leftover:
    """A file :func:`collect_garbage` removed (or would remove, or kept because it is young)."""

    key: str
    reason: str
    size: int
    age_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "reason": self.reason, "size": self.size, "age_seconds": self.age_seconds}


@dataclass
class GcReport:
    """The result of :func:`collect_garbage`.

    ``removed`` lists what was removed (with ``dry_run``: what would be);
    ``kept`` lists leftovers younger than ``min_age_seconds`` (they may belong
    to a save in progress); ``repaired`` lists sidecars rewritten from the
    index; ``errors`` lists files that could not be removed.
    """

    dry_run: bool
    min_age_seconds: float
    removed: list[Leftover] = field(default_factory=list)
    kept: list[Leftover] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: ``(model, version)`` purged from the trash first (``purge_deleted_older_than``).
    purged: list[tuple[str, str]] = field(default_factory=list)
    released_claims: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every leftover old enough was removed (or, dry run, could be)."""
        return not self.errors

    @property
    def bytes_freed(self) -> int:
        return sum(item.size for item in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "min_age_seconds": self.min_age_seconds,
            "bytes_freed": self.bytes_freed,
            "removed": [item.to_dict() for item in self.removed],
            "kept": [item.to_dict() for item in self.kept],
            "repaired": list(self.repaired),
            "errors": list(self.errors),
            "purged": [list(item) for item in self.purged],
            "released_claims": list(self.released_claims),
        }


# -- helpers ------------------------------------------------------------------------------


def _size(store: ArtifactStore, key: str) -> int:
    try:
        return store.size(key)
    except OSError:
        return 0


def _who(record: ModelMetadata) -> tuple[str, str]:
    return record.model_name, record.version


def _sidecar_matches(store: ArtifactStore, record: ModelMetadata) -> str | None:
    """``None`` if the sidecar holds exactly ``record``, else what is wrong with it."""
    key = sidecar_key(record.model_name, record.version)
    try:
        raw = store.read_bytes(key)
    except UnsafeKeyError as exc:
        return f"the sidecar metadata file is not readable safely: {exc}"
    except (ArtifactNotFoundError, FileNotFoundError):
        return "the sidecar metadata file is missing; reindex would lose this version"
    try:
        found = ModelMetadata.from_dict(json.loads(raw)).to_dict()
    except (ValueError, MetadataError) as exc:
        return f"the sidecar metadata file is not valid: {exc}"
    if found != record.to_dict():
        return "the sidecar metadata file disagrees with the index (run gc to rewrite it from the index)"
    return None


# -- verify ---------------------------------------------------------------------------------


def verify_registry(p: ModelPersistence, model_name: str | None = None) -> VerifyReport:
    """Re-hash every artifact (and blob) and report what is missing, corrupt or orphaned.

    Also checks each version's signature with ``p``'s keys (see :meth:`Keyring.check`), and that
    each sidecar metadata file matches the index (``reindex`` relies on them).
    With ``model_name``, only that model's versions and folder are checked
    (:class:`ModelNotFoundError` if it has neither).
    """
    if model_name is not None:
        model_name = validate_model_name(model_name)
    store = p.store
    report = VerifyReport()
    checked = [row for row in p.index.iter_checked_records() if model_name in (None, row.model_name)]
    records = [row.record for row in checked]
    referenced: set[str] = set()
    used_blobs: dict[str, int] = {}
    blob_owners: dict[str, list[ModelMetadata]] = defaultdict(list)
    for record, bound_model, bound_version, unbound in checked:
        report.versions_checked += 1
        if record.damaged:
            row = f"index row of {record.model_name} {record.version}"
            report.problems.append(Problem(DAMAGED, row, record.damaged, *_who(record)))
            continue
        try:
            referenced |= referenced_keys(record)
        except UnsafeKeyError as exc:
            report.problems.append(Problem(UNSAFE, str(exc), "the index names a key outside the store", *_who(record)))
            continue
        if unbound is not None:  # a record replayed into another row: its bytes are not that row's
            kind = SIGNATURE if isinstance(unbound, SignatureError) else CORRUPT
            key = record.artifact.key if record.artifact else sidecar_key(record.model_name, record.version)
            report.problems.append(Problem(kind, key, str(unbound), bound_model, bound_version))
            continue
        report.problems.extend(_check_record(p, record, report))
        for sha, size in record.artifact.extra.get("blobs", []) if record.artifact else []:
            try:
                check_blob_id(str(sha))
            except UnsafeKeyError as exc:
                report.problems.append(Problem(UNSAFE, str(sha), str(exc), *_who(record)))
                continue
            used_blobs[str(sha)] = int(size)
            blob_owners[str(sha)].append(record)

    for sha in sorted(used_blobs):
        report.blobs_checked += 1
        key = blob_key(sha)
        owners = blob_owners[sha]
        try:
            store.verify(key, sha)
            report.bytes_checked += used_blobs[sha]
        except ArtifactNotFoundError:
            report.problems.extend(Problem(MISSING, key, "blob is missing", r.model_name, r.version) for r in owners)
        except IntegrityError as exc:
            report.problems.extend(Problem(CORRUPT, key, str(exc), r.model_name, r.version) for r in owners)

    for what, row_model, row_version, why in p.index.lifecycle.damaged_rows(model_name):
        report.problems.append(Problem(DAMAGED, what, why, row_model, row_version))

    keys = store.list_keys(model_name or "")
    held = {(c.model_name, c.version): c for c in list_claims(p.index, model_name)}
    if model_name is not None and not records and not keys and not held:
        raise no_versions(model_name)
    busy: set[tuple[str, str]] = set()
    for (claim_model, claim_version), claim in sorted(held.items()):
        if owner_is_dead(claim.owner) or claim.age_seconds() >= CLAIM_REPORT_AGE:
            why = "its writer died" if owner_is_dead(claim.owner) else "a save still running, or its writer died"
            detail = f"write claim held: {claim} ({why}; gc releases it once older than --min-age)"
            report.problems.append(Problem(CLAIM, f"{claim_model}/{claim_version}", detail, claim_model, claim_version))
        else:
            busy.add((claim_model, claim_version))  # a save in progress is writing this folder
    if model_name is None:
        all_used = p.index.referenced_blobs() | set(used_blobs)
        for key in keys:
            if is_temporary(key):
                report.problems.append(Problem(ORPHANED, key, "temporary file left by an interrupted save"))
            elif (sha := blob_digest(key)) is not None and sha not in all_used:
                report.problems.append(Problem(ORPHANED, key, "blob no version uses"))
    for key in keys:
        where = version_dir(key)
        if where is not None and key not in referenced and where not in busy:
            report.problems.append(Problem(ORPHANED, key, "no index entry names this file", *where))
    report.problems.extend(_event_problems(p, model_name))
    return report


def _event_problems(p: ModelPersistence, model_name: str | None) -> list[Problem]:
    from .eventcheck import compare, describe
    from .eventlog import key_of

    diff = compare(p, model_name)
    out = [
        Problem(
            EVENT, key_of(row), f"history row {describe(row)}: {why}", str(row.row["model_name"]), row.row["version"]
        )
        for row, why in diff.unwritten
    ]
    out.extend(Problem(EVENT, key, why) for key, why in diff.orphaned)
    return out


def _check_record(p: ModelPersistence, record: ModelMetadata, report: VerifyReport) -> list[Problem]:
    name, version = record.model_name, record.version
    art = record.artifact
    out: list[Problem] = []
    if art is None:
        return [Problem(MISSING, sidecar_key(name, version), "the index entry names no artifact", name, version)]
    try:
        p.store.verify(art.key, Expected.of(art.sha256, art.size, art.extra))
        report.bytes_checked += art.size
    except UnsafeKeyError as exc:
        return [Problem(UNSAFE, art.key, str(exc), name, version)]
    except ArtifactNotFoundError:
        out.append(Problem(MISSING, art.key, "artifact file is missing", name, version))
    except IntegrityError as exc:
        out.append(Problem(CORRUPT, art.key, str(exc), name, version))
    try:
        verdict = p.keyring.check(record)
        report.signatures[verdict.status] = report.signatures.get(verdict.status, 0) + 1
    except SignatureError as exc:
        out.append(Problem(SIGNATURE, art.key, str(exc), name, version))
    wrong = _sidecar_matches(p.store, record)
    if wrong is not None:
        out.append(Problem(SIDECAR, sidecar_key(name, version), wrong, name, version))
    return out


# -- gc -------------------------------------------------------------------------------------


def _abandoned_uploads(
    store: Any, now: float, min_age_seconds: float, report: GcReport, claims: dict[tuple[str, str], ClaimInfo]
) -> list[tuple[Leftover, Callable[[], None]]]:
    """Multipart uploads under the store's root that no save completed or aborted (a killed
    process leaves them: billed, and invisible in listings), with the call that aborts each;
    those younger than ``min_age_seconds`` go to ``report.kept`` (a save may be uploading).
    An upload straight to a version's folder is as young as the version's claim (some S3
    implementations report a fixed start date), and is always kept while that claim is live."""
    pending = getattr(store, "pending_uploads", None)
    if pending is None:
        return []
    try:
        found = pending()
    except ModelKeepError as exc:
        report.errors.append(f"multipart uploads: {exc}")
        return []
    out: list[tuple[Leftover, Callable[[], None]]] = []
    for upload in found:
        age = now - float(upload["initiated"])
        claim = claims.get(tuple(str(upload["key"]).split("/")[:2]))  # type: ignore[arg-type]
        live = False
        if claim is not None:
            held_for = claim.age_seconds(now)
            age = min(age, held_for)
            live = held_for < lease_seconds() and not owner_is_dead(claim.owner)
        item = Leftover(
            f"{upload['key']} (upload {upload['upload_id']})",
            "multipart upload an interrupted save never completed",
            int(upload["size"]),
            round(age, 3),
        )
        if live or (min_age_seconds > 0 and age < min_age_seconds):
            report.kept.append(item)
            continue
        out.append((item, functools.partial(store.abort_upload, upload["key"], upload["upload_id"])))
    return out


def collect_garbage(p: ModelPersistence, *, dry_run: bool = False, min_age_seconds: float = 3600.0) -> GcReport:
    """Remove crash leftovers: staged temp files, and artifacts, sidecars and blobs no version uses.

    Files younger than ``min_age_seconds`` are kept (a save may be writing
    them). Files in a version folder are re-checked and removed while holding
    that model's write lock, and blobs under the blob lock, so a save that
    commits concurrently never loses a file. Sidecars that disagree with the
    index (left by a crash during an overwrite) are rewritten from the index.
    ``dry_run`` only reports.
    """
    store = p.store
    report = GcReport(dry_run=dry_run, min_age_seconds=min_age_seconds)
    now = time.time()

    def old_enough(key: str, reason: str) -> Leftover | None:
        age = store.age_seconds(key, now)
        item = Leftover(key, reason, _size(store, key), None if age is None else round(age, 3))
        if min_age_seconds > 0 and (age is None or age < min_age_seconds):
            report.kept.append(item)
            return None
        return item

    records = [row.record for row in p.index.iter_checked_records()]  # keep every file any row names
    referenced: set[str] = set()
    for record in records:
        referenced |= referenced_keys(record)

    temporary: list[Leftover] = []
    blob_candidates: dict[str, Leftover] = {}
    per_dir: dict[tuple[str, str], list[Leftover]] = defaultdict(list)
    used_blobs = p.index.referenced_blobs()
    for key in store.list_keys():
        if is_temporary(key):
            if (item := old_enough(key, "temporary file left by an interrupted save")) is not None:
                temporary.append(item)
        elif (sha := blob_digest(key)) is not None:
            if sha not in used_blobs and (item := old_enough(key, "blob no version uses")) is not None:
                blob_candidates[sha] = item
        elif (
            (where := version_dir(key)) is not None
            and key not in referenced
            and (item := old_enough(key, "no index entry names this file")) is not None
        ):
            per_dir[where].append(item)
    stale_sidecars = {(r.model_name, r.version) for r in records if _sidecar_matches(store, r) is not None}
    stale_claims = {
        (c.model_name, c.version): c
        for c in list_claims(p.index)
        if c.age_seconds(now) >= max(min_age_seconds, lease_seconds()) or owner_is_dead(c.owner)
    }

    claims_now = {(c.model_name, c.version): c for c in list_claims(p.index)}
    uploads = _abandoned_uploads(store, now, min_age_seconds, report, claims_now)

    if dry_run:
        report.removed.extend(item for item, _ in uploads)
        report.removed.extend(temporary)
        for items in per_dir.values():
            report.removed.extend(items)
        report.removed.extend(blob_candidates.values())
        report.repaired.extend(sidecar_key(*where) for where in sorted(stale_sidecars))
        report.released_claims.extend(str(c) for _, c in sorted(stale_claims.items()))
        return report

    for item, abort in uploads:
        try:
            abort()
            report.removed.append(item)
        except ModelKeepError as exc:
            report.errors.append(f"{item.key}: {exc}")
    for item in temporary:
        _remove(store, item, report)
    _repair_events(p, report)
    for where in sorted(set(per_dir) | stale_sidecars | set(stale_claims)):
        _cleanversion_dir(p, where, per_dir.get(where, []), where in stale_sidecars, report, now)
    if blob_candidates:

        def remove_blobs(shas: list[str]) -> None:
            for sha in shas:
                _remove(store, blob_candidates[sha], report)

        try:
            p.index.release_blobs(set(blob_candidates), remove_blobs)
        except ModelKeepError as exc:
            report.errors.append(f"blobs: {exc}")
        store.remove_empty_dirs(BLOB_DIR)
    logger.info(
        "gc removed %d file(s) (%d bytes), kept %d young one(s), repaired %d sidecar(s)",
        len(report.removed),
        report.bytes_freed,
        len(report.kept),
        len(report.repaired),
    )
    return report


def _repair_events(p: ModelPersistence, report: GcReport) -> None:
    """Make the event files agree with the history (see :mod:`modelkeep.eventcheck`)."""
    from .eventcheck import repair

    try:
        removed, written = repair(p)
    except ModelKeepError as exc:
        report.errors.append(f"event files: {exc}")
        return
    report.removed.extend(Leftover(key, "event file of a change that never committed", 0, None) for key in removed)
    report.repaired.extend(written)
    if removed or written:
        logger.info("gc: removed %d event file(s), wrote %d from the history", len(removed), len(written))


def _remove(store: ArtifactStore, item: Leftover, report: GcReport) -> None:
    try:
        store.delete(item.key, missing_ok=True)
        report.removed.append(item)
    except OSError as exc:
        report.errors.append(f"{item.key}: {exc}")


def _cleanversion_dir(
    p: ModelPersistence,
    where: tuple[str, str],
    leftovers: list[Leftover],
    repair_sidecar: bool,
    report: GcReport,
    now: float,
) -> None:
    """Under the model's write lock: release the version's write claim if it is stale, remove
    ``leftovers`` the index still does not name, and rewrite the sidecar from the index if it
    is stale. A live claim means a save is writing there: its files are kept."""
    model_name, version = where

    def clean(current: ModelMetadata | None) -> None:
        keep = referenced_keys(current) if current is not None else set()
        for item in leftovers:
            if item.key not in keep:
                _remove(p.store, item, report)
        if repair_sidecar and current is not None and _sidecar_matches(p.store, current) is not None:
            key = sidecar_key(model_name, version)
            p.store.write_bytes(key, sidecar_bytes(current))
            report.repaired.append(key)

    try:
        released = settle_version(
            p.index, model_name, version, min_age_seconds=report.min_age_seconds, clean=clean, now=now
        )
    except SaveInProgressError:
        report.kept.extend(leftovers)
        return
    except ModelKeepError as exc:
        report.errors.append(f"{model_name}/{version}: {exc}")
        return
    if released is not None:
        report.released_claims.append(str(released))
    p.store.remove_empty_dirs(f"{model_name}/{version}")


# -- reindex --------------------------------------------------------------------------------


def rebuild_index(p: ModelPersistence) -> int:
    """Rebuild the index from the store: versions from the sidecar metadata files, and aliases,
    tags, descriptions, the trash and the history from the event files; returns the number of
    versions indexed.

    For disaster recovery (a lost or damaged index) and after moving a store
    (artifact keys are relative to the store root, so they stay valid). History rows the
    current index has that are not in the store yet (an older release's, or files lost) are
    written out first (files no row names are kept: ``gc`` removes those); then the index is
    replaced. Each history row comes back with its number, time and actor, and one ``reindex``
    row per model is added. A sidecar is skipped, with a warning,
    when it is unreadable, sits in the wrong folder, names an artifact outside its version
    folder, or its artifact (or a blob) is missing; an event file when it is unreadable or its
    signature is refused (invalid, or not trusted while signatures are required). Digests are
    not re-checked here (run :func:`verify_registry` afterwards); loading still checks them,
    and a signing key still guards every version. Run it while no one is saving to the registry.
    """
    from .eventcheck import repair
    from .eventlog import read_events
    from .index.replay import rebuild

    store = p.store
    try:
        repair(p, remove_orphans=False)  # rows of the current index the store lacks
    except ModelKeepError as exc:  # a damaged index: rebuild from what the store has
        logger.warning("reindex: could not write out the current history first: %s", exc)
    records: list[ModelMetadata] = []
    for key in store.list_keys():
        where = version_dir(key)
        if where is None or not key.endswith("_metadata.json") or key != sidecar_key(*where):
            continue
        record = _read_sidecar(store, key, *where)
        if record is not None:
            records.append(record)
    records.sort(key=lambda r: (r.created_at, r.updated_at, r.model_name, r.version))
    events, refused = read_events(store, p.keyring)
    for item in refused:
        logger.warning("reindex: skipping %s: %s", store.display_path(item.key), item.why)
    rebuild(p.index, records, events)
    logger.info("reindex: %d version(s) and %d history row(s) from the store", len(records), len(events))
    return len(records)


def _read_sidecar(store: ArtifactStore, key: str, model_name: str, version: str) -> ModelMetadata | None:
    def skip(why: str) -> None:
        logger.warning("reindex: skipping %s: %s", store.display_path(key), why)

    try:
        validate_model_name(model_name)
        validate_version(version)
        record = ModelMetadata.from_dict(json.loads(store.read_bytes(key)))
    except (ValueError, InvalidNameError, MetadataError, TypeError) as exc:
        skip(f"not a valid metadata file: {exc}")
        return None
    if (record.model_name, record.version) != (model_name, version):
        skip(f"it describes {record.model_name} {record.version}, not the folder it is in")
        return None
    art = record.artifact
    if art is None:
        skip("it names no artifact")
        return None
    if not art.key.startswith(f"{model_name}/{version}/") or art.key.count("/") != 2 or ".." in art.key:
        skip(f"its artifact key {art.key!r} is outside its version folder")
        return None
    try:
        if not store.exists(art.key):
            skip("its artifact is missing (a save that never committed)")
            return None
        missing = [sha for sha in record_blobs(record) if not store.exists(blob_key(sha))]
    except UnsafeKeyError as exc:  # a bad blob id, or a symbolic link in the store
        skip(str(exc))
        return None
    if missing:
        skip(f"{len(missing)} of its blobs are missing")
        return None
    return record
