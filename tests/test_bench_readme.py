"""bench/README.md is what ``bench/run.py`` writes: nothing in it lives only in the README.

``bench/run.py`` rewrites the whole README from ``bench/results.json``, the notes of
``bench/notes.md`` (appended to the sections it writes) and the standalone scripts' sections of
``bench/standalone.md``. A figure or a note written only into the README is lost at the next run,
as two stops' notes once were, and a table edited by hand no longer matches the results it claims.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # report.py imports its neighbours as run.py runs it
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_the_readme_is_what_run_py_writes_from_the_results_and_the_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    report = _report(monkeypatch)
    results = json.loads((BENCH / "results.json").read_text(encoding="utf-8"))
    written = report.render(results, "index_scaling.png").splitlines()
    readme = (BENCH / "README.md").read_text(encoding="utf-8").splitlines()
    differ = next((i for i, (a, b) in enumerate(zip(written, readme, strict=False)) if a != b), None)
    assert differ is None and len(written) == len(readme), (
        f"bench/README.md line {(differ or min(len(written), len(readme))) + 1} is not what bench/run.py writes: "
        "put notes in bench/notes.md (run.py's sections) or bench/standalone.md (the standalone scripts'), "
        "and figures in results.json by running the section"
    )
