"""The suite's own isolation: what conftest.py promises every test holds however the test uses
its fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelkeep import ModelPersistence, quarantine


def test_the_private_config_dir_outlives_a_tests_monkeypatch_undo(
    private_config_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A test that calls ``monkeypatch.undo()`` to drop its hooks keeps its own config folder: its
    saves are signed with its own per-user key, and its loads trust them (no quarantine child)."""
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.undo()
    assert os.environ["MODELKEEP_CONFIG_DIR"] == str(private_config_dir)
    assert os.environ["MODELKEEP_CACHE_DIR"] == str(private_config_dir.parent / "cache")
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.ensure_registry()
        p.save_version({"a": 1}, "m")
        before = quarantine.children_started()
        assert p.load("m") == {"a": 1}
        assert quarantine.children_started() == before
    assert (private_config_dir / "signing_key.pem").is_file()


@pytest.fixture(scope="module")
def module_settings() -> tuple[str, str]:
    return os.environ["MODELKEEP_CONFIG_DIR"], os.environ["MODELKEEP_CACHE_DIR"]


def test_module_scoped_fixtures_never_see_the_real_home(module_settings: tuple[str, str]) -> None:
    """Set up before any test's private folder, a module fixture gets the session's, not ~/.config."""
    for folder in module_settings:
        assert not Path(folder).is_relative_to(Path.home()), folder
