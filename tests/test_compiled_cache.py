"""The compiled statements shared by the SQLite indexes of one process (issue #29: the first save
into a fresh registry compiled every statement of a save again, on the new engine's own cache)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.sql import compiler

from modelkeep import ModelPersistence
from modelkeep.index.sql import SHARED_COMPILED, SharedCompiledCache


def _count_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement compiled from now on (DDL has a compiler of its own)."""
    compiled: list[str] = []
    original = compiler.SQLCompiler.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        compiled.append(self.string)

    monkeypatch.setattr(compiler.SQLCompiler, "__init__", counting)
    return compiled


def test_a_fresh_registry_first_save_compiles_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ModelPersistence(models_dir=str(tmp_path / "a"))
    first.save({"w": [1, 2, 3]}, "m", "1")
    first.save({"w": [1, 2, 3, 4]}, "m", "2")  # and the statements of a save with a previous version
    fresh = ModelPersistence(models_dir=str(tmp_path / "b"))
    fresh.ensure_registry()  # creating the index is not the save
    compiled = _count_compiles(monkeypatch)
    fresh.save({"w": [5]}, "m", "1")
    fresh.save({"w": [6]}, "m", "2")
    assert compiled == []
    # each index still reads and writes its own database
    assert list(fresh.list_versions("m")) == ["1", "2"]
    assert fresh.load("m", "1") == {"w": [5]}
    assert first.load("m", "2") == {"w": [1, 2, 3, 4]}
    first.delete("m", "1")
    assert list(first.list_versions("m")) == ["2"]
    assert list(fresh.list_versions("m")) == ["1", "2"]
    first.close()
    fresh.close()


def test_the_first_registry_of_a_process_fills_the_shared_cache(tmp_path: Path) -> None:
    registry = ModelPersistence(models_dir=str(tmp_path / "a"))
    registry.save({"w": 1}, "shared-cache-model", "1")
    assert len(SHARED_COMPILED) > 0
    registry.close()


def _dialect(**changes: Any) -> Any:
    config = {
        "server_version_info": (3, 45, 1),
        "paramstyle": "qmark",
        "positional": True,
        "label_length": None,
        "max_identifier_length": 9999,
        "insert_returning": True,
        "use_insertmanyvalues": True,
    }
    return types.SimpleNamespace(**{**config, **changes})


@pytest.mark.parametrize(
    "change",
    [
        {"server_version_info": (3, 30, 0)},
        {"paramstyle": "named", "positional": False},
        {"insert_returning": False},
        {"max_identifier_length": 63},
    ],
)
def test_dialects_configured_differently_do_not_share_statements(change: dict[str, Any]) -> None:
    cache = SharedCompiledCache(10)
    cache[(_dialect(), "statement", (), False, False)] = "compiled for the first dialect"
    assert cache.get((_dialect(), "statement", (), False, False)) == "compiled for the first dialect"
    assert cache.get((_dialect(**change), "statement", (), False, False)) is None
    assert cache.get((_dialect(), "another statement", (), False, False)) is None
