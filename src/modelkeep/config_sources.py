"""Where settings come from, without validating them (no pydantic).

:mod:`modelkeep.config` reads and validates these sources; so does
:mod:`modelkeep.plain_settings`, without pydantic, for the command line's read-only
path (:mod:`modelkeep.cli_readonly`).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError

#: ``persistence.models_dir`` when nothing sets it.
DEFAULT_MODELS_DIR = "models"
#: The config file read when ``--config`` / ``config_path`` is not given, if it exists.
DEFAULT_CONFIG_FILE = "config.yaml"

#: environment variable -> (section, key)
ENV_VARS: dict[str, tuple[str, str]] = {
    "MODELKEEP_LOG_LEVEL": ("logging", "level"),
    "MODELKEEP_LOG_FILE": ("logging", "file"),
    "MODELKEEP_MODELS_DIR": ("persistence", "models_dir"),
    "MODELKEEP_REGISTRY_PATH": ("persistence", "registry_path"),
    "MODELKEEP_REGISTRY_URL": ("persistence", "registry_url"),
    "MODELKEEP_STORAGE_OPTIONS": ("persistence", "storage_options"),
    "MODELKEEP_SERIALIZATION_FORMAT": ("persistence", "serialization_format"),
    "MODELKEEP_COMPRESS": ("persistence", "compress"),
    "MODELKEEP_SIGNING_KEY": ("persistence", "signing_key"),
    "MODELKEEP_TRUSTED_TYPES": ("persistence", "trusted_types"),
    "MODELKEEP_SIGNING_KEY_FILE": ("persistence", "signing_key_file"),
    "MODELKEEP_TRUSTED_KEYS": ("persistence", "trusted_keys"),
    "MODELKEEP_REQUIRE_SIGNATURES": ("persistence", "require_signatures"),
    "MODELKEEP_CONNECT_TIMEOUT": ("persistence", "connect_timeout"),
    "MODELKEEP_READ_TIMEOUT": ("persistence", "read_timeout"),
    "MODELKEEP_PROTECTED_ALIASES": ("persistence", "protected_aliases"),
    "MODELKEEP_PROTECTED_ALIAS_USERS": ("persistence", "protected_alias_users"),
    "MODELKEEP_TRUSTED_RELEASERS": ("persistence", "trusted_releasers"),
    "MODELKEEP_TOKEN": ("persistence", "token"),
    "MODELKEEP_QUARANTINE": ("persistence", "quarantine"),
    "MODELKEEP_QUARANTINE_TIMEOUT": ("persistence", "quarantine_timeout"),
    "MODELKEEP_QUARANTINE_MEMORY_MB": ("persistence", "quarantine_memory_mb"),
    "MODELKEEP_MAX_LOAD_MEMORY": ("persistence", "max_load_memory"),
    "MODELKEEP_MAX_CONCURRENCY": ("persistence", "max_concurrency"),
    "MODELKEEP_PART_SIZE": ("persistence", "part_size"),
    "MODELKEEP_CACHE_MAX_BYTES": ("persistence", "cache_max_bytes"),
}
#: keyword override -> (section, key), for ``load_settings(models_dir=...)``
OVERRIDES = {key: where for where in ENV_VARS.values() for key in [where[1]]} | {
    "log_level": ("logging", "level"),
    "log_file": ("logging", "file"),
}


def parse_compress(text: str) -> bool | int | str:
    """A ``compress`` setting given as text (environment variables arrive as text): ``"true"``,
    ``"yes"``, ``"on"`` -> ``True``; ``"false"``, ``"no"``, ``"off"``, ``"none"``, ``""`` ->
    ``False``; digits -> a level; anything else (``"zstd:3"``, ``"zlib"``) as it is, lowercased,
    for the format to judge. :mod:`modelkeep.config` and :mod:`modelkeep.plain_settings` both read
    it here, so the read-only path cannot read it otherwise."""
    text = text.strip().lower()
    if text in {"true", "yes", "on"}:
        return True
    if text in {"false", "no", "off", "none", ""}:
        return False
    return int(text) if text.isdigit() else text


def sections(data: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """A config file's top-level mapping, a section with nothing under it (every key commented
    out) read as an empty section. A section that holds a value instead of settings
    (``persistence: foo``) is a :class:`~modelkeep.errors.ConfigError` naming the file and the
    section."""
    for section, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"config file {path!r}: section {section!r} must hold settings as 'key: value' lines "
                f"indented under it, not {values!r}"
            )
    return {section: {} if values is None else values for section, values in data.items()}


def environment_persistence() -> dict[str, str]:
    """The ``persistence`` settings the ``MODELKEEP_*`` variables set, by key."""
    return {key: os.environ[var] for var, (part, key) in ENV_VARS.items() if part == "persistence" if var in os.environ}


def is_server_url(value: Any) -> bool:
    """Whether ``value`` names a registry server (``http://`` or ``https://``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost``, ``127.x.x.x`` or ``::1``)."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def insecure_server_url(url: str) -> bool:
    """Whether a registry server's ``url`` is plain http to another machine (API tokens in clear
    text over a network), which a client refuses unless ``MODELKEEP_ALLOW_INSECURE_HTTP`` is set."""
    allowed = os.environ.get("MODELKEEP_ALLOW_INSECURE_HTTP", "").strip() in ("1", "true", "yes")
    return url.lower().startswith("http://") and not is_loopback_url(url) and not allowed


def drop_outranked_server(persistence: dict[str, Any], later: dict[str, Any]) -> None:
    """Before a later source's ``persistence`` values (``later``) go over the earlier ones: a local
    ``models_dir`` it names, without a ``registry_url`` of its own, opens that folder, so a
    registry server's URL that only an earlier source named is dropped from ``persistence``.
    The environment is later than the config file, and the command line's options or the
    library's arguments later than both: ``modelkeep --models-dir DIR`` opens ``DIR`` as
    ``ModelPersistence("DIR")`` does, whatever ``MODELKEEP_REGISTRY_URL`` says. Within one
    source a server URL wins, as it does over every ``models_dir``."""
    models_dir = later.get("models_dir")
    if models_dir is None or is_server_url(models_dir) or later.get("registry_url") is not None:
        return
    if is_server_url(persistence.get("registry_url")):
        del persistence["registry_url"]
