"""Configuration (YAML + MODELKEEP_* variables) and ModelPersistenceManager."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import (
    ConfigError,
    ModelMetadata,
    ModelPersistenceManager,
    RegistryNotFoundError,
    SignatureError,
    VersionNotFoundError,
)
from modelkeep.config import ENV_VARS, load_settings
from modelkeep.formats import get_format

from .conftest import SEED_CONFIG


@pytest.fixture(autouse=True)
def clean_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts in an empty folder, without MODELKEEP_* variables, and leaves the
    ``modelkeep`` logger (level and handlers) as it found it."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("modelkeep")
    level, handlers = logger.level, list(logger.handlers)
    yield
    for handler in logger.handlers[:]:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


@pytest.fixture
def managers() -> Iterator[list[ModelPersistenceManager]]:
    opened: list[ModelPersistenceManager] = []
    yield opened
    for m in opened:
        m.close()


def _manager(opened: list[ModelPersistenceManager], config_path: Any = None, **kw: Any) -> ModelPersistenceManager:
    m = ModelPersistenceManager(config_path=config_path, **kw)
    opened.append(m)
    return m


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# the seed's config file
# --------------------------------------------------------------------------------------


def test_seed_config_keys(tmp_path: Path, managers: list[ModelPersistenceManager], classifier: Any) -> None:
    config = _write(tmp_path / "config.yaml", SEED_CONFIG)
    manager = _manager(managers, config)
    s = manager.settings
    assert (s.logging.level, s.logging.file) == ("INFO", "logs/app.log")
    assert (s.persistence.models_dir, s.persistence.registry_path) == ("models", None)
    assert (s.persistence.serialization_format, s.persistence.compress) == ("joblib", True)
    assert manager.persistence.models_dir == tmp_path / "models"
    assert not (tmp_path / "models").exists()  # opening creates nothing; the first save does
    path = manager.save_model(classifier, "my_model", "1.0.0", accuracy=0.95)
    assert (tmp_path / "models" / "registry.db").is_file()
    assert path == tmp_path / "models" / "my_model" / "1.0.0" / "my_model_v1.0.0.joblib"
    default = get_format("joblib").normalize_compression(True)
    assert manager.persistence.get_version("my_model").artifact.compression == default  # type: ignore[union-attr]


def test_log_file_gets_written(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    manager = _manager(managers, _write(tmp_path / "config.yaml", SEED_CONFIG))
    manager.save_model({"a": 1}, "my_model", "1.0.0")
    manager.load_model("my_model")
    manager.delete_model("my_model", "1.0.0")
    for handler in logging.getLogger("modelkeep").handlers:
        handler.flush()
    log = (tmp_path / "logs" / "app.log").read_text()
    lines = [line for line in log.splitlines() if "my_model" in line]
    assert len(lines) == 3
    assert "saved my_model version 1.0.0" in lines[0] and "INFO" in lines[0]
    assert "load" in lines[1] and "delet" in lines[2]


def test_log_file_handler_added_once(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    config = _write(tmp_path / "config.yaml", SEED_CONFIG)
    _manager(managers, config)
    _manager(managers, config)
    target = str(tmp_path / "logs" / "app.log")
    files = [h for h in logging.getLogger("modelkeep").handlers if getattr(h, "baseFilename", None) == target]
    assert len(files) == 1


def test_log_level_is_applied(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    _manager(managers, _write(tmp_path / "c.yaml", "logging:\n  level: warning\n"))
    assert logging.getLogger("modelkeep").level == logging.WARNING


def test_default_config_path_is_cwd_config_yaml(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    _write(tmp_path / "config.yaml", "persistence:\n  models_dir: from_cwd_file\n  serialization_format: pickle\n")
    manager = _manager(managers)
    assert manager.persistence.models_dir == tmp_path / "from_cwd_file"
    assert manager.save_model({"a": 1}, "m").name == "m_v1.0.0.pkl.gz"


def test_defaults_without_any_config(tmp_path: Path) -> None:
    s = load_settings()
    assert s.persistence.models_dir == "models"
    assert s.persistence.serialization_format == "joblib"
    assert s.persistence.compress is True
    assert s.logging.level == "INFO" and s.logging.file is None


def test_registry_path_puts_the_index_elsewhere(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    config = "persistence:\n  models_dir: store\n  registry_path: index\n  compress: false\n"
    manager = _manager(managers, _write(tmp_path / "c.yaml", config))
    manager.save_model({"a": 1}, "m")
    assert (tmp_path / "index" / "registry.db").is_file()
    assert not (tmp_path / "store" / "registry.db").exists()
    assert manager.persistence.get_version("m").artifact.compression is None  # type: ignore[union-attr]


def test_compress_codec_from_yaml(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    manager = _manager(managers, _write(tmp_path / "c.yaml", "persistence:\n  compress: [lzma, 2]\n"))
    manager.save_model({"a": 1}, "m")
    assert manager.persistence.get_version("m").artifact.compression == "lzma:2"  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------
# MODELKEEP_* variables and keyword overrides
# --------------------------------------------------------------------------------------


def test_env_overrides_the_file(
    tmp_path: Path, managers: list[ModelPersistenceManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "config.yaml", SEED_CONFIG)
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(tmp_path / "env_models"))
    monkeypatch.setenv("MODELKEEP_REGISTRY_PATH", str(tmp_path / "env_index"))
    monkeypatch.setenv("MODELKEEP_SERIALIZATION_FORMAT", "pickle")
    monkeypatch.setenv("MODELKEEP_LOG_LEVEL", "debug")
    monkeypatch.setenv("MODELKEEP_LOG_FILE", str(tmp_path / "env.log"))
    manager = _manager(managers, config)
    s = manager.settings
    assert s.persistence.models_dir == str(tmp_path / "env_models")
    assert s.persistence.serialization_format == "pickle"
    assert s.logging.level == "DEBUG"
    path = manager.save_model({"a": 1}, "m")
    assert path == tmp_path / "env_models" / "m" / "1.0.0" / "m_v1.0.0.pkl.gz"
    assert (tmp_path / "env_index" / "registry.db").is_file()
    assert logging.getLogger("modelkeep").level == logging.DEBUG
    for handler in logging.getLogger("modelkeep").handlers:
        handler.flush()
    assert "saved m version 1.0.0" in (tmp_path / "env.log").read_text()
    assert not (tmp_path / "logs").exists()


def test_keyword_overrides_win_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", "from_env")
    assert load_settings().persistence.models_dir == "from_env"
    assert load_settings(models_dir="from_kwarg").persistence.models_dir == "from_kwarg"
    assert load_settings(models_dir=None).persistence.models_dir == "from_env"  # None is ignored
    assert load_settings(log_level="ERROR").logging.level == "ERROR"


def test_env_storage_options_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_STORAGE_OPTIONS", '{"anon": true}')
    assert load_settings().persistence.storage_options == {"anon": True}
    monkeypatch.setenv("MODELKEEP_STORAGE_OPTIONS", "{not json")
    with pytest.raises(ConfigError, match="storage_options"):
        load_settings()


def test_env_signing_key(
    tmp_path: Path, managers: list[ModelPersistenceManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "s3cret")
    signed = _manager(managers)
    signed.save_model({"a": 1}, "m")
    record = signed.get_model_metadata("m")
    assert record is not None and record.signature is not None
    assert "s3cret" not in repr(signed.settings)  # kept as a secret
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", "other")
    with pytest.raises(SignatureError):
        _manager(managers).load_model("m")


@pytest.mark.parametrize(
    ("value", "meaning"),
    [("false", False), ("0", 0), ("no", False), ("true", True), ("1", 1), ("7", 7), ("lzma:2", "lzma:2")],
)
def test_env_compress_values(
    tmp_path: Path, managers: list[ModelPersistenceManager], monkeypatch: pytest.MonkeyPatch, value: str, meaning: Any
) -> None:
    """Environment variables are strings: 'false' must switch compression off, '7' is a level,
    exactly as the YAML values false and 7 would."""
    monkeypatch.setenv("MODELKEEP_COMPRESS", value)
    manager = _manager(managers)
    manager.save_model({"a": np.arange(10)}, "m")
    expected = get_format("joblib").normalize_compression(meaning)
    assert manager.persistence.get_version("m").artifact.compression == expected  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------
# invalid configuration -> ConfigError naming the key and the allowed values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "key", "allowed"),
    [
        ("persistence:\n  serialization_format: xml\n", "serialization_format", ["'joblib'", "'pickle'"]),
        ("logging:\n  level: LOUD\n", "logging.level", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
        ("persistence:\n  colour: blue\n", "colour", ["models_dir", "serialization_format", "compress"]),
        ("palette:\n  colour: blue\n", "palette", ["logging", "persistence"]),
        ("persistence:\n  compress: maybe\n", "compress", ["zlib"]),
    ],
    ids=["format-xml", "level-LOUD", "unknown-key", "unknown-section", "compress-maybe"],
)
def test_invalid_values_raise_config_error(
    tmp_path: Path, managers: list[ModelPersistenceManager], yaml_text: str, key: str, allowed: list[str]
) -> None:
    config = _write(tmp_path / "config.yaml", yaml_text)
    with pytest.raises(ConfigError) as info:
        _manager(managers, config)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert key in message, message
    for word in allowed:
        assert word in message, message
    assert not (tmp_path / "models").exists()  # nothing was created


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("MODELKEEP_SERIALIZATION_FORMAT", "xml", "serialization_format"),
        ("MODELKEEP_LOG_LEVEL", "LOUD", "logging.level"),
    ],
)
def test_invalid_env_values(monkeypatch: pytest.MonkeyPatch, var: str, value: str, key: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_unknown_keyword_override() -> None:
    with pytest.raises(ConfigError, match="colour") as info:
        load_settings(colour="blue")
    assert "models_dir" in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [("persistence: [unclosed\n", "not valid YAML"), ("- just\n- a list\n", "mapping")],
)
def test_malformed_config_file(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(_write(tmp_path / "bad.yaml", text))


@pytest.mark.parametrize(
    ("text", "shown"), [("persistence: foo\n", "'foo'"), ("persistence: [1, 2]\n", "[1, 2]"), ("logging: 3\n", "3")]
)
@pytest.mark.parametrize("env", [{}, {"MODELKEEP_COMPRESS": "1", "MODELKEEP_LOG_LEVEL": "INFO"}])
def test_a_section_holding_a_value_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, shown: str, env: dict[str, str]
) -> None:
    """``persistence: foo`` beside a variable of that section was an internal TypeError in the
    library and the CLI; it is a ConfigError naming the file and the section, on both readers."""
    import subprocess
    import sys

    path = _write(tmp_path / "bad.yaml", text)
    section = text.split(":")[0]
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=rf"bad\.yaml.*section '{section}' must hold settings"):
        load_settings(path)
    cli = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--config", str(path), "list"], capture_output=True, text=True, cwd=tmp_path
    )
    assert cli.returncode != 0
    assert cli.stderr.strip().splitlines() == [
        f"Error: config file {str(path)!r}: section {section!r} must hold settings as 'key: value' lines "
        f"indented under it, not {shown}"
    ]


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ModelPersistenceManager(config_path=tmp_path / "nope.yaml")


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path / "empty.yaml", "")).persistence.models_dir == "models"


# --------------------------------------------------------------------------------------
# manager methods
# --------------------------------------------------------------------------------------


def test_manager_methods(
    tmp_path: Path, managers: list[ModelPersistenceManager], classifier: Any, iris_data: Any
) -> None:
    X, _ = iris_data
    manager = _manager(managers, _write(tmp_path / "config.yaml", SEED_CONFIG))
    with pytest.raises(RegistryNotFoundError, match="models"):  # nothing saved yet: no registry
        manager.list_models()
    manager.save_model(classifier, "my_model", "1.0.0", accuracy=0.95)
    manager.save_model(classifier, "my_model", accuracy=0.97)  # next patch
    manager.save_model({"x": 1}, "other")
    assert manager.list_models() == ["my_model", "other"]
    assert manager.list_versions("my_model") == ["1.0.0", "1.0.1"]

    loaded = manager.load_model("my_model", "1.0.0")
    np.testing.assert_array_equal(loaded.predict(X), classifier.predict(X))
    _, meta = manager.load_model("my_model", return_metadata=True)
    assert isinstance(meta, ModelMetadata) and meta.version == "1.0.1"

    metadata = manager.get_model_metadata("my_model", "1.0.0")
    assert metadata is not None and metadata.metadata["accuracy"] == 0.95
    assert manager.get_model_metadata("my_model", "9.9.9") is None
    assert manager.get_model_metadata("ghost") is None

    table = manager.compare_versions("my_model")
    assert list(table["version"]) == ["1.0.0", "1.0.1"] and list(table["accuracy"]) == [0.95, 0.97]
    assert list(manager.compare_versions("my_model", ["1.0.1"])["version"]) == ["1.0.1"]

    manager.delete_model("my_model", "1.0.0")
    assert manager.list_versions("my_model") == ["1.0.1"]
    with pytest.raises(VersionNotFoundError):
        manager.delete_model("my_model", "1.0.0")


def test_manager_keyword_overrides(tmp_path: Path, managers: list[ModelPersistenceManager]) -> None:
    manager = _manager(managers, None, models_dir=str(tmp_path / "kw"), serialization_format="pickle", compress=False)
    assert manager.save_model({"a": 1}, "m") == tmp_path / "kw" / "m" / "1.0.0" / "m_v1.0.0.pkl"
    assert manager.config_path is None
