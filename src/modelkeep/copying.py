"""Copy models from one registry to another (``modelkeep copy``), for example local to team.

Artifacts are copied byte for byte, never re-serialized, so every digest
stays identical, and the index records are copied as they are (versions,
``created_at``/``updated_at``, metadata, environment, signature). Each
artifact is hashed while it streams out of the source and checked again in
the destination before its index entry is written, so a version either
arrives complete and verified or not at all. Replacing a version whose
artifact has the same key (``overwrite=True``) writes the new bytes under a
fresh revision key, as ``save(..., overwrite=True)`` does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, VersionExistsError
from .layout import artifact_extension, blob_key, revision_key
from .metadata import ModelMetadata
from .versions import validate_model_name

if TYPE_CHECKING:
    from .index.audit import HistoryRow
    from .registry import ModelPersistence, ProgressFactory
    from .storage import Advance, ArtifactStore, StagedArtifact

logger = logging.getLogger("modelkeep")


@dataclass
class CopyReport:
    """What :func:`copy_registry` did, as ``(model_name, version)`` pairs."""

    copied: list[tuple[str, str]] = field(default_factory=list)
    """Versions written to the destination (including the overwritten ones)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Versions the destination already had with the same SHA-256."""
    overwritten: list[tuple[str, str]] = field(default_factory=list)
    """Versions that replaced a different artifact (only with ``overwrite=True``)."""
    bytes_copied: int = 0
    """Artifact bytes uploaded (sidecars not counted)."""
    events_carried: int = 0
    """History rows (lifecycle events) added to the destination."""

    def __str__(self) -> str:
        return (
            f"copied {len(self.copied)} version(s) ({self.bytes_copied} bytes), "
            f"skipped {len(self.skipped)} already present, overwrote {len(self.overwritten)}"
            + (f", carried {self.events_carried} history row(s)" if self.events_carried else "")
        )


@contextlib.contextmanager
def _no_progress(_description: str, _total: int | None) -> Iterator[Advance]:
    yield lambda _n: None


def copy_registry(
    source: ModelPersistence,
    dest: ModelPersistence,
    *,
    models: Iterable[str] | None = None,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    with_aliases: bool = True,
    events: Callable[[str], bool] | None = None,
) -> CopyReport:
    """Copy every version of ``models`` (default: all models) from ``source`` to ``dest``.

    A version already in ``dest`` with the same SHA-256 is skipped. A version
    in ``dest`` with *different* bytes is a conflict: unless ``overwrite`` is
    true, :class:`VersionExistsError` is raised listing the conflicts before
    anything is copied. With a signing key on ``source``, signatures are
    checked before copying (records keep their signature, so ``dest`` must use
    the same key to load them).

    The source's history comes along (its event files are written in ``dest``): each row
    ``dest`` does not have yet, with its time and actor, and its effect on the versions copied
    (aliases, tags, descriptions, trash), so copying twice adds nothing. Without
    ``with_aliases`` alias moves are left out; ``events`` (an event id -> bool) picks the rows
    carried (a bundle's own, not the ones its staging registry added).

    Raises :class:`ModelNotFoundError` for a requested model that has no
    versions, :class:`IntegrityError` if a source artifact does not match its
    recorded digest (nothing is registered for it), and :class:`StorageError`
    when either store or index fails.
    """
    factory: ProgressFactory = progress or _no_progress
    names = source.list_models() if models is None else [validate_model_name(m) for m in models]
    plan: list[tuple[ModelMetadata, ModelMetadata | None]] = []
    conflicts: list[str] = []
    report = CopyReport()
    live = {name: source.list_version_records(name) for name in names}  # read once: checked, then planned
    damaged = [r for records in live.values() for r in records if r.damaged]
    for r in damaged:  # a signed record replayed into another row: its own SignatureError
        source.index.get(r.model_name, r.version)
    if damaged:
        shown = ", ".join(f"{r.model_name} {r.version} ({r.damaged})" for r in damaged[:5])
        raise IntegrityError(
            f"{len(damaged)} version(s) have a damaged index row: {shown}; nothing was copied "
            "(run modelkeep verify, and reindex to rebuild them from the sidecar files)"
        )
    dest.ensure_registry()  # a copy is a save: it may create the destination registry
    trashed: dict[str, list[str]] = {}  # model -> its trashed versions, oldest trash first
    for m, v, _at in source.index.lifecycle.trashed():
        trashed.setdefault(m, []).append(v)
    for name in names:
        # each trashed record fetched by its key: a pass over every record per model was
        # quadratic in the registry's size (600 versions of 300 models: half a copy's time)
        in_trash = [r for r in (source.index.get(name, v) for v in trashed.get(name, ())) if r is not None]
        for record in live[name] + in_trash:  # trashed versions come along, and the history trashes them
            existing = dest.index.get(record.model_name, record.version)
            if existing is not None and _same_bytes(existing, record):
                report.skipped.append((record.model_name, record.version))
            elif existing is not None and not overwrite:
                conflicts.append(f"{record.model_name} {record.version}")
            else:
                plan.append((record, existing))
    if conflicts:
        shown = ", ".join(conflicts[:10]) + (f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else "")
        raise VersionExistsError(
            f"{len(conflicts)} version(s) already exist in the destination with different bytes: {shown}; "
            "nothing was copied (pass overwrite=True to replace them)",
            cli={"overwrite=True": "--overwrite"},
        )
    for record, existing in plan:
        report.bytes_copied += _copy_version(source, dest, record, factory)
        report.copied.append((record.model_name, record.version))
        if existing is not None:
            report.overwritten.append((record.model_name, record.version))
    for name in names:
        carried = {v for m, v in report.copied + report.skipped if m == name}
        report.events_carried += carry_history(source, dest, name, carried, with_aliases=with_aliases, events=events)
    logger.info("copy from %r to %r: %s", source, dest, report)
    return report


def carry_history(
    source: ModelPersistence,
    dest: ModelPersistence,
    model_name: str,
    versions: set[str],
    *,
    with_aliases: bool,
    events: Callable[[str], bool] | None = None,
) -> int:
    """Append ``source``'s history of ``model_name`` to ``dest`` (rows it lacks), redoing their
    effects on ``versions`` only; returns how many rows were added."""
    from .index.replay import carry

    def skip(event: HistoryRow) -> bool:
        if events is not None and not events(event.event_id):
            return True
        return not with_aliases and event.row["action"] in ("alias_set", "alias_delete", "alias_resign")

    return carry(dest.index, model_name, source.index.history_rows(model_name), versions, skip=skip)


def _same_bytes(a: ModelMetadata, b: ModelMetadata) -> bool:
    return a.artifact is not None and b.artifact is not None and a.artifact.sha256 == b.artifact.sha256


def _copy_version(source: ModelPersistence, dest: ModelPersistence, record: ModelMetadata, progress: Any) -> int:
    """Copy one version's artifact, blobs, sidecar and index entry; returns the artifact's size."""
    art = record.artifact
    if art is None:
        raise IntegrityError(f"model '{record.model_name}' version '{record.version}' has no artifact")
    source.keyring.check(record)
    _copy_blobs(source.store, dest.store, art.extra.get("blobs") or [])
    where = f"{record.model_name} {record.version}"
    with dest.store.staged() as staged:
        with progress(f"copying {where}", art.size) as advance:
            _stream_into(source.store, art.key, staged, advance)
        _check(staged, art.sha256, art.size, source.store.display_path(art.key))
        with dest.index.claim(record.model_name, record.version, overwrite=True) as slot:
            copied = _for_dest(record, slot.previous, source, dest)
            key = copied.artifact.key  # type: ignore[union-attr]
            try:
                durable, duplicate = dest._write_claimed_files(slot, copied, staged)
                dest.store.verify(key, art.sha256)  # what is stored, not just what was sent
                # the row's COMMIT waits for the folder's fsync, as a save's does
                slot.put(copied, before_commit=dest._blobs_check(art.extra), history=False, files_durable=durable)
            except BaseException:
                slot.abandon(dest._attempt_files(slot, key), dest._remove_quietly, dest._write_sidecar)
                raise
            if duplicate:
                dest._drop_duplicate(staged)
            if slot.previous is not None:
                dest._remove_replaced_artifact(slot, copied)
    return art.size


def _for_dest(
    record: ModelMetadata, previous: ModelMetadata | None, source: ModelPersistence, dest: ModelPersistence
) -> ModelMetadata:
    """``record`` as it goes into ``dest``: unchanged, except that replacing a version whose
    artifact has the same key gets a fresh revision key (the old bytes stay valid until the
    commit), and then a signature is renewed with whichever registry's key is known."""
    art = record.artifact
    assert art is not None
    if previous is None or previous.artifact is None or previous.artifact.key != art.key:
        return record
    extension = artifact_extension(record.model_name, record.version, art.key)
    moved = replace(record, artifact=replace(art, key=revision_key(record.model_name, record.version, extension)))
    if record.signature:  # the key is signed: renew a trusted signature, drop one nobody here can vouch for
        signer = dest.keyring if dest.keyring.explicit else source.keyring
        moved.signature = signer.sign(moved) if source.keyring.verdict(record).trusted else None
    return moved


def _stream_into(src: ArtifactStore, key: str, staged: StagedArtifact, advance: Advance) -> None:
    with src.stream(key) as chunks, staged.open(advance) as out:
        for chunk in chunks:
            out.write(chunk)


def _check(staged: StagedArtifact, sha256: str, size: int, where: str) -> None:
    if staged.sha256 != sha256 or staged.size != size:
        raise IntegrityError(
            f"integrity check failed for {where}: SHA-256 is {staged.sha256[:16]}... ({staged.size} bytes), "
            f"recorded {sha256[:16]}... ({size} bytes); not copied"
        )


def _copy_blobs(src: ArtifactStore, dst: ArtifactStore, blobs: list[list[Any]]) -> None:
    """Copy the content-addressed blobs a record references that ``dst`` lacks, verified."""
    for sha, size in blobs:
        key = blob_key(str(sha))
        if dst.exists(key) and dst.size(key) == int(size):
            continue
        with dst.staged() as staged:
            _stream_into(src, key, staged, lambda _n: None)
            _check(staged, str(sha), int(size), src.display_path(key))
            staged.commit(key)
