"""The modelkeep error hierarchy.

Every error raised on purpose by modelkeep derives from :class:`ModelKeepError`.
Each subclass also inherits the built-in exception a caller would naturally
catch, so ``except KeyError`` or ``except ValueError`` keeps working.
"""

from __future__ import annotations

import pickle


class ModelKeepError(Exception):
    """Base class of every error modelkeep raises on purpose."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep it readable everywhere, and
        # without OSError's "[Errno N]" prefix (the message says what went wrong).
        if len(self.args) == 1:
            return str(self.args[0])
        if isinstance(self, OSError) and self.strerror:
            return str(self.strerror)
        return super().__str__()


class ModelNotFoundError(ModelKeepError, KeyError):
    """The model has no versions in the registry."""


class VersionNotFoundError(ModelNotFoundError):
    """The model exists but the requested version does not."""


class ArtifactNotFoundError(ModelKeepError, FileNotFoundError):
    """The index lists a version whose artifact file is missing ("Model file not found")."""


class RegistryNotFoundError(ModelKeepError, FileNotFoundError):
    """No registry exists at the configured location (and ``create=False``)."""


class VersionExistsError(ModelKeepError, FileExistsError):
    """The version is already registered and ``overwrite`` was not given."""


class SaveInProgressError(VersionExistsError):
    """Another save (or delete) of this exact version holds its write claim right now."""


class InvalidNameError(ModelKeepError, ValueError):
    """A model name or version string is empty, too long, or unsafe."""


class MetadataError(ModelKeepError, ValueError):
    """Metadata that cannot be stored as JSON."""


class ConfigError(ModelKeepError, ValueError):
    """An invalid configuration value; the message names the key and the allowed values."""


class IntegrityError(ModelKeepError, ValueError):
    """An artifact does not match the digest recorded when it was saved."""


class SignatureError(IntegrityError):
    """A version's manifest signature is missing or does not verify with the key."""


class UnsafeModelError(IntegrityError, pickle.UnpicklingError):
    """The artifact references a global that modelkeep refuses to load."""


class SerializationError(ModelKeepError, TypeError):
    """The object could not be serialized or deserialized in the chosen format."""


class StorageError(ModelKeepError, OSError):
    """The artifact store failed (disk full, permission denied, network error)."""


class ClaimLostError(StorageError):
    """This save's write claim on its version is gone (``gc`` released it as stale); nothing was registered."""


class CommitUnknownError(StorageError):
    """The connection dropped while committing and the outcome could not be read back."""


class BackendUnavailableError(ModelKeepError, ImportError):
    """An optional backend was requested but its package is not installed."""


__all__ = [
    "ArtifactNotFoundError",
    "BackendUnavailableError",
    "ClaimLostError",
    "CommitUnknownError",
    "ConfigError",
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
    "VersionNotFoundError",
]
