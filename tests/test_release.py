"""The release number, as a user sees it: the package, the CLI and the changelog agree (issue 23)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import modelkeep

ROOT = Path(__file__).resolve().parents[1]


def test_this_release_is_0_2_0_everywhere_a_user_looks() -> None:
    assert modelkeep.__version__ == "0.2.0"
    shown = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "modelkeep 0.2.0"


def test_the_changelog_starts_with_this_release_and_tells_a_0_1_user_what_to_do() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## (\S+)$", text, re.M)
    if releases[0] == "Unreleased":  # what main has gained since this release, above it
        unreleased = text[text.index("## Unreleased\n") : text.index(f"\n## {modelkeep.__version__}\n")]
        assert "### Upgrading from " + modelkeep.__version__.rsplit(".", 1)[0] in unreleased
        releases = releases[1:]
    assert releases[:2] == [modelkeep.__version__, "0.1.0"], releases
    this_release = text[text.index(f"## {modelkeep.__version__}\n") : text.index("\n## 0.1.0\n")]
    assert "### Upgrading from 0.1" in this_release
    assert "upgraded in place" in this_release and "tests/test_old_registries.py" in this_release
