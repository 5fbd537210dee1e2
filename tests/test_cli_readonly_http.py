"""``modelkeep list``, ``info`` and ``search`` against a registry server, on the read path.

With a registry server's URL in the settings (``MODELKEEP_REGISTRY_URL``, ``registry_url`` in a
config file, or a ``models_dir`` that names one) the read commands open the server's client
themselves (``cli_readonly._server_client``) instead of going through ``ModelPersistence``: the
same client, with the same token, timeouts and keys. Every command runs through both paths on
the same server; exit code, stdout and stderr must be identical, errors included. The read path
must not import SQLAlchemy, pydantic, pandas, numpy, psycopg, nor httpx (its JSON requests go
through ``api/quick.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modelkeep.cli_readonly
from modelkeep.cli import cli
from modelkeep.cli_readonly import ENV_SWITCH

from ._http_server import HttpServer, ServerSide, running_server
from .test_cli_readonly import COMMANDS, ERRORS, HEAVY, _build, _imported_modules

#: What the read path through a server must not import either.
NOT_IMPORTED = (*HEAVY, "httpx", "httpcore")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("served")
    _build(root / "models", keys_dir=root / "keys")
    with running_server(ServerSide(str(root / "models")), root / "server") as srv:
        yield srv


@pytest.fixture
def library_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per command that went through the library instead of the read path."""
    calls: list[int] = []
    real = modelkeep.cli_readonly.open_registry

    def spy(ctx: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(ctx, **kwargs)

    monkeypatch.setattr(modelkeep.cli_readonly, "open_registry", spy)
    return calls


def _env(server: HttpServer, **extra: str) -> dict[str, str]:
    """The variables that name ``server`` (every other MODELKEEP_* variable unset)."""
    env = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    return {**env, "MODELKEEP_REGISTRY_URL": server.url, "MODELKEEP_TOKEN": server.token, **extra}  # type: ignore[dict-item]


def _invoke(args: list[str], env: dict[str, str], *, fast: bool) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env={**env, ENV_SWITCH: "1" if fast else "0"})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_read_through_a_server_answers_exactly_as_the_library(
    server: HttpServer, library_calls: list[int], args: list[str]
) -> None:
    env = _env(server)
    expected = _invoke(args, env, fast=False)
    assert expected[0] == 0, expected
    assert library_calls == [1]
    assert _invoke(args, env, fast=True) == expected
    assert library_calls == [1], "the read path handed this command to the library"


@pytest.mark.parametrize("args", ERRORS, ids=" ".join)
def test_errors_through_a_server_read_the_same_on_both_paths(server: HttpServer, args: list[str]) -> None:
    env = _env(server)
    expected = _invoke(args, env, fast=False)
    assert expected[0] != 0 and expected[2].startswith("Error:") and "Traceback" not in expected[2], expected
    assert _invoke(args, env, fast=True) == expected


def test_a_wrong_token_and_an_unreachable_server_read_the_same(server: HttpServer) -> None:
    for env in (
        _env(server, MODELKEEP_TOKEN="mkt_forged"),
        {**_env(server), "MODELKEEP_REGISTRY_URL": "http://127.0.0.1:9"},  # nothing listens on port 9
    ):
        expected = _invoke(["list"], env, fast=False)
        assert expected[0] != 0 and expected[2].startswith("Error:") and "Traceback" not in expected[2], expected
        assert _invoke(["list"], env, fast=True) == expected


def test_the_server_named_by_a_config_file_or_a_models_dir(
    server: HttpServer, library_calls: list[int], tmp_path: Path
) -> None:
    """``registry_url`` and ``token`` from a config file, and a ``models_dir`` that is the server's
    URL: read the same through both paths, on the read path."""
    config = tmp_path / "config.yaml"
    config.write_text(f"persistence:\n  registry_url: {server.url}\n  token: {server.token}\n  read_timeout: 30\n")
    no_vars = {k: None for k in os.environ if k.startswith("MODELKEEP_")}
    for args, env in (
        (["--config", str(config), "list"], no_vars),
        (["--models-dir", server.url, "info", "--model-name", "churn"], {**no_vars, "MODELKEEP_TOKEN": server.token}),
    ):
        library_calls.clear()
        expected = _invoke(args, env, fast=False)  # type: ignore[arg-type]
        assert expected[0] == 0, expected
        assert _invoke(args, env, fast=True) == expected  # type: ignore[arg-type]
        assert library_calls == [1]


def test_a_local_models_dir_on_the_command_line_wins_over_the_servers_variable(
    server: HttpServer, library_calls: list[int], tmp_path: Path
) -> None:
    """``--models-dir DIR`` opens DIR, as ``ModelPersistence("DIR")`` does, whatever
    ``MODELKEEP_REGISTRY_URL`` says: on both paths the command reads the local registry."""
    from modelkeep import ModelPersistence

    with ModelPersistence(tmp_path / "local") as local:
        local.save({"w": 1}, "only_here", "1.0.0")
    args = ["--models-dir", str(tmp_path / "local"), "list"]
    env = _env(server, MODELKEEP_TOKEN=None)  # type: ignore[arg-type]  # a token would sign in locally
    expected = _invoke(args, env, fast=False)
    assert expected[0] == 0, expected
    assert "only_here" in expected[1] and "churn" not in expected[1]
    assert _invoke(args, env, fast=True) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--model-name", "churn"],
        ["info", "--model-name", "churn@production"],
        ["search", "accuracy > 0.5"],
    ],
    ids=" ".join,
)
def test_reads_through_a_server_import_no_heavy_library_nor_httpx(
    server: HttpServer, args: list[str], tmp_path: Path
) -> None:
    settings = {"MODELKEEP_REGISTRY_URL": server.url, "MODELKEEP_TOKEN": server.token}
    result, names = _imported_modules(args, tmp_path, settings)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "modelkeep.api.quick" in names  # the server was asked, through the quick path
    assert not [m for m in names if m.split(".")[0] in NOT_IMPORTED]
