"""bench/README.md keeps the standalone scripts' sections as bench/standalone.md holds them.

``bench/run.py`` rewrites the whole README from its results and appends ``bench/standalone.md``
as it is, so a figure or a note written into the README's copy of a standalone section, and not
into standalone.md, is lost at the next run (as it was once, for two stops' notes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_readme_ends_with_the_standalone_sections_as_run_py_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # report.py imports its neighbours as run.py runs it
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    standalone = "\n".join(report.standalone_sections()).strip()
    readme = (BENCH / "README.md").read_text(encoding="utf-8")
    first = standalone.splitlines()[0]
    assert first.startswith("## ") and first in readme, first
    assert readme[readme.index(first) :].strip() == standalone, (
        "bench/README.md's standalone sections differ from bench/standalone.md: edit standalone.md, "
        "then copy it into the README (bench/run.py overwrites the README's copy)"
    )
