"""modelkeep/plain_settings.py never reads a setting otherwise than modelkeep/config.py.

Every ``MODELKEEP_*`` variable is tried with many values, and config files with values of
every YAML type: whenever :func:`read_settings` accepts them (and the keys they name load), :func:`load_settings` and
``ModelPersistence.from_settings`` must accept them too and give the same values for what
a read command uses. Whenever the library refuses, :func:`read_settings` must have said
``None``. And it must accept plenty: the values people write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence, timeouts
from modelkeep.cli_readonly import read_keyring
from modelkeep.config import PersistenceSettings, Settings, load_settings
from modelkeep.config_sources import ENV_VARS
from modelkeep.errors import ModelKeepError
from modelkeep.plain_settings import KNOWN_KEYS, ReadSettings, read_settings
from modelkeep.registry import _server_url

VALUES = [
    "", " ", "auto", "AUTO", "default", "none", "off", "on", "yes", " Yes", "TRUE", "true", "False", "0", "1",
    "-1", "08", "1.5", "0.0", "inf", "nan", "3", "12", "512", "2GiB", "1MiB", "16MiB", "2g", "lots",
    "zstd:3", "zlib", "gzip", "lz4", "sometimes", "pickle", "joblib", "native", "skops", "parquet",
    "{}", '{"anon": true}', "{nope", "[1]", "a.pub,b.pub", "production,prod-eu", "info", "DEBUG", "verbose",
    "never", "always", "Always ", "models", "k.pem", "sqlite:///x.db", "sqlite:///", "sqlite://",
    "http://127.0.0.1:9", "https://models.example:8766", "HTTPS://models.example", "http://models.example", "mkt_abc",
]  # fmt: skip
#: What a read command takes from the settings, as config.py names it (section, key).
USED = {
    "models_dir": ("persistence", "models_dir"),
    "registry_path": ("persistence", "registry_path"),
    "registry_url": ("persistence", "registry_url"),
    "signing_key_file": ("persistence", "signing_key_file"),
    "trusted_keys": ("persistence", "trusted_keys"),
    "require_signatures": ("persistence", "require_signatures"),
    "log_level": ("logging", "level"),
}


def _library(tmp_path: Path, config: Path | None = None) -> Settings | None:
    """The library's settings, or ``None`` when it refuses them (reading or opening the registry)."""
    try:
        settings = load_settings(config)
        ModelPersistence.from_settings(settings, create=True).close()
    except (ModelKeepError, OSError, ValueError):
        return None
    return settings


def _fast(config: Path | None = None) -> ReadSettings | None:
    """What the read-only path takes: the settings, if the keys they name also load."""
    read = read_settings(config, {})
    return read if read is not None and read_keyring(read) is not None else None


def _agree(read: ReadSettings, settings: Settings) -> None:
    for name, (section, key) in USED.items():
        assert getattr(read, name) == getattr(getattr(settings, section), key), name
    p = settings.persistence
    assert read.signing_key == (p.signing_key.get_secret_value() or None if p.signing_key else None)
    assert (read.connect_timeout or timeouts.CONNECT_TIMEOUT) == p.connect_timeout
    assert (read.read_timeout or timeouts.READ_TIMEOUT) == p.read_timeout
    # The registry server the library opens (ModelPersistence.__new__), and the token it sends there.
    assert read.server_url == _server_url(p.models_dir, p.registry_url)
    if read.server_url is not None:
        assert read.token == (p.token.get_secret_value() if p.token else None)


@pytest.fixture
def quiet_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with key files under the names the values use, and no MODELKEEP_* set."""
    from modelkeep import keys

    for name in list(ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    key = keys.generate("k")
    for name in ("a.pub", "b.pub"):
        keys.write_key_file(tmp_path / name, key.public.pem(), mode=0o644)
    keys.write_key_file(tmp_path / "k.pem", key.pem())
    return tmp_path


@pytest.mark.parametrize("var", sorted(ENV_VARS))
def test_each_variable_is_accepted_only_as_the_library_accepts_it(
    var: str, quiet_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = []
    for value in VALUES:
        monkeypatch.setenv(var, value)
        if var not in ("MODELKEEP_MODELS_DIR", "MODELKEEP_REGISTRY_URL", "MODELKEEP_REGISTRY_PATH"):
            monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(quiet_keys / "models"))
        read = _fast()
        if read is None:
            continue
        settings = _library(quiet_keys)
        assert settings is not None, f"{var}={value!r}: read by the read-only path, refused by the library"
        _agree(read, settings)
        accepted.append(value)
        monkeypatch.delenv("MODELKEEP_MODELS_DIR", raising=False)
    # Only these are left to the library whatever their value (see plain_settings.py).
    if var not in ("MODELKEEP_LOG_FILE", "MODELKEEP_TOKEN"):
        assert len([v for v in accepted if v.strip()]) >= 1, accepted


@pytest.mark.parametrize("value", VALUES)
def test_a_servers_token_is_read_as_the_library_reads_it(
    value: str, quiet_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a registry server's URL, the token goes to the read path (a local registry's does not)."""
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELKEEP_TOKEN", value)
    read = _fast()
    settings = _library(quiet_keys)
    assert read is not None and settings is not None
    _agree(read, settings)
    assert read.server_url == "http://127.0.0.1:9" and read.token == (value or None)


YAML_VALUES: list[Any] = [
    None, True, False, 0, 3, -2, 1.5, 0.25, "text", "", "zstd:3", "2GiB", [], ["a.pub"], [1, 2], {}, {"anon": True},
    {1: 2}, "auto", "never",
]  # fmt: skip


@pytest.mark.parametrize("key", sorted(PersistenceSettings.model_fields))
def test_each_config_key_is_accepted_only_as_the_library_accepts_it(key: str, quiet_keys: Path) -> None:
    import yaml

    config = quiet_keys / "settings.yaml"
    accepted = []
    for value in YAML_VALUES:
        persistence = {"models_dir": str(quiet_keys / "models")} | ({key: value})
        if key == "models_dir" and not isinstance(value, str):
            persistence = {key: value}
        config.write_text(yaml.safe_dump({"persistence": persistence, "logging": {"level": "warning"}}))
        read = _fast(config)
        if read is None:
            continue
        settings = _library(quiet_keys, config)
        assert settings is not None, f"{key}: {value!r}: read by the read-only path, refused by the library"
        _agree(read, settings)
        accepted.append(value)
    assert accepted, "the read-only path takes no value of this key"


def test_the_read_only_path_knows_every_setting_of_the_library() -> None:
    """A key added to config.py must be added to plain_settings.py (checked or left to the library)."""
    assert set(PersistenceSettings.model_fields) == KNOWN_KEYS


def test_options_win_over_the_environment_and_the_file_as_in_the_library(
    quiet_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = quiet_keys / "settings.yaml"
    config.write_text("persistence:\n  models_dir: from-file\n  trusted_keys: a.pub\nlogging:\n  level: debug\n")
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", "from-env")
    overrides = {"models_dir": "from-option", "trusted_keys": ["b.pub"], "log_level": "ERROR", "quarantine": None}
    read = read_settings(config, overrides)
    assert read is not None
    assert (read.models_dir, read.trusted_keys, read.log_level) == ("from-option", ["b.pub"], "ERROR")
    _agree(read, load_settings(config, **overrides))


def test_compress_is_parsed_as_the_library_parses_it() -> None:
    """The read-only path's reading of ``compress`` (plain_settings._compress) is the library's
    (``PersistenceSettings`` validating it) for every spelling the library accepts, and the
    read-only path's check of it (``normalize_compression``) refuses every one it refuses."""
    from pydantic import ValidationError

    from modelkeep.formats import get_format
    from modelkeep.plain_settings import _compress

    accepted = []
    for value in [*VALUES, " ZSTD:3 ", "Off", True, False, 0, 3, 22]:
        try:
            library = PersistenceSettings(compress=value).compress
        except ValidationError:
            with pytest.raises(Exception):  # noqa: B017 - any refusal sends the read to the library
                get_format("joblib").normalize_compression(_compress(value))
            continue
        assert _compress(value) == library and type(_compress(value)) is type(library), value
        accepted.append(value)
    assert {"zstd:3", " ZSTD:3 ", "off", "Off", " Yes", "08", True, 0, 3} <= set(accepted)
