"""Every code block of README.md and of every docs/*.md page runs as shown.

The blocks of a section (``## ...``) run in order, in one fresh temporary folder per section, so a
block may use the files an earlier block of its section wrote, as a reader following along would,
with ``MODELKEEP_*`` variables cleared, a per-user config folder of the section's own, and this
interpreter's ``bin`` first on PATH.

- ``python`` blocks run with this interpreter, ``bash`` blocks with ``bash -euo pipefail``;
- ``yaml`` blocks are modelkeep config files: each is read and validated by ``load_settings``;
- ``text`` blocks are diagrams, file trees and output, not code.

A block preceded by ``<!-- not run by tests/test_readme.py: <reason> -->`` is skipped and must
give a reason: the quick start (CI runs it itself), ``pip install`` lines, the web UI (it serves
until Ctrl-C) and the team block that needs real PostgreSQL and S3 servers. Sections whose blocks
need fixtures (real MLflow stores, a filled registry in a Python without site-packages) are run
as shown by their own tests (``RUN_ELSEWHERE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._readme import PAGES, ROOT, Block, page_blocks

#: (page, section heading) -> the test file that runs that section's blocks as shown.
RUN_ELSEWHERE = {
    ("docs/mlflow.md", "Moving in: import an MLflow registry"): "tests/test_mlflow_import.py",
    ("docs/mlflow.md", "Moving out: portable bundles"): "tests/test_bundle.py",
}
LANGUAGES = {"python", "bash", "yaml", "text"}
#: Skipped blocks across all pages: few, each with its reason.
MAX_SKIPPED = 6


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runs_elsewhere(block: Block) -> bool:
    return (_page_id(block.page), block.heading) in RUN_ELSEWHERE


def _check_yaml(block: Block, folder: Path) -> None:
    import yaml

    from modelkeep.config import load_settings

    data = yaml.safe_load(block.code)
    assert isinstance(data, dict) and set(data) <= {"logging", "persistence", "server"}, (
        f"{block.where}: not a config file"
    )
    config = folder / "docs-block.yaml"
    config.write_text(block.code, encoding="utf-8")
    load_settings(config)  # raises ConfigError, naming the key, on anything modelkeep would refuse


#: A fixed port a block's server listens on (``--port 18080``): two sections showing the same one
#: (the README's and docs/serve.md's) must not run at once, in this run or in another on the machine.
FIXED_PORT = re.compile(r"--port\s+(\d+)")


@contextlib.contextmanager
def _ports_held(blocks: list[Block]) -> Iterator[None]:
    """Hold a machine-wide lock file per fixed port the ``blocks`` listen on, in port order."""
    with contextlib.ExitStack() as stack:
        for port in sorted({int(p) for b in blocks for p in FIXED_PORT.findall(b.code)}):
            lock = stack.enter_context(open(Path(tempfile.gettempdir()) / f"modelkeep-tests-port-{port}.lock", "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _run_section(blocks: list[Block], folder: Path, base_env: dict[str, str]) -> None:
    """Run one section's blocks in order, in its own folder, each in a fresh process."""
    folder.mkdir(exist_ok=True)
    # Each section is a fresh reader: its own per-user keys, never the real home's.
    env = {**base_env, "MODELKEEP_CONFIG_DIR": str(folder / ".user-config")}
    with _ports_held(blocks):
        for block in blocks:
            if block.language == "yaml":
                _check_yaml(block, folder)
                continue
            cmd = (
                [sys.executable, "-c", block.code]
                if block.language == "python"
                else ["bash", "-euo", "pipefail", "-c", block.code]
            )
            proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, (
                f"{block.where} ({block.language}) failed:\n{block.code}\n{proc.stderr[-3000:]}"
            )


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_code_block_of_the_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each section in its own folder with its own config, as a fresh reader would; the blocks
    of a section in order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MODELKEEP_GIT"] = "0"
    for name in [k for k in os.environ if k.startswith("MODELKEEP_")]:
        monkeypatch.delenv(name)  # the yaml check runs in this process
    sections: dict[int, list[Block]] = {}
    for block in page_blocks(page):
        assert block.language in LANGUAGES, f"{block.where}: give the block one of the languages {sorted(LANGUAGES)}"
        if block.skip is not None:
            assert block.skip, f"{block.where}: a skipped block must say why"
            continue
        if block.language == "text" or _runs_elsewhere(block):
            continue
        sections.setdefault(block.section, []).append(block)
    for section, blocks in sections.items():
        _run_section(blocks, tmp_path / f"section-{section}", env)


def test_skipped_blocks_are_few_and_give_a_reason() -> None:
    skipped = [b for page in PAGES for b in page_blocks(page) if b.skip is not None]
    assert all(b.skip for b in skipped), [b.where for b in skipped if not b.skip]
    assert len(skipped) <= MAX_SKIPPED, [f"{b.where}: {b.skip}" for b in skipped]
    runnable = [b for page in PAGES for b in page_blocks(page) if b.skip is None and b.language in ("python", "bash")]
    assert len(runnable) >= 20, len(runnable)


def test_sections_run_elsewhere_exist_and_are_run_there() -> None:
    for (page, heading), test_file in RUN_ELSEWHERE.items():
        blocks = [b for b in page_blocks(ROOT / page) if b.heading == heading and b.skip is None]
        assert any(b.language in ("python", "bash") for b in blocks), (page, heading)
        assert heading in (ROOT / test_file).read_text(encoding="utf-8"), (page, heading, test_file)


def test_the_quick_start_keeps_its_two_commands() -> None:
    """CI (.ci/run) runs the quick start's second line; the README must keep both lines together."""
    [block] = [b for b in page_blocks(ROOT / "README.md") if b.heading == "Quick start"]
    assert block.code.splitlines() == [
        'pip install -e ".[demo]" && python examples/quickstart.py',
        'bash .ci/test-services.sh && pip install -e ".[test]" && python -m pytest -q',
    ]
    assert block.code.splitlines()[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_docs_page_is_linked_from_the_readme_and_the_site() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    site = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":  # the site's home page; the README is the repository's
            assert f"(docs/{page.name})" in readme, page.name
        assert f": {page.name}\n" in site, page.name


def test_the_api_page_names_every_public_method_and_every_error() -> None:
    """The reference tables, written by hand, miss nothing the library offers (issue 23)."""
    import inspect

    from modelkeep import errors
    from modelkeep.registry import ModelPersistence

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    methods = [n for n, _ in inspect.getmembers(ModelPersistence, callable) if not n.startswith("_")]
    assert {"set_alias", "set_tag", "history", "restore", "purge", "prune", "list_trash"} <= set(methods)
    rows = "\n".join(line for line in api.splitlines() if line.startswith("| `"))
    missing = [n for n in methods if not re.search(rf"[`.]{n}\(", rows)]
    assert not missing, f"methods missing from docs/api.md: {missing}"
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.ModelKeepError)]
    table = api[api.index("| error | also a |") :]
    assert not [c.__name__ for c in classes if c is not errors.ModelKeepError and f"| `{c.__name__}` |" not in table]
    for name in ("save", "compare_versions", "delete", "ModelPersistence"):  # one row each, no contradicting copies
        assert len(re.findall(rf"^\| `{name}\(", api, re.M)) == 1, name


TRACE = """
import importlib.util, sys, threading
root = importlib.util.find_spec("modelkeep").submodule_search_locations[0] + "/"
seen = set()
def profile(frame, event, arg):
    if event == "call" and frame.f_code.co_filename.startswith(root):
        seen.add(frame.f_code.co_filename[len(root):])
def traced(call):
    sys.setprofile(profile); threading.setprofile(profile)
    try:
        return call()
    finally:
        sys.setprofile(None); threading.setprofile(None)
import numpy as np
from sklearn.linear_model import LogisticRegression
model = {"clf": LogisticRegression().fit([[0.0], [1.0]], [0, 1]), "weights": np.arange(200_000.0)}
for fmt, compress in (("joblib", True), ("joblib", False), ("native", True)):
    p = traced(lambda: __import__("modelkeep").ModelPersistence(f"models-{fmt}-{compress}", fmt, compress))
    traced(lambda: p.save(model, "m", accuracy=0.9))
    p.set_alias("m", "production", "1.0.0")
    traced(lambda: p.load("m@production"))
    traced(lambda: p.load("m", mmap_mode="r"))
    try:
        traced(lambda: p.load("n"))
    except KeyError:
        pass
print("\\n".join(sorted(seen)))
"""


def test_architecture_names_every_module_a_save_and_a_load_pass_through(tmp_path: Path) -> None:
    """Trace real saves and loads (joblib compressed and mapped, native, an alias, an unknown name) and
    require each modelkeep file they run to be named, as `path`, in docs/ARCHITECTURE.md (issue 23)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELKEEP_")}
    env |= {"MODELKEEP_CONFIG_DIR": str(tmp_path / "user"), "MODELKEEP_GIT": "0"}
    done = subprocess.run(
        [sys.executable, "-c", TRACE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = done.stdout.split()
    assert {"registry.py", "index/claims.py", "storage/verified.py", "formats/_restricted.py"} <= set(modules)
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert not [m for m in modules if f"`{m}`" not in text], "modules missing from docs/ARCHITECTURE.md"
