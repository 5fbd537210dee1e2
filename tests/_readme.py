"""Code blocks of a README section, to run them exactly as shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner, Result

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(heading: str, language: str) -> list[str]:
    """The ``language`` code blocks under the ``## heading`` section of the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


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
