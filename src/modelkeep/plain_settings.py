"""The settings ``list``, ``info`` and ``search`` need, read without pydantic.

:mod:`modelkeep.config` validates settings with pydantic, which costs more to import than
these commands take to answer. :func:`read_settings` reads the same sources in the same
order (the YAML file, ``MODELKEEP_*`` variables, the command line's options) and accepts a
value only when it is certain that :mod:`modelkeep.config` and ``ModelPersistence()``
accept it and read it the same way: a value of another type, a spelling outside the plain
ones (``"yes"`` for a boolean is plain, ``"  Yes "`` is not), or anything the library
would refuse makes it return ``None``, and the command then goes through the library,
which reads, validates and reports as always. So the read path can never accept a
setting the library refuses, nor read one differently.

A few settings always go to the library, because they change more than what is read:
``logging.file`` (the library writes its log records there), ``token`` on a local registry
(signing in reads the users table and can fail), a remote ``models_dir`` (fsspec), and a
``registry_url`` that is neither a plain SQLite file (:func:`sqlite_file`), PostgreSQL, nor a
registry server. A registry server's URL (``registry_url``, or a ``models_dir`` that names
one, as ``ModelPersistence`` reads them) is read with its ``token``: the command then asks
that server, through the same client the library opens for it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_sources import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_MODELS_DIR,
    ENV_VARS,
    OVERRIDES,
    drop_outranked_server,
    environment_persistence,
    insecure_server_url,
    is_server_url,
    parse_compress,
    sections,
)
from .errors import ConfigError

#: The URL schemes SQLAlchemy reads as PostgreSQL through psycopg 3 (see ``index.sql.normalize_url``).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class _Unsure(Exception):
    """A value whose reading only the library can give."""


@dataclass(frozen=True)
class ReadSettings:
    """What a read command uses from the settings (all other settings were checked and are ignored)."""

    models_dir: str
    registry_path: str | None = None
    registry_url: str | None = None
    signing_key: str | None = None
    signing_key_file: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    require_signatures: bool | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    log_level: str = "INFO"
    #: A registry server's URL: the settings name a registry behind ``modelkeep server``.
    server_url: str | None = None
    #: The API token sent to ``server_url`` (only read with one).
    token: str | None = None


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
#: What pydantic reads as a boolean from text (compared lower-case, without surrounding spaces).
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_DIGITS = re.compile(r"[1-9][0-9]*")


def _text(v: Any, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if isinstance(v, str):
        return v
    raise _Unsure


def _names(v: Any, *, split_paths: bool = False) -> list[str]:
    """As the validators that split ``"a,b"`` (and for key files, ``os.pathsep`` too)."""
    if v is None:
        return []
    if isinstance(v, str):
        text = v.replace(os.pathsep, ",") if split_paths else v
        return [t.strip() for t in text.split(",") if t.strip()]
    if isinstance(v, list) and all(isinstance(t, str) for t in v):
        return list(v)
    raise _Unsure


def _positive_float(v: Any) -> float:
    if isinstance(v, bool):
        raise _Unsure
    if isinstance(v, str) and _DECIMAL.fullmatch(v):
        v = float(v)
    if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
        return float(v)
    raise _Unsure


def _optional_positive_int(v: Any, *, auto: bool) -> int | None:
    if v is None or (auto and isinstance(v, str) and v.strip().lower() in {"", "auto"}):
        return None
    if isinstance(v, str) and _DIGITS.fullmatch(v):
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    raise _Unsure


def _size(v: Any, *, empty: set[str]) -> int | None:
    from .formats.budget import parse_size

    if v is None or (isinstance(v, str) and v.strip().lower() in empty):
        return None
    try:
        return parse_size(v)
    except ValueError:
        raise _Unsure from None


def _require(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v == v.strip():
        if v.lower() in {"", "auto"}:
            return None
        if v.lower() in _TRUE | _FALSE:
            return v.lower() in _TRUE
    raise _Unsure


def _compress(v: Any) -> Any:
    """As ``PersistenceSettings._parse_compress``."""
    if isinstance(v, int):  # booleans too
        return v
    if isinstance(v, str):
        return parse_compress(v)
    raise _Unsure


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise _Unsure from None
    if not isinstance(data, dict):
        raise _Unsure
    try:
        return sections(data, str(path))
    except ConfigError:
        raise _Unsure from None  # the library names the section


def _sources(config_path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The merged, unvalidated settings, as :func:`modelkeep.config.load_settings` merges them."""
    if config_path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        data = _read_yaml(default) if default.is_file() else {}
    else:
        path = Path(config_path)
        if not path.is_file():
            raise _Unsure  # the library names the missing file, or the folder
        data = _read_yaml(path)
    if set(data) - {"logging", "persistence"}:  # every section is a mapping (_read_yaml)
        raise _Unsure
    merged: dict[str, dict[str, Any]] = {"logging": {}, "persistence": {}}
    for section, values in data.items():
        merged[section].update(values)
    env = environment_persistence()
    drop_outranked_server(merged["persistence"], env)
    for var, (section, key) in ENV_VARS.items():
        if var in os.environ:
            merged[section][key] = os.environ[var]
    drop_outranked_server(merged["persistence"], overrides)
    for name, value in overrides.items():
        if name not in OVERRIDES:
            raise _Unsure
        if value is not None:
            section, key = OVERRIDES[name]
            merged[section][key] = value
    return merged


#: The persistence keys a read command ignores once they are known to be valid, with their check.
_CHECKED: dict[str, Any] = {
    "trusted_types": _names,
    "protected_aliases": _names,
    "protected_alias_users": _names,
    "trusted_releasers": _names,
    "quarantine_timeout": _positive_float,
    "quarantine_memory_mb": lambda v: _optional_positive_int(v, auto=True),
    "max_concurrency": lambda v: _optional_positive_int(v, auto=True),
}


#: Every ``persistence`` key of :class:`modelkeep.config.PersistenceSettings` (a test keeps them equal).
KNOWN_KEYS = frozenset(
    {
        "models_dir",
        "registry_path",
        "registry_url",
        "storage_options",
        "serialization_format",
        "compress",
        "signing_key",
        "signing_key_file",
        "trusted_keys",
        "require_signatures",
        "connect_timeout",
        "read_timeout",
        "token",
        "quarantine",
        "max_load_memory",
        "part_size",
        "cache_max_bytes",
        *_CHECKED,
    }
)


def _persistence(p: dict[str, Any], log_level: str) -> ReadSettings:
    from .formats import FORMATS, get_format
    from .storage import is_local

    if set(p) - KNOWN_KEYS:
        raise _Unsure
    for key, check in _CHECKED.items():
        if key in p:
            check(p[key])
    models_dir = _text(p.get("models_dir", DEFAULT_MODELS_DIR))
    assert models_dir is not None
    registry_url = _text(p.get("registry_url"), optional=True)
    # As ModelPersistence.__new__ reads them: registry_url first, then models_dir.
    named = registry_url if registry_url is not None else models_dir
    server_url = named if is_server_url(named) else None
    if server_url is None:
        if not models_dir or not is_local(models_dir):
            raise _Unsure
    elif insecure_server_url(server_url):
        raise _Unsure  # the client refuses it, with its own error
    options = p.get("storage_options")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise _Unsure from None
    if not (options is None or (isinstance(options, dict) and all(isinstance(k, str) for k in options))):
        raise _Unsure
    fmt = p.get("serialization_format", "joblib")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise _Unsure
    if "serialization_format" in p or "compress" in p:
        try:  # as PersistenceSettings._check_compress (a format whose package is missing: the library says so)
            get_format(fmt).normalize_compression(_compress(p.get("compress", True)))
        except Exception:
            raise _Unsure from None
    quarantine = p.get("quarantine", "auto")
    if not isinstance(quarantine, str) or quarantine.strip().lower() not in {"auto", "always", "never"}:
        raise _Unsure
    token = _text(p.get("token"), optional=True) or None  # as Settings: "" is no token
    if token is not None and server_url is None:
        raise _Unsure  # signing in reads the users table, and may refuse the token
    _size(p.get("max_load_memory"), empty={"", "none", "default"})
    part_size = _size(p.get("part_size"), empty={"", "none", "default"})
    if part_size is not None:
        from .storage.base import MIN_PART_SIZE

        if part_size < MIN_PART_SIZE:
            raise _Unsure
    cache = p.get("cache_max_bytes")
    if cache is not None and str(cache).strip() not in {"0", "off"}:
        _size(cache, empty={"", "default"})
    if (
        server_url is None
        and registry_url is not None
        and sqlite_file(registry_url) is None
        and registry_url.split("://", 1)[0] not in POSTGRES_SCHEMES
    ):
        raise _Unsure  # another database, or a URL SQLAlchemy reads its own way
    signing_key = _text(p.get("signing_key"), optional=True)
    return ReadSettings(
        models_dir=models_dir,
        registry_path=_text(p.get("registry_path"), optional=True),
        registry_url=registry_url,
        signing_key=signing_key or None,
        signing_key_file=_text(p.get("signing_key_file"), optional=True),
        trusted_keys=_names(p.get("trusted_keys"), split_paths=True),
        require_signatures=_require(p.get("require_signatures")),
        connect_timeout=_positive_float(p["connect_timeout"]) if "connect_timeout" in p else None,
        read_timeout=_positive_float(p["read_timeout"]) if "read_timeout" in p else None,
        log_level=log_level,
        server_url=server_url,
        token=token,  # only with a server: a local registry's token went to the library above
    )


def sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///FILE`` URL when FILE is a plain name (no query, escape or
    ``:memory:``, which SQLAlchemy reads its own way), else ``None``."""
    database = url.removeprefix("sqlite:///")
    if database == url or not database or database == ":memory:" or any(c in database for c in "?%#"):
        return None
    return database


def read_settings(config_path: str | os.PathLike[str] | None, overrides: dict[str, Any]) -> ReadSettings | None:
    """The settings of a read command from every source, or ``None`` when only the library
    can read them (see the module's docstring). ``overrides`` are the command line's, as
    handed to :func:`modelkeep.config.load_settings`."""
    try:
        merged = _sources(config_path, overrides)
        logging_section = merged["logging"]
        if set(logging_section) - {"level", "file"} or logging_section.get("file") is not None:
            raise _Unsure  # the library writes its log records to the file
        level = logging_section.get("level", "INFO")
        if not isinstance(level, str) or level.upper() not in _LEVELS:
            raise _Unsure
        return _persistence(merged["persistence"], level.upper())
    except _Unsure:
        return None


__all__ = ["KNOWN_KEYS", "POSTGRES_SCHEMES", "ReadSettings", "read_settings", "sqlite_file"]
