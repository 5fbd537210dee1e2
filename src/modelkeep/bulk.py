"""Saving many versions in few transactions: :meth:`BulkSaveMixin.save_many` of ``ModelPersistence``.

A team that keeps a model per customer saves thousands of small models at once. Each version gets
what :meth:`~modelkeep.ModelPersistence.save` gives it (its artifact ``fsync``'ed before its row
commits, a signed record, a sidecar, a history row, its event file), but a batch is serialized on
a few threads, claimed in one transaction (``index.claims.take_many``), its files placed with one
``fsync`` per folder, and its rows committed in one transaction, whole or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import lineage, saving
from .errors import MetadataError, ModelKeepError, VersionExistsError, for_item
from .identity import acting_as
from .layout import artifact_key, sidecar_bytes, sidecar_key
from .metadata import ModelMetadata, SaveItem, to_json_safe, utc_now
from .versions import validate_model_name, validate_version

if TYPE_CHECKING:
    from .formats import Format
    from .identity import AccessPolicy, Identity
    from .index import SqlIndex
    from .signing import Keyring
    from .storage import ArtifactStore, StagedArtifact

logger = logging.getLogger("modelkeep")

#: Threads that serialize and ``fsync`` a ``save_many`` batch's files.
BULK_THREADS = 4


@dataclass(frozen=True)
class _BulkItem:
    """One checked item of :meth:`BulkSaveMixin.save_many`, ready to serialize."""

    position: int
    model: Any
    model_name: str
    version: str | None
    fmt: Format
    compression: str | None
    custom: dict[str, Any]
    signature: dict[str, Any] | None
    created_at: str | None


class BulkSaveMixin:
    """``save_many`` for :class:`~modelkeep.ModelPersistence` (which provides what is declared here)."""

    if TYPE_CHECKING:
        store: ArtifactStore
        keyring: Keyring
        access: AccessPolicy
        format: Format
        compression: str | None
        compress: Any
        trusted_types: list[str]
        _progress: Any

        @property
        def index(self) -> SqlIndex: ...

        def ensure_registry(self) -> SqlIndex: ...
        def _who(self) -> Identity | None: ...
        def _blobs(self, fmt: Format) -> Any: ...
        def _blobs_check(self, extra: dict[str, Any]) -> Callable[[], None] | None: ...
        def _attempt_files(self, slot: Any, key: str) -> list[str]: ...
        def _remove_quietly(self, key: str) -> None: ...
        def _drop_duplicate(self, staged: StagedArtifact) -> None: ...
        def _write_sidecar(self, record: ModelMetadata) -> None: ...

    def save_many(
        self,
        items: Iterable[SaveItem | Mapping[str, Any]],
        *,
        serialization_format: str | None = None,
        compress: Any = None,
        batch_size: int = 256,
    ) -> list[ModelMetadata]:
        """Save many new versions (a model per customer, say) in few transactions; their records,
        in the order given.

        Each item is a :class:`SaveItem` or a mapping with ``model`` and ``model_name`` (and
        optionally ``version``, ``metadata``, ``created_at``; other keys are custom metadata,
        as ``save``'s keyword arguments are): ``{"model": m, "model_name": "churn_0042",
        "auc": 0.91}``. Every version gets what :meth:`save` gives it: its artifact ``fsync``'ed
        before its row commits, a signed record, a sidecar, a history row and its event file;
        ``version=None`` takes the model's next patch version. What changes is the cost: every
        item is checked before anything is written, then each ``batch_size`` items are claimed
        in one transaction, their files written with one ``fsync`` per folder, and their rows
        committed in one transaction, whole or not at all, with a single git lookup for the call.

        A bad item (no model, a bad name, a version given twice or already saved, an object
        the format cannot store) raises the usual error class, its message starting with the
        item (``items[3] (model 'churn_0042'): ...``, position in ``.item``); nothing of its
        batch is registered and that batch's files are removed. Batches before it stay
        registered (``.registered`` on the error lists their records). Overwrites, training
        data fingerprints and parents are :meth:`save`'s.
        """
        from . import input_signature

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MetadataError(f"batch_size must be a positive integer, got {batch_size!r}")
        prepared: list[_BulkItem] = []
        seen: dict[tuple[str, str], int] = {}
        for position, raw in enumerate(items):
            name: object = raw.get("model_name") if isinstance(raw, Mapping) else getattr(raw, "model_name", None)
            try:
                item = SaveItem.of(raw)
                name = validate_model_name(item.model_name)
                version = None if item.version is None else validate_version(item.version)
                if version is not None:
                    first = seen.setdefault((name, version), position)
                    if first != position:
                        raise VersionExistsError(f"version '{version}' is also items[{first}]")
                self.access.require(self._who(), "writer", "save versions", name)
                fmt, compression = saving.choose_format(
                    self.format, self.compression, self.compress, serialization_format, compress, item.model
                )
                custom = saving.custom_metadata(item.model, item.metadata)
                try:
                    signature = input_signature.infer(item.model, None)
                except TypeError as exc:
                    raise MetadataError(str(exc)) from exc
                prepared.append(
                    _BulkItem(
                        position,
                        item.model,
                        name,
                        version,
                        fmt,
                        compression,
                        custom,
                        to_json_safe(signature, "input_signature"),
                        item.created_at,
                    )
                )
            except Exception as exc:
                raise for_item(exc, position, name) from exc
        if not prepared:
            return []
        self.ensure_registry()
        git = lineage.finish_git(lineage.start_git())  # one lookup for the whole call
        saved: list[ModelMetadata] = []
        with acting_as(self._who()):  # the history names who saved
            for start in range(0, len(prepared), batch_size):
                try:
                    saved.extend(self._save_batch(prepared[start : start + batch_size], git))
                except ModelKeepError as exc:
                    exc.registered = tuple(saved)  # the earlier batches, committed whole
                    raise
        return saved

    def _save_batch(self, batch: list[_BulkItem], git: dict[str, Any] | None) -> list[ModelMetadata]:
        """One batch of :meth:`save_many`: stage every artifact, claim every version in one
        transaction, write the files, commit every row in one transaction."""
        from .index.claims import check_many, put_many, take_many

        started = time.perf_counter()
        staged = [self.store.stage() for _ in batch]
        sidecars: list[StagedArtifact] = []
        try:
            # Serialize on a few threads: each artifact's fsync waits for the disk while the next
            # one is pickled, and a disk journals concurrent fsyncs together.
            with ThreadPoolExecutor(max_workers=BULK_THREADS, thread_name_prefix="modelkeep-bulk") as pool:
                dumps = [pool.submit(self._dump, item, st) for item, st in zip(batch, staged, strict=True)]
                drafts: list[ModelMetadata] = []
                for item, dumped in zip(batch, dumps, strict=True):
                    try:
                        drafts.append(dumped.result())
                    except Exception as exc:
                        pool.shutdown(cancel_futures=True)
                        raise for_item(exc, item.position, item.model_name) from exc
            extras = [draft.artifact.extra if draft.artifact else {} for draft in drafts]
            slots = take_many(self.index, [(item.model_name, item.version) for item in batch])
            records: list[ModelMetadata] = []
            try:
                now = utc_now()
                for item, slot, draft in zip(batch, slots, drafts, strict=True):
                    assert draft.artifact is not None
                    key = artifact_key(slot.model_name, slot.version, item.fmt.extension(item.compression))
                    record = dataclasses.replace(
                        draft,
                        version=slot.version,
                        created_at=item.created_at or now,
                        updated_at=now,
                        artifact=dataclasses.replace(draft.artifact, key=key),
                        lineage=lineage.capture(git=git),
                    )
                    record.signature = self.keyring.sign(record)
                    records.append(record)
                with ThreadPoolExecutor(max_workers=BULK_THREADS, thread_name_prefix="modelkeep-bulk") as pool:
                    pending = [pool.submit(self._stage_sidecar, record) for record in records]
                for future in pending:  # every one kept, so a failure discards them all
                    if future.exception() is None:
                        sidecars.append(future.result())
                for future in pending:
                    future.result()  # the first failure, raised
                check_many(self.index, slots)
                stored = self.index.find_artifacts({st.sha256 for st in staged})  # identical bytes: share them
                duplicates: list[StagedArtifact] = []  # dropped once the rows are committed (not beside the syncs)
                with self.store.one_folder_sync():  # each version's folder fsync'ed once, before the commit
                    for record, st, sidecar in zip(records, staged, sidecars, strict=True):
                        assert record.artifact is not None
                        sidecar.commit(sidecar_key(record.model_name, record.version))
                        same = stored.get(st.sha256)
                        if same and self.store.link(same, record.artifact.key):
                            duplicates.append(st)
                        else:
                            st.commit(record.artifact.key)
                            stored.setdefault(st.sha256, record.artifact.key)
                checks = [c for e in extras if (c := self._blobs_check(e)) is not None]

                def check_blobs() -> None:
                    for check in checks:
                        check()

                put_many(self.index, slots, records, before_commit=check_blobs if checks else None)
            except BaseException:
                for item, slot in zip(batch, slots, strict=True):
                    key = artifact_key(slot.model_name, slot.version, item.fmt.extension(item.compression))
                    slot.abandon(self._attempt_files(slot, key), self._remove_quietly, self._write_sidecar)
                raise
            for st in duplicates:
                self._drop_duplicate(st)
        finally:
            for st in (*staged, *sidecars):
                st.discard()  # what was not committed (a failed batch's): gc removes what this misses
        logger.info(
            "saved %d versions in one batch (%d bytes) in %.1f ms",
            len(records),
            sum(st.size for st in staged),
            (time.perf_counter() - started) * 1000,
        )
        return records

    def _dump(self, item: _BulkItem, staged: StagedArtifact) -> ModelMetadata:
        """Serialize one item into ``staged`` (hashed as it streams, ``fsync``'ed when done): its draft
        record (:func:`modelkeep.saving.serialize`); the batch's one git lookup is added later."""
        no_lineage: dict[str, Any] = {"data_fingerprint": None, "target_fingerprint": None, "parent": None}
        with self._progress(f"saving {item.model_name}", None) as advance:
            return saving.serialize(
                item.model,
                item.model_name,
                item.fmt,
                item.compression,
                staged,
                advance,
                custom=item.custom,
                described=(item.signature, no_lineage, None),
                blobs=self._blobs(item.fmt),
                trusted_types=self.trusted_types,
            )

    def _stage_sidecar(self, record: ModelMetadata) -> StagedArtifact:
        """The record's sidecar written under ``.tmp/`` and ``fsync``'ed, to be committed later."""
        st = self.store.stage()
        with st.open() as out:
            out.write(sidecar_bytes(record))
        return st
