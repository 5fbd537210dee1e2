"""Configuration: the seed's YAML file, overridden by ``MODELKEEP_*`` variables.

This is the only module that reads configuration. Precedence, lowest first:
defaults, the YAML file, environment variables, explicit keyword overrides.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from . import timeouts
from .config_sources import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_MODELS_DIR,
    ENV_VARS,
    OVERRIDES,
    drop_outranked_server,
    environment_persistence,
    parse_compress,
    sections,
)
from .errors import ConfigError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: LogLevel = "INFO"
    file: str | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class ServerSettings(BaseModel):
    """``modelkeep server``'s own settings (the ``server:`` section)."""

    model_config = ConfigDict(extra="forbid")
    #: Largest request body the server accepts (an upload, a blob, a bundle), in bytes or text such
    #: as ``10GiB``; larger ones are refused with HTTP 413. ``None`` (default): no cap.
    max_upload_bytes: int | None = None

    @field_validator("max_upload_bytes", mode="before")
    @classmethod
    def _parse_upload_cap(cls, v: Any) -> Any:
        from .formats.budget import parse_size

        if v is None or (isinstance(v, str) and v.strip().lower() in {"", "none", "off"}):
            return None
        return parse_size(v)


class KeySettings(BaseModel):
    """Where signing keys and trusted keys come from (see :func:`key_settings`)."""

    model_config = ConfigDict(extra="forbid")
    #: A shared HMAC-SHA256 secret: signs every save; signatures become required.
    signing_key: SecretStr | None = None
    #: A PEM ECDSA P-256 private key that signs every save; signatures become required.
    signing_key_file: str | None = None
    #: PEM public key files whose signatures are trusted.
    trusted_keys: list[str] = Field(default_factory=list)
    #: Refuse versions without a trusted signature (default: on when a key is configured).
    require_signatures: bool | None = None

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_paths(cls, v: Any) -> Any:
        if isinstance(v, str):  # MODELKEEP_TRUSTED_KEYS="a.pub,b.pub" (or os.pathsep-separated)
            return [t.strip() for t in v.replace(os.pathsep, ",").split(",") if t.strip()]
        return [] if v is None else v

    @field_validator("require_signatures", mode="before")
    @classmethod
    def _parse_bool(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in {"", "auto"}:
            return None
        return v


class PersistenceSettings(KeySettings):
    model_config = ConfigDict(extra="forbid")
    models_dir: str = DEFAULT_MODELS_DIR
    registry_path: str | None = None
    registry_url: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    serialization_format: str = "joblib"
    compress: bool | int | str | tuple[str, int] = True
    #: Types the skops format may build at load; from here or the caller, never from an artifact.
    trusted_types: list[str] = Field(default_factory=list)
    #: Seconds to wait for S3 / PostgreSQL to connect, and to answer a request.
    connect_timeout: float = Field(default=timeouts.CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(default=timeouts.READ_TIMEOUT, gt=0)
    #: Aliases only admins (or ``protected_alias_users``) may move, when an identity acts.
    protected_aliases: list[str] = Field(default_factory=lambda: ["production"])
    protected_alias_users: list[str] = Field(default_factory=list)
    #: Key fingerprints whose alias moves are trusted; when set, loads through an alias need one.
    trusted_releasers: list[str] = Field(default_factory=list)
    #: A personal API token (``modelkeep users token``): act as its owner, with their role.
    token: SecretStr | None = None

    @field_validator("protected_aliases", "protected_alias_users", "trusted_releasers", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        if isinstance(v, str):  # MODELKEEP_PROTECTED_ALIASES="production,prod-eu"
            return [t.strip() for t in v.split(",") if t.strip()]
        return [] if v is None else v

    #: Load versions not signed by a trusted key in a child process first (modelkeep.quarantine).
    quarantine: Literal["auto", "always", "never"] = "auto"
    quarantine_timeout: float = Field(default=120.0, gt=0)
    quarantine_memory_mb: int | None = Field(default=None, gt=0)

    @field_validator("quarantine", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("quarantine_memory_mb", mode="before")
    @classmethod
    def _auto_memory(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in {"", "auto"} else v

    #: Bytes one load may allocate (default: max(256 MiB, 32 x the artifact's size)); "2GiB" works.
    max_load_memory: int | None = None
    #: Requests in flight for one S3 transfer (default: sized to the machine, see storage/s3.py).
    max_concurrency: int | None = Field(default=None, gt=0)
    #: Multipart part size of S3 uploads (default 8 MiB; S3's minimum is 5 MiB); "16MiB" works.
    part_size: int | None = None
    #: Size cap of the local cache of remote artifacts (default 10 GiB; 0 turns it off).
    cache_max_bytes: int | None = None

    @field_validator("cache_max_bytes", mode="before")
    @classmethod
    def _parse_cache_size(cls, v: Any) -> Any:
        from .formats.budget import parse_size

        if v is None or (isinstance(v, str) and v.strip().lower() in {"", "default"}):
            return None
        return 0 if str(v).strip() in {"0", "off"} else parse_size(v)

    @field_validator("max_concurrency", mode="before")
    @classmethod
    def _auto_concurrency(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in {"", "auto"} else v

    @field_validator("max_load_memory", "part_size", mode="before")
    @classmethod
    def _parse_memory(cls, v: Any) -> Any:
        from .formats.budget import parse_size

        if v is None or (isinstance(v, str) and v.strip().lower() in {"", "none", "default"}):
            return None
        return parse_size(v)

    @field_validator("trusted_types", mode="before")
    @classmethod
    def _split_types(cls, v: Any) -> Any:
        if isinstance(v, str):  # MODELKEEP_TRUSTED_TYPES="pkg.mod.Class,other.Class"
            return [t.strip() for t in v.split(",") if t.strip()]
        return [] if v is None else v

    @field_validator("serialization_format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from .formats import FORMATS

        if v not in FORMATS:
            raise ValueError(f"must be one of {', '.join(repr(n) for n in FORMATS)}, got {v!r}")
        return v

    @field_validator("compress", mode="before")
    @classmethod
    def _parse_compress(cls, v: Any) -> Any:
        # Environment variables arrive as text: "false", "1", "zstd:3", "zlib".
        return parse_compress(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check_compress(self) -> PersistenceSettings:
        from .formats import get_format

        try:
            get_format(self.serialization_format).normalize_compression(self.compress)
        except ConfigError as exc:
            raise ValueError(f"compress: {exc}") from None
        return self

    @field_validator("storage_options", mode="before")
    @classmethod
    def _json_options(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object: {exc}") from exc
        return {} if v is None else v


class Settings(BaseModel):
    """Validated configuration, as read by :func:`load_settings`."""

    model_config = ConfigDict(extra="forbid")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    persistence: PersistenceSettings = Field(default_factory=PersistenceSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    def persistence_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~modelkeep.ModelPersistence` from these settings.

        Use ``ModelPersistence.from_settings(settings)``; this module does not import the
        registry, so that the registry (and the signing code it uses) can read settings.
        """
        p = self.persistence
        return {
            "models_dir": p.models_dir,
            "serialization_format": p.serialization_format,
            "compress": p.compress,
            "registry_path": p.registry_path,
            "registry_url": p.registry_url,
            "storage_options": p.storage_options or None,
            "signing_key": p.signing_key.get_secret_value() if p.signing_key else None,
            "signing_key_file": p.signing_key_file,
            "trusted_keys": p.trusted_keys or None,
            "require_signatures": p.require_signatures,
            "trusted_types": p.trusted_types or None,
            "connect_timeout": p.connect_timeout,
            "read_timeout": p.read_timeout,
            "protected_aliases": p.protected_aliases,
            "protected_alias_users": p.protected_alias_users or None,
            "trusted_releasers": p.trusted_releasers or None,
            "token": p.token.get_secret_value() if p.token else None,
            "quarantine": p.quarantine,
            "quarantine_timeout": p.quarantine_timeout,
            "quarantine_memory_mb": p.quarantine_memory_mb,
            "max_load_memory": p.max_load_memory,
            "max_concurrency": p.max_concurrency,
            "part_size": p.part_size,
            "cache_max_bytes": p.cache_max_bytes,
        }

    def release_logging(self) -> None:
        """Close and detach the log file handler that :meth:`apply_logging` added."""
        if not self.logging.file:
            return
        logger = logging.getLogger("modelkeep")
        path = os.path.abspath(self.logging.file)
        for handler in [h for h in logger.handlers if getattr(h, "baseFilename", None) == path]:
            logger.removeHandler(handler)
            handler.close()

    def apply_logging(self) -> None:
        """Set the ``modelkeep`` logger's level, and add the configured log file once."""
        logger = logging.getLogger("modelkeep")
        logger.setLevel(self.logging.level)
        if self.logging.file:
            path = os.path.abspath(self.logging.file)
            if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                handler = logging.FileHandler(path)
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logger.addHandler(handler)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return sections(data, str(path))


def load_settings(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate configuration.

    ``config_path=None`` reads ``./config.yaml`` when it exists; an explicit
    path that does not exist is an error. Keyword overrides (``models_dir``,
    ``registry_url``, ``compress``, ...) win over the file and the environment;
    ``None`` values are ignored.
    """
    if config_path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        data = _read_yaml(default) if default.is_file() else {}
    else:
        path = Path(config_path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        data = _read_yaml(path)
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    from_env: dict[tuple[str, str], str] = {}
    env = environment_persistence()
    drop_outranked_server(data.get("persistence") or {}, env)
    for var, (section, key) in ENV_VARS.items():
        if var in os.environ:
            data.setdefault(section, {})[key] = os.environ[var]
            from_env[(section, key)] = var
    drop_outranked_server(data.get("persistence") or {}, overrides)
    for name, value in overrides.items():
        if name not in OVERRIDES:
            raise ConfigError(f"unknown setting {name!r}; allowed: {', '.join(sorted(OVERRIDES))}")
        if value is not None:
            section, key = OVERRIDES[name]
            data.setdefault(section, {})[key] = value
            from_env.pop((section, key), None)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_name_env_var(_describe(exc), exc, from_env)) from exc


def _name_env_var(message: str, exc: ValidationError, from_env: dict[tuple[str, str], str]) -> str:
    """Name the environment variable when the bad value came from one (not from the file)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    for (section, key), var in from_env.items():
        if loc[:2] == [section, key] or (loc[:1] == [section] and msg.startswith(f"{key}:")):
            detail = msg.removeprefix(f"{key}:").strip()
            return f"invalid value for {var} (the environment variable, setting {section}.{key}): {detail}"
    return message


def persistence_defaults(**explicit: Any) -> dict[str, Any]:
    """``ModelPersistence()``'s settings: each ``explicit`` value that is not ``None``, else its
    ``MODELKEEP_*`` variable, else the default; so a variable means the same in the library as
    in the CLI. Only values taken from the environment are validated here (an error names the
    variable). ``trusted_types`` adds the given names to ``MODELKEEP_TRUSTED_TYPES``, as
    ``--trust`` adds to the configured ones."""
    from_env = {
        ("persistence", key): var
        for var, (section, key) in ENV_VARS.items()
        if section == "persistence" and key in explicit and var in os.environ
        if explicit[key] is None or key == "trusted_types"
    }
    data = {key: os.environ[var] for (_section, key), var in from_env.items()}
    drop_outranked_server(data, explicit)  # ModelPersistence("folder") opens the folder
    if "compress" in data and explicit.get("serialization_format") is not None:
        data["serialization_format"] = explicit["serialization_format"]  # the codec must fit the format
    try:
        settings = Settings.model_validate({"persistence": data}).persistence
    except ValidationError as exc:
        raise ConfigError(_name_env_var(_describe(exc), exc, from_env)) from exc
    resolved = {key: getattr(settings, key) if value is None else value for key, value in explicit.items()}
    resolved = {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in resolved.items()}
    if "trusted_types" in explicit:
        resolved["trusted_types"] = list(dict.fromkeys([*settings.trusted_types, *(explicit["trusted_types"] or [])]))
    return resolved


def key_settings(**explicit: Any) -> KeySettings:
    """The key settings: each ``explicit`` value that is not ``None``, else its ``MODELKEEP_*``
    variable. ``ModelPersistence()`` resolves its keys here, and the CLI reaches the same
    function with the values it read from the config file."""
    data: dict[str, Any] = {}
    for var, (_section, key) in ENV_VARS.items():
        if key in KeySettings.model_fields and var in os.environ:
            data[key] = os.environ[var]
    data.update({k: v for k, v in explicit.items() if v is not None})
    try:
        return KeySettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prefix="persistence.")) from exc


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the config key and what is allowed there."""
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal["))]
    parts = [p for p in parts if p not in {"bool", "int", "str", "tuple[str,int]"}]
    loc = prefix + ".".join(parts)
    if err["type"] == "extra_forbidden":
        sections: dict[str, type[BaseModel]] = {
            "logging": LoggingSettings,
            "persistence": PersistenceSettings,
            "server": ServerSettings,
        }
        section = sections.get(parts[0], Settings) if len(parts) > 1 else Settings
        allowed = ", ".join(section.model_fields)
        return f"unknown config key {loc}; allowed keys here: {allowed}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"invalid config value for {loc}: {msg}"
