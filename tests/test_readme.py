"""Every python and bash block in README.md runs as shown.

The blocks run in order, in one fresh temporary folder per README section (``## ...``), so a
block may use the files an earlier block of its section wrote, as a reader following along
would, with ``MODELKEEP_*`` variables cleared and this interpreter's ``bin`` first on PATH. A block
preceded by an HTML comment
``<!-- not run by tests/test_readme.py: <reason> -->`` is skipped, and must give a reason; today
those are the quick start (CI runs it itself), ``pip install`` and the team block that needs real
PostgreSQL and S3 servers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!--(?P<note>[^>]*)-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
SKIP = "not run by tests/test_readme.py:"
#: Sections whose blocks need fixtures (real MLflow stores, a registry to export) and are run as
#: shown by their own tests instead.
RUN_ELSEWHERE = {
    "Moving in: import an MLflow registry": "tests/test_mlflow_import.py",
    "Moving out: portable bundles": "tests/test_bundle.py",
}


def blocks() -> list[tuple[int, str, str, str | None, int]]:
    """(line, language, code, skip reason, section number) for every fenced block."""
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        note = (m.group("note") or "").strip()
        reason = note.removeprefix(SKIP).strip() if note.startswith(SKIP) else None
        section = len(re.findall(r"^## ", text[: m.start()], re.M))
        out.append((text.count("\n", 0, m.start("code")), m.group("lang"), m.group("code"), reason, section))
    return out


def test_every_readme_code_block_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MODELKEEP_GIT"] = "0"
    headings = ["", *re.findall(r"^## (.*)$", README.read_text(), re.M)]
    ran = skipped = 0
    for line, lang, code, reason, section in blocks():
        if lang not in ("python", "bash") or headings[section] in RUN_ELSEWHERE:
            continue
        if reason is not None:
            assert reason, f"README line {line}: a skipped block must say why"
            skipped += 1
            continue
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
        folder = tmp_path / f"section-{section}"
        folder.mkdir(exist_ok=True)
        # Each section is a fresh reader: its own per-user keys, never the real home's.
        env["MODELKEEP_CONFIG_DIR"] = str(folder / ".user-config")
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"README block at line {line} ({lang}) failed:\n{code}\n{proc.stderr[-3000:]}"
        ran += 1
    assert ran >= 6 and skipped <= 5, (ran, skipped)
