"""The ``modelkeep`` command line run in this process, answering as ``python -m modelkeep`` would.

For tests about what the CLI does, not about the process boundary: a ``python -m modelkeep``
costs an interpreter start and modelkeep's imports (~1-2 s on a loaded CI machine) per command.
:func:`run_cli` calls the same ``cli`` group the console script's ``main()`` calls, with the
given variables set (``None`` removes one) and ``stdin``, and returns a
:class:`subprocess.CompletedProcess` as :func:`subprocess.run` would: an exception that escapes
the CLI is not swallowed (as click's test runner does) but exits 1 with its traceback on stderr,
as the interpreter prints it, so "no ``Traceback``" checks keep their meaning.
"""

from __future__ import annotations

import subprocess
import traceback
from collections.abc import Mapping

from click.testing import CliRunner

from modelkeep.cli import cli


def run_cli(
    *args: str, env: Mapping[str, str | None] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``modelkeep ARGS`` in this process (see the module docstring)."""
    result = CliRunner().invoke(cli, list(args), input=stdin, env=dict(env or {}), prog_name="modelkeep")
    stderr = result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        stderr += "".join(traceback.format_exception(*result.exc_info))
        code = 1
    return subprocess.CompletedProcess(["modelkeep", *args], code, result.stdout, stderr)
