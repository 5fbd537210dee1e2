"""The read-only path of ``list``, ``info`` and ``search`` (modelkeep/cli_readonly.py).

Every command runs twice on the same registry: through the library
(``MODELKEEP_CLI_FAST_PATH=0``) and through the read-only path; exit code, stdout
and stderr must be identical, ``--json`` included. The read-only path must also
really serve the commands it can (no fallback to the library), leave an old or a
newer index to the library, and keep SQLAlchemy, pydantic, pandas and numpy out of
the process (checked with ``python -X importtime`` in a subprocess).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modelkeep.cli_readonly
from modelkeep import ModelPersistence
from modelkeep.cli import cli
from modelkeep.cli_readonly import ENV_SWITCH
from modelkeep.index.readonly import ReadOnlyIndex

DATA = Path(__file__).resolve().parent / "data"
SRC = Path(__file__).resolve().parent.parent / "src"
HEAVY = ("sqlalchemy", "pydantic", "pandas", "numpy")


def _build(models_dir: Path) -> None:
    with ModelPersistence(models_dir) as p:
        for i, version in enumerate(["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc1", "legacy"]):
            p.save(
                {"w": i},
                "churn",
                version,
                accuracy=0.5 + i / 10,
                dataset=f"v{i % 2}",
                metrics={"auc": 0.7 + i / 100},
                note="line one\nline two" if i == 1 else "plain",
            )
        p.save({"w": 9}, "churn", "1.2.0", overwrite=True, accuracy=0.95, dataset="v7")
        p.save([1, 2, 3], "fraud", "0.1.0", accuracy=0.3, flag=True)
        p.save([4], "fraud", "0.2.0", accuracy=0.99)
        p.save("tiny", "empty_soon", "1.0.0")
        p.set_alias("churn", "production", "1.10.0")
        p.set_alias("churn", "staging", "1.10.0")
        p.set_alias("fraud", "production", "0.1.0")
        p.set_tag("churn", "stage", "prod", version="1.10.0")
        p.set_tag("churn", "owner", "ml-team")  # a model-level tag
        p.set_tag("fraud", "stage", "dev", version="0.2.0")
        p.set_description("churn", "Churn model, retrained weekly", version="1.10.0")
        p.set_description("churn", "the model's own description")
        p.delete("churn", "1.0.0")  # in the trash
        p.delete("empty_soon", "1.0.0")  # a model with nothing live


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    _build(models)
    return models


COMMANDS: list[list[str]] = [
    ["list"],
    ["list", "--json"],
    ["list", "--model-name", "churn"],
    ["list", "--model-name", "churn", "--json"],
    ["list", "--model-name", "fraud", "--json"],
    ["info", "--model-name", "churn"],
    ["info", "--model-name", "churn", "--json"],
    ["info", "--model-name", "churn", "--version", "1.2.0", "--json"],
    ["info", "--model-name", "churn", "--version", "1.10.0"],
    ["info", "--model-name", "churn@production", "--json"],
    ["info", "--model-name", "churn", "--version", "@staging", "--json"],
    ["info", "--model-name", "fraud", "--version", "0.1.0"],
    ["search", "--json"],
    ["search"],
    ["search", "accuracy > 0.5", "--json"],
    ["search", "accuracy > 0.5 AND tags.stage = 'prod'"],
    ["search", "metrics.auc >= 0.7", "--order-by", "-accuracy", "--limit", "2", "--json"],
    ["search", "version >= '1.2.0' OR alias = 'production'", "--order-by", "version", "--json"],
    ["search", "note LIKE '%one%' OR dataset ILIKE 'V7'", "--json"],
    ["search", "--model-name", "fraud", "--order-by", "tags.stage DESC", "--json"],
]

#: Commands the read-only path hands to the library: their errors must read the same.
ERRORS: list[list[str]] = [
    ["list", "--model-name", "nope"],
    ["list", "--model-name", "empty_soon"],
    ["list", "--model-name", "bad name!"],
    ["info", "--model-name", "chrun"],
    ["info", "--model-name", "churn", "--version", "1.0.0"],  # trashed
    ["info", "--model-name", "churn", "--version", "9.9.9"],
    ["info", "--model-name", "churn@nope"],
    ["info", "--model-name", "churn@production", "--version", "1.2.0"],
    ["info", "--model-name", "empty_soon"],
    ["search", "nosuchfield > 1"],
    ["search", "accuracy >"],
    ["search", "accuracy > 0.5", "--page-token", "garbage"],
]


def _invoke(models: Path, args: list[str], *, fast: bool) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--models-dir", str(models), *args], env={ENV_SWITCH: "1" if fast else "0"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts how often the read-only path opened an index, and how often it asked the library."""
    counts = {"read_only": 0, "library": 0}
    real_open = ReadOnlyIndex.open.__func__  # type: ignore[attr-defined]
    real_library = modelkeep.cli_readonly.open_registry

    def spy_open(cls: type[ReadOnlyIndex], path: Path) -> ReadOnlyIndex | None:
        found = real_open(cls, path)
        counts["read_only"] += found is not None
        return found  # type: ignore[no-any-return]

    def spy_library(ctx: Any, **kwargs: Any) -> Any:
        counts["library"] += 1
        return real_library(ctx, **kwargs)

    monkeypatch.setattr(ReadOnlyIndex, "open", classmethod(spy_open))
    monkeypatch.setattr(modelkeep.cli_readonly, "open_registry", spy_library)
    yield counts


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_read_only_path_answers_exactly_as_the_library(
    registry: Path, served: dict[str, int], args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(registry.parent)
    expected = _invoke(registry, args, fast=False)
    assert expected[0] == 0, expected
    assert served == {"read_only": 0, "library": 1}
    got = _invoke(registry, args, fast=True)
    assert got == expected
    assert served == {"read_only": 1, "library": 1}, "the read-only path handed this command to the library"


@pytest.mark.parametrize("args", ERRORS, ids=" ".join)
def test_errors_read_the_same_on_both_paths(registry: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(registry.parent)
    expected = _invoke(registry, args, fast=False)
    assert expected[0] != 0 and expected[2].startswith("Error:") and "Traceback" not in expected[2], expected
    assert _invoke(registry, args, fast=True) == expected


def test_search_pages_are_the_same_on_both_paths(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(registry.parent)
    import json

    pages: dict[bool, list[Any]] = {}
    for fast in (False, True):
        token, seen = None, []
        while True:
            extra = ["--page-token", token] if token else []
            code, out, _err = _invoke(
                registry, ["search", "--order-by", "-accuracy", "--limit", "2", "--json", *extra], fast=fast
            )
            assert code == 0
            page = json.loads(out)
            seen.append(page)
            token = page["next_page_token"]
            if token is None:
                break
        pages[fast] = seen
    assert pages[True] == pages[False] and len(pages[True]) > 2


def test_settings_from_any_source_go_through_the_library(
    registry: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file or a MODELKEEP_* setting: validated by config.py, so the library path."""
    monkeypatch.chdir(registry.parent)
    monkeypatch.setenv("MODELKEEP_COMPRESS", "false")
    assert _invoke(registry, ["list"], fast=True)[0] == 0
    monkeypatch.delenv("MODELKEEP_COMPRESS")
    (registry.parent / "config.yaml").write_text(f"persistence:\n  models_dir: {registry}\n")
    assert CliRunner().invoke(cli, ["list"]).exit_code == 0
    assert served == {"read_only": 0, "library": 2}
    monkeypatch.setenv("MODELKEEP_COMPRESS", "sometimes")
    bad = CliRunner().invoke(cli, ["--models-dir", str(registry), "list"])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: invalid value for MODELKEEP_COMPRESS")


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_modelkeep_models_dir_is_read_by_the_read_only_path_with_the_same_answers(
    registry: Path, served: dict[str, int], args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODELKEEP_MODELS_DIR is a plain string to config.py too: the read-only path honours it,
    and a --models-dir option still wins over it, as in the library."""
    monkeypatch.chdir(registry.parent)
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(registry))
    runs = {fast: CliRunner().invoke(cli, args, env={ENV_SWITCH: "1" if fast else "0"}) for fast in (False, True)}
    assert runs[False].exit_code == 0, runs[False].stderr
    assert (runs[True].exit_code, runs[True].stdout, runs[True].stderr) == (
        runs[False].exit_code,
        runs[False].stdout,
        runs[False].stderr,
    )
    assert served == {"read_only": 1, "library": 1}
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(registry.parent / "elsewhere"))
    assert _invoke(registry, args, fast=True) == _invoke(registry, args, fast=False)
    assert served == {"read_only": 2, "library": 2}


def test_modelkeep_models_dir_with_another_setting_goes_through_the_library(
    registry: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(registry.parent)
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(registry))
    monkeypatch.setenv("MODELKEEP_COMPRESS", "sometimes")
    bad = CliRunner().invoke(cli, ["list"])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: invalid value for MODELKEEP_COMPRESS")
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", "")
    monkeypatch.delenv("MODELKEEP_COMPRESS")
    empty = {fast: _outcome_of(["list"], fast) for fast in (False, True)}
    assert empty[True] == empty[False]
    assert served["read_only"] == 0


def _outcome_of(args: list[str], fast: bool) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env={ENV_SWITCH: "1" if fast else "0"})
    return result.exit_code, result.stdout, result.stderr


def test_an_old_registry_is_upgraded_by_the_library_then_read_the_same(
    tmp_path: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    library, fast = tmp_path / "a", tmp_path / "b"
    shutil.copytree(DATA / "registry_0_1", library)
    shutil.copytree(DATA / "registry_0_1", fast)
    for args in (["list", "--json"], ["list", "--model-name", "churn", "--json"], ["info", "--model-name", "churn"]):
        expected = _invoke(library, args, fast=False)
        assert expected[0] == 0, expected
        code, out, err = _invoke(fast, args, fast=True)
        assert (code, out.replace(str(fast), str(library)), err) == expected
    assert served["read_only"] == 2  # the first command upgraded the index; the next two read it directly


def test_a_newer_registry_still_asks_for_an_upgrade(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(registry.parent)
    with sqlite3.connect(registry / "registry.db") as conn:
        conn.execute("UPDATE modelkeep_info SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    for args in (["list"], ["info", "--model-name", "churn"], ["search", "accuracy > 0"]):
        expected = _invoke(registry, args, fast=False)
        assert expected[0] == 1 and "upgrade modelkeep" in expected[2]
        assert _invoke(registry, args, fast=True) == expected


def test_a_registry_url_goes_through_the_library(
    registry: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (any --registry-url) is the library's: only its routing is checked here."""
    monkeypatch.chdir(registry.parent)
    url = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"
    result = CliRunner().invoke(cli, ["--models-dir", str(registry), "--registry-url", url, "list"])
    assert served == {"read_only": 0, "library": 1}
    assert result.exit_code == 1 and result.stderr.startswith("Error:") and "Traceback" not in result.stderr


def _imported_modules(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_") or k == "MODELKEEP_CONFIG_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelkeep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, names


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list"],
        ["list", "--model-name", "churn"],
        ["info", "--model-name", "churn"],
        ["info", "--model-name", "churn@production", "--json"],
        ["search", "accuracy > 0.5 AND tags.stage = 'prod'", "--limit", "10"],
    ],
    ids=" ".join,
)
def test_read_commands_do_not_import_the_heavy_libraries(registry: Path, args: list[str]) -> None:
    result, names = _imported_modules(["--models-dir", str(registry), *args], registry.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "modelkeep.cli" in names  # the importtime output was read
    assert not [m for m in names if m.split(".")[0] in HEAVY]
