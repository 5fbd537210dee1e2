"""The read-only path of ``list``, ``info`` and ``search`` (modelkeep/cli_readonly.py).

Every command runs twice on the same registry, SQLite and PostgreSQL: through the
library (``MODELKEEP_CLI_FAST_PATH=0``) and through the read-only path; exit code,
stdout and stderr must be identical, ``--json`` included, with settings from the
environment, config files and options (modelkeep/plain_settings.py). The read-only
path must also really serve the commands it can (no fallback to the library), leave
an old or a newer index and settings it cannot vouch for to the library, keep
SQLAlchemy, pydantic, pandas, numpy and psycopg out of the process (checked with
``python -X importtime`` in a subprocess), and on PostgreSQL read in one round trip
(``search``: three), treating a hostile index as the library does.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modelkeep.cli_readonly
from modelkeep import ModelPersistence, keys
from modelkeep.cli import cli
from modelkeep.cli_readonly import ENV_SWITCH
from modelkeep.index.readonly import ReadOnlyIndex
from tests.conftest import KEY_VARIABLES, PG_URL, postgres_schema

DATA = Path(__file__).resolve().parent / "data"
SRC = Path(__file__).resolve().parent.parent / "src"
HEAVY = ("sqlalchemy", "pydantic", "pandas", "numpy", "psycopg")


@dataclass
class Registry:
    """A registry built by :func:`_build`: its models folder, its index URL (``None``: the
    folder's ``registry.db``) and the key files of its signed versions."""

    models: Path
    url: str | None
    keys: Path

    def options(self) -> list[str]:
        """The global options that name this registry."""
        return ["--models-dir", str(self.models), *(["--registry-url", self.url] if self.url else [])]


def _build(models_dir: Path, url: str | None = None, keys_dir: Path | None = None) -> None:
    """Versions, overwrites, aliases, tags, descriptions and trash; with ``keys_dir``, fraud's
    versions are signed by a key pair written there and one churn version by an HMAC secret."""
    signer: dict[str, Any] = {}
    if keys_dir is not None:
        key = keys.generate("release")
        keys_dir.mkdir(parents=True, exist_ok=True)
        keys.write_key_file(keys_dir / "release.pem", key.pem())
        keys.write_key_file(keys_dir / "release.pub", key.public.pem(), mode=0o644)
        signer = {"signing_key_file": keys_dir / "release.pem"}
    with ModelPersistence(models_dir, registry_url=url) as p:
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
        p.save("tiny", "empty_soon", "1.0.0")
    with ModelPersistence(models_dir, registry_url=url, **signer) as p:
        p.save([1, 2, 3], "fraud", "0.1.0", accuracy=0.3, flag=True)
        p.save([4], "fraud", "0.2.0", accuracy=0.99)
    if keys_dir is not None:
        with ModelPersistence(models_dir, registry_url=url, signing_key=HMAC_SECRET) as p:
            p.save({"w": 5}, "churn", "3.0.0", accuracy=0.42, dataset="v3")
    with ModelPersistence(models_dir, registry_url=url) as p:
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


HMAC_SECRET = "a-shared-secret"


def _postgres_url(schema: str) -> str:
    """The test database, with ``schema`` first on the search path (libpq's ``options``)."""
    assert PG_URL is not None
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The registry on each index backend (PostgreSQL: a private schema), built once per module:
    the tests that use it only read it."""
    tmp = tmp_path_factory.mktemp(request.param)
    models = tmp / "models"
    with pytest.MonkeyPatch.context() as mp:  # as conftest's private_config_dir, which is per test
        mp.setenv("MODELKEEP_CONFIG_DIR", str(tmp / "builder-config"))
        for name in KEY_VARIABLES:
            mp.delenv(name, raising=False)
        if request.param == "sqlite":
            _build(models, keys_dir=tmp / "keys")
            yield Registry(models, None, tmp / "keys")
            return
        with postgres_schema() as schema:
            url = _postgres_url(schema)
            _build(models, url, keys_dir=tmp / "keys")
            yield Registry(models, url, tmp / "keys")


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    _build(models, keys_dir=tmp_path / "keys")
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
    ["info", "--model-name", "fraud", "--version", "0.2.0", "--json"],  # signed by a key file
    ["info", "--model-name", "churn", "--version", "3.0.0", "--json"],  # signed with an HMAC secret
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


def _invoke(where: Path | Registry, args: list[str], *, fast: bool) -> tuple[int, str, str]:
    options = where.options() if isinstance(where, Registry) else ["--models-dir", str(where)]
    result = CliRunner().invoke(cli, [*options, *args], env={ENV_SWITCH: "1" if fast else "0"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts how often the read-only path opened an index, and how often it asked the library."""
    counts = {"read_only": 0, "library": 0}
    real_open = ReadOnlyIndex.open.__func__  # type: ignore[attr-defined]
    real_postgres = ReadOnlyIndex.open_postgres.__func__  # type: ignore[attr-defined]
    real_library = modelkeep.cli_readonly.open_registry

    def spy_open(cls: type[ReadOnlyIndex], *args: Any) -> ReadOnlyIndex | None:
        found = real_open(cls, *args)
        counts["read_only"] += found is not None
        return found  # type: ignore[no-any-return]

    def spy_postgres(cls: type[ReadOnlyIndex], *args: Any) -> ReadOnlyIndex | None:
        found = real_postgres(cls, *args)
        counts["read_only"] += found is not None
        return found  # type: ignore[no-any-return]

    def spy_library(ctx: Any, **kwargs: Any) -> Any:
        counts["library"] += 1
        return real_library(ctx, **kwargs)

    monkeypatch.setattr(ReadOnlyIndex, "open", classmethod(spy_open))
    monkeypatch.setattr(ReadOnlyIndex, "open_postgres", classmethod(spy_postgres))
    monkeypatch.setattr(modelkeep.cli_readonly, "open_registry", spy_library)
    yield counts


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_read_only_path_answers_exactly_as_the_library(
    backend: Registry, served: dict[str, int], args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(backend.models.parent)
    expected = _invoke(backend, args, fast=False)
    assert expected[0] == 0, expected
    assert served == {"read_only": 0, "library": 1}
    got = _invoke(backend, args, fast=True)
    assert got == expected
    assert served == {"read_only": 1, "library": 1}, "the read-only path handed this command to the library"


@pytest.mark.parametrize("args", ERRORS, ids=" ".join)
def test_errors_read_the_same_on_both_paths(
    backend: Registry, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(backend.models.parent)
    expected = _invoke(backend, args, fast=False)
    assert expected[0] != 0 and expected[2].startswith("Error:") and "Traceback" not in expected[2], expected
    assert _invoke(backend, args, fast=True) == expected


def test_search_pages_are_the_same_on_both_paths(backend: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(backend.models.parent)
    import json

    pages: dict[bool, list[Any]] = {}
    for fast in (False, True):
        token, seen = None, []
        while True:
            extra = ["--page-token", token] if token else []
            code, out, _err = _invoke(
                backend, ["search", "--order-by", "-accuracy", "--limit", "2", "--json", *extra], fast=fast
            )
            assert code == 0
            page = json.loads(out)
            seen.append(page)
            token = page["next_page_token"]
            if token is None:
                break
        pages[fast] = seen
    assert pages[True] == pages[False] and len(pages[True]) > 2


#: A few commands of each kind, for the settings below.
SOME_COMMANDS: list[list[str]] = [
    ["list"],
    ["list", "--model-name", "churn", "--json"],
    ["info", "--model-name", "churn@production"],
    ["info", "--model-name", "fraud", "--version", "0.2.0", "--json"],
    ["info", "--model-name", "churn", "--version", "3.0.0"],
    ["search", "accuracy > 0.4 AND tags.stage = 'prod'", "--order-by", "-accuracy", "--json"],
]


def _settings(where: Registry, case: str, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The environment and global options of one way of naming ``where``'s registry with settings."""
    index = {"MODELKEEP_REGISTRY_URL": where.url} if where.url else {}
    pub, pem = where.keys / "release.pub", where.keys / "release.pem"
    if case == "environment":
        env = {
            "MODELKEEP_MODELS_DIR": str(where.models),
            **index,
            "MODELKEEP_LOG_LEVEL": "warning",
            "MODELKEEP_SERIALIZATION_FORMAT": "pickle",
            "MODELKEEP_COMPRESS": "false",
            "MODELKEEP_STORAGE_OPTIONS": "{}",
            "MODELKEEP_TRUSTED_TYPES": "mypkg.Model,other.Thing",
            "MODELKEEP_CONNECT_TIMEOUT": "5",
            "MODELKEEP_READ_TIMEOUT": "12.5",
            "MODELKEEP_PROTECTED_ALIASES": "production,prod-eu",
            "MODELKEEP_PROTECTED_ALIAS_USERS": "alice",
            "MODELKEEP_TRUSTED_RELEASERS": "",
            "MODELKEEP_QUARANTINE": "never",
            "MODELKEEP_QUARANTINE_TIMEOUT": "30",
            "MODELKEEP_QUARANTINE_MEMORY_MB": "auto",
            "MODELKEEP_MAX_LOAD_MEMORY": "2GiB",
            "MODELKEEP_MAX_CONCURRENCY": "4",
            "MODELKEEP_PART_SIZE": "16MiB",
            "MODELKEEP_CACHE_MAX_BYTES": "off",
            "MODELKEEP_TOKEN": "",
        }
        return env, []
    if case == "keys from the environment":  # changes what info says about signatures
        env = {
            "MODELKEEP_MODELS_DIR": str(where.models),
            **index,
            "MODELKEEP_TRUSTED_KEYS": str(pub),
            "MODELKEEP_SIGNING_KEY": HMAC_SECRET,
            "MODELKEEP_REQUIRE_SIGNATURES": "no",
        }
        return env, []
    if case == "registry_path or a sqlite URL":  # the index named apart from the models folder
        if where.url:
            return {"MODELKEEP_REGISTRY_URL": where.url}, ["--models-dir", str(where.models)]
        return {"MODELKEEP_REGISTRY_PATH": str(where.models)}, ["--models-dir", str(where.models)]
    if case == "a sqlite:/// URL":
        url = where.url or f"sqlite:///{where.models / 'registry.db'}"
        return {"MODELKEEP_MODELS_DIR": str(where.models)}, ["--registry-url", url]
    registry_url = f"  registry_url: '{where.url}'\n" if where.url else ""
    text = (
        "logging:\n  level: ERROR\npersistence:\n"
        f"  models_dir: {where.models}\n{registry_url}"
        "  serialization_format: joblib\n  compress: zstd:3\n  storage_options: {}\n"
        f"  signing_key_file: {pem}\n  trusted_keys: [{pub}]\n  require_signatures: true\n"
        "  protected_aliases: [production]\n  connect_timeout: 3\n  quarantine_memory_mb: 512\n"
        "  max_load_memory: 1073741824\n  cache_max_bytes: 20GiB\n  trusted_types: []\n"
    )
    if case == "config.yaml":
        (tmp / "config.yaml").write_text(text)
        return {}, []
    if case == "--config":
        (tmp / "other.yaml").write_text(text)
        return {}, ["--config", str(tmp / "other.yaml")]
    assert case == "--config and the environment"  # the environment and options win over the file
    (tmp / "other.yaml").write_text(text.replace(str(where.models), str(tmp / "nowhere")))
    env = {"MODELKEEP_MODELS_DIR": str(where.models), "MODELKEEP_REQUIRE_SIGNATURES": "false"}
    options = ["--config", str(tmp / "other.yaml"), "--quiet", "--trusted-key", str(pub), "--quarantine", "never"]
    return env, [*options, "--max-load-memory", "4GiB", "--path", str(tmp), "--trust", "mypkg.Model"]


@pytest.mark.parametrize(
    "case",
    [
        "environment",
        "keys from the environment",
        "registry_path or a sqlite URL",
        "a sqlite:/// URL",
        "config.yaml",
        "--config",
        "--config and the environment",
    ],
)
def test_settings_from_every_source_are_read_by_the_read_only_path_with_the_same_answers(
    backend: Registry, served: dict[str, int], case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env, options = _settings(backend, case, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for args in SOME_COMMANDS:
        runs = {
            fast: CliRunner().invoke(cli, [*options, *args], env={ENV_SWITCH: "1" if fast else "0"})
            for fast in (False, True)
        }
        expected = (runs[False].exit_code, runs[False].stdout, runs[False].stderr)
        assert expected[0] == 0, expected
        assert (runs[True].exit_code, runs[True].stdout, runs[True].stderr) == expected, args
    assert served == {"read_only": len(SOME_COMMANDS), "library": len(SOME_COMMANDS)}


#: Settings the read-only path leaves to the library: invalid, or more than a read (see plain_settings.py).
LIBRARY_SETTINGS: dict[str, tuple[dict[str, str], str | None]] = {
    "bad compress": ({"MODELKEEP_COMPRESS": "sometimes"}, None),
    "bad codec for the format": ({"MODELKEEP_SERIALIZATION_FORMAT": "pickle", "MODELKEEP_COMPRESS": "zstd:3"}, None),
    "unknown format": ({"MODELKEEP_SERIALIZATION_FORMAT": "parquet"}, None),
    "bad quarantine": ({"MODELKEEP_QUARANTINE": "maybe"}, None),
    "zero timeout": ({"MODELKEEP_CONNECT_TIMEOUT": "0"}, None),
    "part size under 5 MiB": ({"MODELKEEP_PART_SIZE": "1MiB"}, None),
    "bad size": ({"MODELKEEP_MAX_LOAD_MEMORY": "lots"}, None),
    "bad JSON": ({"MODELKEEP_STORAGE_OPTIONS": "{nope"}, None),
    "bad boolean": ({"MODELKEEP_REQUIRE_SIGNATURES": "sure"}, None),
    "spaced boolean": ({"MODELKEEP_REQUIRE_SIGNATURES": " yes"}, None),
    "missing key file": ({"MODELKEEP_TRUSTED_KEYS": "/nonexistent/key.pub"}, None),
    "a token": ({"MODELKEEP_TOKEN": "mk_not_a_real_token"}, None),
    "a log file": ({}, "logging:\n  file: logs/modelkeep.log\n"),
    "unknown key": ({}, "persistence:\n  models_dri: elsewhere\n"),
    "unknown section": ({}, "storage:\n  models_dir: elsewhere\n"),
    "not YAML": ({}, "persistence: [unclosed\n"),
    "not a mapping": ({}, "- a list\n"),
    "a typed value of another type": ({}, "persistence:\n  connect_timeout: true\n"),
    "a remote models folder": ({"MODELKEEP_MODELS_DIR": "memory://bucket/models"}, None),
}


@pytest.mark.parametrize("case", list(LIBRARY_SETTINGS), ids=str)
def test_settings_the_read_only_path_cannot_vouch_for_go_to_the_library(
    backend: Registry, served: dict[str, int], case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env, config = LIBRARY_SETTINGS[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    options = [] if "MODELKEEP_MODELS_DIR" in env else backend.options()
    for args in (["list"], ["info", "--model-name", "churn"], ["search", "accuracy > 0.5"]):
        runs = {
            fast: CliRunner().invoke(cli, [*options, *args], env={ENV_SWITCH: "1" if fast else "0"})
            for fast in (False, True)
        }
        outcome = [(r.exit_code, r.stdout, r.stderr) for r in (runs[False], runs[True])]
        assert outcome[0] == outcome[1], args
        assert "Traceback" not in outcome[0][2]
    assert served["library"] == 6  # each command, on each path


def test_a_missing_config_file_reads_the_same(
    backend: Registry, served: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for config in (tmp_path / "missing.yaml", tmp_path):
        expected = _invoke(backend, ["--config", str(config), "list"], fast=False)
        assert expected[0] == 1 and expected[2].startswith("Error: config file"), expected
        assert _invoke(backend, ["--config", str(config), "list"], fast=True) == expected
    assert served["read_only"] == 0


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


def test_a_database_the_read_only_path_cannot_reach_goes_to_the_library(
    registry: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server there: the read-only path's connection fails, and the library reports it."""
    monkeypatch.chdir(registry.parent)
    url = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"
    outcomes = [_invoke(registry, ["--registry-url", url, "list"], fast=fast) for fast in (False, True)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 1 and outcomes[0][2].startswith("Error:") and "Traceback" not in outcomes[0][2]
    assert served == {"read_only": 0, "library": 2}


@pytest.mark.postgres
def test_a_database_without_a_registry_reads_the_same(
    tmp_path: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables missing (nothing saved yet), or another registry's newer schema: the library's errors."""
    monkeypatch.chdir(tmp_path)
    with postgres_schema() as schema:
        url = _postgres_url(schema)
        for args in (["list"], ["info", "--model-name", "churn"], ["search", "accuracy > 1"]):
            expected = _invoke(tmp_path, ["--registry-url", url, *args], fast=False)
            assert expected[0] == 1 and "no modelkeep registry" in expected[2], expected
            assert _invoke(tmp_path, ["--registry-url", url, *args], fast=True) == expected
        with ModelPersistence(tmp_path / "models", registry_url=url) as p:
            p.save({"w": 1}, "churn", "1.0.0")
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE modelkeep_info SET value = '99' WHERE key = 'schema_version'")
        for args in (["list"], ["info", "--model-name", "churn"]):
            expected = _invoke(tmp_path / "models", ["--registry-url", url, *args], fast=False)
            assert expected[0] == 1 and "upgrade modelkeep" in expected[2], expected
            assert _invoke(tmp_path / "models", ["--registry-url", url, *args], fast=True) == expected
    # the read-only path connected, found no registry (or another schema) in its first round
    # trip, and left each of the 5 commands to the library, as the library path did
    assert served == {"read_only": 5, "library": 10}


def _imported_modules(
    args: list[str], cwd: Path, settings: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_") or k == "MODELKEEP_CONFIG_DIR"}
    env.update(settings or {})
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


@pytest.mark.parametrize(
    "args", [["list"], ["info", "--model-name", "fraud"], ["search", "accuracy > 0.5"]], ids=" ".join
)
def test_read_commands_with_settings_do_not_import_the_heavy_libraries(
    backend: Registry, args: list[str], tmp_path: Path
) -> None:
    """Settings from a config file and the environment, and PostgreSQL: still no SQLAlchemy or pydantic."""
    env, _options = _settings(backend, "environment", tmp_path)
    _settings(backend, "config.yaml", tmp_path)
    result, names = _imported_modules(args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "modelkeep.plain_settings" in names and "yaml" in names  # the settings were read
    assert ("modelkeep.index.libpq" in names) == (backend.url is not None)  # libpq itself, not psycopg
    assert not [m for m in names if m.split(".")[0] in HEAVY]


def _open_index(where: Registry) -> ReadOnlyIndex:
    """The read-only index of ``where``, as the read path opens it."""
    if where.url:
        index = ReadOnlyIndex.open_postgres(where.url, 10, 10)
    else:
        index = ReadOnlyIndex.open(where.models / "registry.db")
    assert index is not None
    return index


def _search(index: ReadOnlyIndex) -> list[Any]:
    from modelkeep.search.api import search_versions_in

    return search_versions_in(index.database(), "accuracy > 0.4 AND tags.stage = 'prod'").items


READS: dict[str, Any] = {
    "list": lambda index: index.summaries(),
    "list --model-name": lambda index: index.list_records("churn"),
    "info": lambda index: index.resolve("churn", None),
    "info --version": lambda index: index.resolve("churn", "1.2.0"),
    "info name@alias": lambda index: index.resolve("churn", None, "production"),
    "search": _search,
}


def test_on_postgresql_a_read_takes_one_round_trip_and_a_search_three(backend: Registry) -> None:
    """BEGIN, the schema check and every statement of a read go in one pipeline after the
    connection's own round trips; a search needs three (its field names, the page, the page's
    aliases and tags), each depending on the one before. SQLite has no network: none."""
    for name, read in READS.items():
        index = _open_index(backend)
        try:
            assert read(index), name
            assert index.round_trips == ((3 if name == "search" else 1) if backend.url else 0), name
        finally:
            index.close()


@pytest.mark.postgres
def test_a_hostile_postgres_index_reads_the_same_on_both_paths(
    tmp_path: Path, served: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record replayed into another version's row is refused (info) or listed as damaged by
    both paths alike; a column whose type was changed under the read path makes it ask the
    library instead of reading the values its own way."""
    import psycopg

    monkeypatch.chdir(tmp_path)
    commands = [
        ["list", "--model-name", "churn", "--json"],
        ["info", "--model-name", "churn"],
        ["info", "--model-name", "churn@production", "--json"],
        ["search", "accuracy > 0.1", "--json"],
    ]
    with postgres_schema() as schema:
        where = Registry(tmp_path / "models", _postgres_url(schema), tmp_path / "keys")
        with ModelPersistence(where.models, registry_url=where.url) as p:
            p.save({"w": 1}, "churn", "1.0.0", accuracy=0.5)
            p.save({"w": 2}, "churn", "2.0.0", accuracy=0.9)
            p.set_tag("churn", "stage", "prod", version="2.0.0")
            p.set_alias("churn", "production", "2.0.0")
        with psycopg.connect(where.url or "", autocommit=True) as conn:
            conn.execute(
                "UPDATE modelkeep_versions SET record = (SELECT record FROM modelkeep_versions"
                " WHERE version = '1.0.0') WHERE version = '2.0.0'"
            )
        outcomes = [(_invoke(where, args, fast=False), _invoke(where, args, fast=True)) for args in commands]
        assert [library for library, _ in outcomes] == [fast for _, fast in outcomes]
        assert "carries a record signed for churn 1.0.0" in outcomes[1][0][2]
        assert "damaged" in outcomes[0][0][1]
        assert served == {"read_only": 4, "library": 4}  # the read path answered each itself
        with psycopg.connect(where.url or "", autocommit=True) as conn:
            conn.execute("ALTER TABLE modelkeep_tags ALTER COLUMN value TYPE json USING to_json(value)")
        for args in commands:
            assert _invoke(where, args, fast=True) == _invoke(where, args, fast=False), args
        assert served == {"read_only": 8, "library": 12}  # the read path asked the library each time


def test_a_page_token_with_a_value_libpq_does_not_send_reads_the_same(
    backend: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page token is the caller's text: a NUL in one of its values (which PostgreSQL text
    cannot hold, and libpq would cut short) is refused alike by both paths on PostgreSQL, in
    one line (the driver's traceback before), and read alike on SQLite."""
    import base64
    import json

    monkeypatch.chdir(backend.models.parent)
    first = ["search", "--limit", "2", "--json"]
    token = json.loads(_invoke(backend, first, fast=True)[1])["next_page_token"]
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data["k"] = [v + "\x00" if isinstance(v, str) else v for v in data["k"]]
    assert any("\x00" in v for v in data["k"] if isinstance(v, str))
    hostile = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")
    outcomes = [_invoke(backend, [*first, "--page-token", hostile], fast=fast) for fast in (False, True)]
    assert outcomes[0] == outcomes[1]
    assert "Traceback" not in outcomes[0][2]
