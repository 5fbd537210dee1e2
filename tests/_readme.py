"""Code blocks of the README and the docs/ pages, to run them exactly as shown.

A page is cut into sections at its ``## `` headings; a block belongs to the section above it.
A block right after an HTML comment ``<!-- not run by tests/test_readme.py: <reason> -->`` is
not run, and must give a reason.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: Every page whose code blocks the tests run: the README, then docs/*.md.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--(?P<note>[^>]*)-->\s*\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```", re.S | re.M)
SKIP = "not run by tests/test_readme.py:"


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the first code line
    language: str
    code: str
    skip: str | None  # the reason given for not running it, or None
    section: int  # 0 before the first ``## `` heading
    heading: str  # the ``## `` heading above it ("" before the first)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)} line {self.line}"


def page_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        note = (m.group("note") or "").strip()
        reason = note.removeprefix(SKIP).strip() if note.startswith(SKIP) else None
        headings = re.findall(r"^## (.*)$", text[: m.start()], re.M)
        out.append(
            Block(
                page=page,
                line=text.count("\n", 0, m.start("code")) + 1,
                language=m.group("lang"),
                code=m.group("code"),
                skip=reason,
                section=len(headings),
                heading=headings[-1].strip() if headings else "",
            )
        )
    return out


def readme_blocks(heading: str, language: str, page: Path | str = README) -> list[str]:
    """The ``language`` code blocks under the ``## heading`` section of ``page`` (default: the README;
    a relative path is taken from the repository root, e.g. ``"docs/mlflow.md"``)."""
    path = ROOT / page if isinstance(page, str) else page
    found = [b.code for b in page_blocks(path) if b.heading == heading and b.language == language]
    assert found, f"no {language} block under '## {heading}' in {path}"
    return found


def run_cli_lines(block: str) -> list[Result]:
    """Run each ``modelkeep ...`` line of a bash block through the real command group (comments dropped)."""
    from modelkeep.cli import cli

    results = []
    for line in block.splitlines():
        args = shlex.split(line, comments=True)
        if not args:
            continue
        assert args[0] == "modelkeep", line
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
        results.append(result)
    return results
