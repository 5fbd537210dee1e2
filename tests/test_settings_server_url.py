"""A registry server's URL and a local ``models_dir`` from different sources: the later source wins.

``ModelPersistence("folder")`` opens the folder whatever ``MODELKEEP_REGISTRY_URL`` says, so
``modelkeep --models-dir folder`` must too (it used to go to the server and ignore the option),
and so must a ``MODELKEEP_MODELS_DIR`` over a config file's server URL. Within one source, a
server URL wins over a ``models_dir`` (the client needs no folder). The server here is a port
nothing listens on: a command that went there fails with "cannot reach the registry server".
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from modelkeep import ModelPersistence
from modelkeep.api.client import HttpRegistry
from modelkeep.config import load_settings
from modelkeep.plain_settings import read_settings

from ._cli_in_process import run_cli


@pytest.fixture
def nowhere() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local registry holding ``m`` 1.0.0, with every modelkeep variable cleared."""
    for var in ("MODELKEEP_REGISTRY_URL", "MODELKEEP_MODELS_DIR", "MODELKEEP_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    where = tmp_path / "local"
    with ModelPersistence(where) as p:
        p.save({"a": 1}, "m")
    return where


def test_the_library_opens_a_folder_it_is_given_over_the_environments_server(
    folder: Path, nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELKEEP_REGISTRY_URL", nowhere)
    with ModelPersistence(folder) as p:
        assert not isinstance(p, HttpRegistry)
        assert p.list_versions("m") == ["1.0.0"]
    assert isinstance(ModelPersistence(), HttpRegistry)  # nothing local named: the server
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(folder))  # both from one source: the server
    assert isinstance(ModelPersistence(), HttpRegistry)


@pytest.mark.parametrize("command", [["list"], ["info", "--model-name", "m"], ["search", "--limit", "1"]])
def test_the_models_dir_option_wins_over_the_environments_server(
    folder: Path, nowhere: str, command: list[str]
) -> None:
    local = run_cli("--models-dir", str(folder), *command, env={"MODELKEEP_REGISTRY_URL": nowhere})
    assert local.returncode == 0, local.stderr
    assert "1.0.0" in local.stdout
    remote = run_cli(*command, env={"MODELKEEP_REGISTRY_URL": nowhere, "MODELKEEP_MODELS_DIR": str(folder)})
    assert remote.returncode != 0 and "cannot reach the registry server" in remote.stderr, remote.stderr
    assert "Traceback" not in remote.stderr


@pytest.mark.parametrize("log_file", [False, True])  # True: the full library path, not the read-only one
def test_the_environments_models_dir_wins_over_a_config_files_server(
    folder: Path, nowhere: str, tmp_path: Path, log_file: bool
) -> None:
    config = tmp_path / "team.yaml"
    extra = f"logging:\n  file: {tmp_path / 'mk.log'}\n" if log_file else ""
    config.write_text(f"persistence:\n  registry_url: {nowhere}\n{extra}")
    local = run_cli("--config", str(config), "list", env={"MODELKEEP_MODELS_DIR": str(folder)})
    assert local.returncode == 0, local.stderr
    assert "m " in local.stdout
    remote = run_cli("--config", str(config), "list")
    assert remote.returncode != 0 and "cannot reach the registry server" in remote.stderr, remote.stderr


@pytest.mark.parametrize(
    ("file", "env", "options", "server"),
    [
        ({"registry_url": "S"}, {}, {"models_dir": "D"}, False),
        ({"registry_url": "S"}, {"MODELKEEP_MODELS_DIR": "D"}, {}, False),
        ({}, {"MODELKEEP_REGISTRY_URL": "S"}, {"models_dir": "D"}, False),
        ({}, {"MODELKEEP_REGISTRY_URL": "S", "MODELKEEP_MODELS_DIR": "D"}, {}, True),
        ({"models_dir": "D"}, {"MODELKEEP_REGISTRY_URL": "S"}, {}, True),
        ({"registry_url": "S", "models_dir": "D"}, {}, {}, True),
        ({}, {"MODELKEEP_MODELS_DIR": "D"}, {"registry_url": "S"}, True),
        ({"registry_url": "S"}, {}, {"models_dir": "S"}, True),  # a server named as models_dir
    ],
)
def test_both_readers_of_the_settings_layer_them_alike(
    tmp_path: Path,
    nowhere: str,
    monkeypatch: pytest.MonkeyPatch,
    file: dict[str, str],
    env: dict[str, str],
    options: dict[str, str],
    server: bool,
) -> None:
    def fill(values: dict[str, str]) -> dict[str, Any]:
        return {k: nowhere if v == "S" else str(tmp_path / v) for k, v in values.items()}

    for var in ("MODELKEEP_REGISTRY_URL", "MODELKEEP_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in fill(env).items():
        monkeypatch.setenv(var, value)
    config = tmp_path / "c.yaml"
    config.write_text("persistence:\n" + "".join(f"  {k}: {v}\n" for k, v in fill(file).items()))
    settings = load_settings(config, **fill(options))
    read = read_settings(config, fill(options))
    url = settings.persistence.registry_url
    assert (url == nowhere or settings.persistence.models_dir == nowhere) is server
    if server:  # the read-only path leaves a server to the library, or reads what the library reads
        assert read is None or read.registry_url == url
    else:
        assert read is not None and read.registry_url == url


@pytest.mark.parametrize("section", ["persistence", "logging"])
def test_a_section_with_every_key_commented_out_is_empty(folder: Path, tmp_path: Path, section: str) -> None:
    """It used to be refused alone, and an internal error (TypeError) beside a MODELKEEP_* variable."""
    config = tmp_path / "c.yaml"
    config.write_text(f"{section}:\n  # models_dir: elsewhere\n")
    for env in ({}, {"MODELKEEP_MODELS_DIR": str(folder)}):
        listed = run_cli("--config", str(config), "--models-dir", str(folder), "list", env=env)
        assert listed.returncode == 0 and "m " in listed.stdout, listed.stderr
    assert load_settings(config).persistence.models_dir == "models"
