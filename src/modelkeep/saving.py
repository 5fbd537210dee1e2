"""The first half of a save, which needs no index: choose the format, describe the model,
and serialize it to a staged file whose digests are known.

:meth:`ModelPersistence.save_version` runs it against its own store, then claims a version
and commits (:meth:`ModelPersistence.commit_staged`). A client of a registry server
(:mod:`modelkeep.api.client_transfers`) runs the same steps against a local scratch store,
uploads the staged bytes, signs the record with its own key, and asks the server to commit.
The result is a *draft*: a :class:`ModelMetadata` whose version, key and times are not set yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import environment, lineage
from .errors import MetadataError, ModelKeepError, SerializationError
from .formats import Format, get_format
from .formats._restricted import warn_untrusted_globals
from .metadata import ArtifactInfo, ModelMetadata, to_json_safe
from .params import PARAMS_KEY
from .params import capture as capture_params
from .storage.hashing import BLAKE3_KEY, Advance

if TYPE_CHECKING:
    from .blobs import BlobStore
    from .storage import StagedArtifact

#: ``lookup(model_name, version)``: a version's record, or :class:`VersionNotFoundError`.
Lookup = Callable[[str, str], Any]


def choose_format(
    default: Format, default_compression: str | None, default_compress: Any, name: str | None, compress: Any, model: Any
) -> tuple[Format, str | None]:
    """The format and codec of one save: the registry's unless ``name``/``compress`` say otherwise;
    ``"auto"`` picks the safest format that stores ``model`` (formats/frameworks.py)."""
    fmt = default if name is None else get_format(name)
    compression = (
        default_compression
        if compress is None and name is None
        else fmt.normalize_compression(default_compress if compress is None else compress)
    )
    if fmt.name == "auto":
        from .formats.frameworks import resolve_auto

        fmt, compression = resolve_auto(model, default_compress if compress is None else compress)
    from .loading import refuse_unloadable

    refuse_unloadable(model, fmt.name)
    return fmt, compression


def custom_metadata(model: Any, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The version's custom metadata, JSON-safe, with the model's parameters captured."""
    custom = to_json_safe(dict(metadata or {}))
    if PARAMS_KEY not in custom:
        custom = {**capture_params(model), **custom}
    return custom


def describe(
    model: Any,
    model_name: str,
    input_example: Any,
    training_data: Any,
    training_target: Any,
    parent: str | None,
    lookup: Lookup,
) -> tuple[dict[str, Any] | None, dict[str, Any], lineage.PendingGit | None]:
    """The input signature, the lineage parts and the git state being read for a save
    (modelkeep.input_signature, modelkeep.lineage.PendingGit); git runs while the model is serialized.
    ``lookup`` checks that ``parent`` exists."""
    from . import input_signature

    try:
        signature = input_signature.infer(model, input_example)
    except TypeError as exc:
        raise MetadataError(str(exc)) from exc
    parent_ref = None
    if parent is not None:
        parent_ref = lineage.parse_parent(parent, model_name)
        lookup(*parent_ref)  # VersionNotFoundError when the parent does not exist
    parts = {
        "data_fingerprint": lineage.fingerprint(training_data) if training_data is not None else None,
        "target_fingerprint": lineage.fingerprint(training_target) if training_target is not None else None,
        "parent": parent_ref,
    }
    return to_json_safe(signature, "input_signature"), parts, lineage.start_git()


def serialize(
    model: Any,
    model_name: str,
    fmt: Format,
    compression: str | None,
    staged: StagedArtifact,
    advance: Advance,
    *,
    custom: dict[str, Any],
    described: tuple[dict[str, Any] | None, dict[str, Any], lineage.PendingGit | None],
    blobs: BlobStore | None,
    trusted_types: list[str],
    git_later: bool = False,
) -> ModelMetadata:
    """Serialize ``model`` into ``staged`` (hashed as it streams) and return the draft record:
    everything but the version, the artifact key, the times and the signature.

    ``git_later``: the git state is still being read when this returns (on the helper thread,
    started once the model was serialized); the draft's lineage leaves it out until
    :func:`with_git` adds it, so the caller can claim its version meanwhile."""
    from .loading import warn_main_globals

    with staged.open(advance) as out:
        try:
            extra = fmt.dump(model, out, compression, blobs=blobs) or {}
            extra.update(fmt.protocol_record())
        except ModelKeepError:
            raise
        except OSError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot serialize {type(model).__name__} with {fmt.name}: {exc}") from exc
        if described[2] is not None:  # a kept git status is checked while the file is fsync'ed
            described[2].overlap()
    if staged.blake3 is not None:
        extra[BLAKE3_KEY] = staged.blake3
    signature, lineage_parts, git = described
    lineage_record = lineage.capture(**lineage_parts, git=None if git_later else lineage.finish_git(git))
    env = environment.capture(model, environment.modules_of(extra, fmt.name))
    warn_main_globals(extra)
    warn_untrusted_globals(extra, trusted_types, f"model '{model_name}'")
    return ModelMetadata(
        model_name=model_name,
        model_type=type(model).__name__,
        version="",
        created_at="",
        updated_at="",
        metadata=custom,
        artifact=ArtifactInfo("", fmt.name, compression, staged.size, staged.sha256, extra),
        environment=env,
        input_signature=signature,
        lineage=lineage_record,
    )


def with_git(
    draft: ModelMetadata, described: tuple[dict[str, Any] | None, dict[str, Any], lineage.PendingGit | None]
) -> ModelMetadata:
    """``draft`` (from :func:`serialize` with ``git_later``) with the git state in its lineage,
    waiting for it if it is still being read. Only the git field of the draft's lineage is
    set: the rest was captured once, by :func:`serialize`."""
    git = lineage.finish_git(described[2])
    if git is None:
        return draft
    return dataclasses.replace(draft, lineage=lineage.with_git(draft.lineage, git))
