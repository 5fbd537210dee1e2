"""The modelkeep error hierarchy.

Every error raised on purpose by modelkeep derives from :class:`ModelKeepError`.
Each subclass also inherits the built-in exception a caller would naturally
catch, so ``except KeyError`` or ``except ValueError`` keeps working.
"""

from __future__ import annotations

import pickle
from typing import Any


class ModelKeepError(Exception):
    """Base class of every error modelkeep raises on purpose.

    ``cli`` maps the API spelling a message uses for a remedy (``overwrite=True``)
    to the command line's (``--overwrite``); :meth:`for_cli` applies it, so each
    interface tells the user what to type in that interface.
    """

    #: For an error about one item of :meth:`ModelPersistence.save_many`: its position in the
    #: items given (``None`` otherwise). See :func:`for_item`.
    item: int | None = None
    #: For an error from ``save_many``: the records of the batches registered before it.
    registered: tuple[Any, ...] = ()

    def __init__(self, *args: object, cli: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.cli_spelling: dict[str, str] = dict(cli or {})

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep it readable everywhere, and
        # without OSError's "[Errno N]" prefix (the message says what went wrong).
        if len(self.args) == 1:
            return str(self.args[0])
        if isinstance(self, OSError) and self.strerror:
            return str(self.strerror)
        return super().__str__()

    def for_cli(self) -> str:
        """The message with API spellings replaced by the CLI's."""
        text = str(self)
        for api, cli in getattr(self, "cli_spelling", {}).items():
            text = text.replace(api, cli)
        return text


class ModelNotFoundError(ModelKeepError, KeyError):
    """The model has no versions in the registry."""


class VersionNotFoundError(ModelNotFoundError):
    """The model exists but the requested version does not."""


class ArtifactNotFoundError(ModelKeepError, FileNotFoundError):
    """The index lists a version whose artifact file is missing ("Model file not found")."""


class RegistryNotFoundError(ModelKeepError, FileNotFoundError):
    """No registry exists at the configured location (and ``create=False``)."""


class AliasNotFoundError(ModelNotFoundError):
    """The model has no alias of that name."""


class VersionExistsError(ModelKeepError, FileExistsError):
    """The version is already registered and ``overwrite`` was not given."""


class AliasConflictError(ModelKeepError, ValueError):
    """A compare-and-set of an alias failed: it no longer points where the caller expected."""


class PermissionDeniedError(ModelKeepError, PermissionError):
    """The acting user's role (or an alias's protection) does not allow this change."""


class PolicyError(PermissionDeniedError):
    """An alias move breaks the alias's promotion policy (:mod:`modelkeep.policies`).

    ``failures`` lists ``(condition, what was seen)`` for each condition that failed; the
    message names them all.
    """

    def __init__(
        self, message: str, failures: list[tuple[str, str]] | None = None, *, cli: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, cli=cli)
        self.failures: list[tuple[str, str]] = list(failures or [])


class UserNotFoundError(ModelKeepError, KeyError):
    """No user of that name (``modelkeep users list`` shows who exists)."""


class AuthenticationError(ModelKeepError, PermissionError):
    """A user name, password or API token was not accepted."""


class VersionInUseError(ModelKeepError, ValueError):
    """The version cannot be deleted: an alias points at it (pass ``force=True`` to remove the alias too)."""


class VersionTrashedError(VersionExistsError):
    """The version is in the trash: restore it, or purge it before saving that version again."""


class SaveInProgressError(VersionExistsError):
    """Another save (or delete) of this exact version holds its write claim right now."""


class InvalidNameError(ModelKeepError, ValueError):
    """A model name or version string is empty, too long, or unsafe."""


class MetadataError(ModelKeepError, ValueError):
    """Metadata that cannot be stored as JSON."""


class ConfigError(ModelKeepError, ValueError):
    """An invalid configuration value; the message names the key and the allowed values."""


class IncompatibleRegistryError(ConfigError):
    """The registry was written by a newer modelkeep (index schema or file format): upgrade to open it."""


class FilterError(ModelKeepError, ValueError):
    """A search filter or ``order_by`` that does not parse, or names an unknown field.

    ``position`` is the 0-based character offset the problem was found at
    (``None`` when it concerns the whole filter, such as an unknown field).
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class IntegrityError(ModelKeepError, ValueError):
    """An artifact does not match the digest recorded when it was saved."""


class UnsafeKeyError(IntegrityError):
    """A key or blob id read from the index or a sidecar would leave the store: an absolute path,
    ``..``, or a symbolic link inside a local store. Someone else wrote that entry; it is refused."""


class SignatureError(IntegrityError):
    """A version's manifest signature is missing or does not verify with the key."""


class RollbackError(SignatureError):
    """ "latest" or an alias resolves to an older signed version than this reader has already
    seen in the same registry, with no signed removal of the newer one: the index was rolled back."""


class UnsafeModelError(IntegrityError, pickle.UnpicklingError):
    """The artifact references a global that modelkeep refuses to load.

    ``refused`` names the ``module.qualname`` globals or types that were refused (empty when
    the refusal is not about a name that could be trusted), so a remedy can name them.
    """

    refused: tuple[str, ...] = ()


class SerializationError(ModelKeepError, TypeError):
    """The object could not be serialized or deserialized in the chosen format."""


class StorageError(ModelKeepError, OSError):
    """The artifact store failed (disk full, permission denied, network error)."""


class ConnectionLostError(StorageError):
    """The database connection dropped before the transaction committed, so nothing was written.

    Reads and whole write transactions are retried on a fresh connection when
    this happens; a drop while committing is a :class:`CommitUnknownError`
    because the outcome is then unknown.
    """


class ClaimLostError(StorageError):
    """This save's write claim on its version is gone (``gc`` released it as stale); nothing was registered."""


class CommitUnknownError(StorageError):
    """The connection dropped while committing and the outcome could not be read back.

    ``records``: when a save (or a ``save_many`` batch) raises it, the version records whose
    commit may or may not have landed, so that the caller can tell, once the database answers,
    whether each exists (``get_version`` holds that record's SHA-256 if it does; ``gc`` settles
    the claim). Empty for other writes.
    """

    records: tuple[Any, ...] = ()


class BackendUnavailableError(ModelKeepError, ImportError):
    """An optional backend was requested but its package is not installed."""


class FormatVersionError(SerializationError):
    """An artifact or sidecar was written by a newer modelkeep, in a protocol this one cannot read."""


class BatchItemError(ModelKeepError, ValueError):
    """One item given to :meth:`ModelPersistence.save_many` is not something that can be saved
    (not a mapping or ``SaveItem``, no model, an unknown field...); ``.item`` is its position."""


def for_item(exc: BaseException, position: int, model_name: object) -> ModelKeepError:
    """``exc`` again (same class when it is a modelkeep error, else :class:`BatchItemError`), its
    message prefixed with the batch item it is about: ``items[3] (model 'churn_0042'): ...``."""
    text = f"items[{position}] (model {model_name!r}): {exc}"
    new: ModelKeepError
    if isinstance(exc, ModelKeepError):
        try:
            new = type(exc)(text, cli=exc.cli_spelling)
        except TypeError:  # a subclass with a constructor of its own
            new = BatchItemError(text)
    else:
        new = BatchItemError(text)
    new.item = position
    return new


def no_versions(model_name: str, known_models: list[str] | None = None) -> ModelNotFoundError:
    """The error for a model with no versions ("No versions found for model 'x'"), suggesting close names."""
    from .suggest import did_you_mean

    return ModelNotFoundError(
        f"No versions found for model '{model_name}'{did_you_mean(model_name, known_models or [])}"
    )


__all__ = [
    "AliasConflictError",
    "AliasNotFoundError",
    "ArtifactNotFoundError",
    "BackendUnavailableError",
    "BatchItemError",
    "ClaimLostError",
    "CommitUnknownError",
    "ConfigError",
    "ConnectionLostError",
    "FormatVersionError",
    "FilterError",
    "IntegrityError",
    "InvalidNameError",
    "MetadataError",
    "ModelKeepError",
    "ModelNotFoundError",
    "RegistryNotFoundError",
    "SaveInProgressError",
    "SerializationError",
    "SignatureError",
    "StorageError",
    "UnsafeModelError",
    "VersionExistsError",
    "VersionInUseError",
    "VersionNotFoundError",
    "VersionTrashedError",
    "no_versions",
]


class InputSchemaError(ModelKeepError, ValueError):
    """Data does not fit a version's input signature; ``.result`` is the ``InputCheck``."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class RequestError(ModelKeepError, ValueError):
    """A request to ``modelkeep server`` that it cannot read: a missing or mistyped argument."""


class UploadTooLargeError(RequestError):
    """A body sent to ``modelkeep server`` (an upload, a blob, a bundle) is larger than the server's
    ``server.max_upload_bytes`` (``modelkeep server --max-upload-size``); answered with HTTP 413."""


class ServerError(ModelKeepError, RuntimeError):
    """``modelkeep server`` failed on a request with an error of its own (HTTP 500): a bug in
    modelkeep on the server, not in the request. The server's log holds the traceback, under the
    incident id the message names."""


class ServerOnlyError(ConfigError, AttributeError):
    """What a client of ``modelkeep server`` cannot do (``gc``, ``reindex``, the store itself...):
    it runs on the server's host. An ``AttributeError`` too, so ``hasattr`` says no."""


class WebhookNotFoundError(ModelKeepError, KeyError):
    """No webhook (or delivery) with that id in this registry."""
