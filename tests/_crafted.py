"""Crafted framework model files, as an attacker writes them, and a child process to try them in.

Imported by tests/test_native_loaders.py and tests/test_quarantine.py. Everything that may
crash runs in :func:`run_child`: a fresh interpreter with a memory cap, so a segfault fails
a test instead of killing pytest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep import ModelPersistence
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.metadata import ArtifactInfo

#: The child's address-space cap (enough to import lightgbm, xgboost and scikit-learn).
CHILD_MEMORY = 3 << 30


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def lightgbm_booster() -> Any:
    import lightgbm as lgb

    X, y = data()
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "min_data_in_leaf": 5}
    return lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=3)


def xgboost_booster() -> Any:
    import xgboost as xgb

    X, y = data()
    return xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(X, label=y), num_boost_round=3)


# -- LightGBM model strings ---------------------------------------------------------------------


def _blocks(text: str) -> tuple[str, list[str], str]:
    """Header, tree blocks (each from ``Tree=`` to the next), and the rest of a model string."""
    starts = [m.start() for m in re.finditer(r"^Tree=", text, re.MULTILINE)]
    end = text.index("end of trees")
    bounds = [*starts, end]
    return text[: starts[0]], [text[a:b] for a, b in itertools.pairwise(bounds)], text[end:]


def with_tree_sizes(text: str) -> str:
    """``text`` with ``tree_sizes`` recomputed, so only the mutation under test is wrong."""
    head, trees, tail = _blocks(text)
    head = re.sub(r"^tree_sizes=.*$", "tree_sizes=" + " ".join(str(len(t)) for t in trees), head, flags=re.MULTILINE)
    return head + "".join(trees) + tail


def set_tree_field(text: str, key: str, value: str, tree: int = 0) -> str:
    """Set ``key=value`` in one tree block, keeping ``tree_sizes`` consistent."""
    head, trees, tail = _blocks(text)
    trees[tree], n = re.subn(rf"^{key}=.*$", f"{key}={value}", trees[tree], flags=re.MULTILINE)
    assert n == 1, key
    return with_tree_sizes(head + "".join(trees) + tail)


def set_header(text: str, key: str, value: str) -> str:
    out, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, count=1, flags=re.MULTILINE)
    assert n == 1, key
    return out


# -- xgboost UBJSON -----------------------------------------------------------------------------


def ubj_with_count(data: bytes, array: bytes = b"left_children", byte: int = 5, value: int = 0xE5) -> bytes:
    """One byte of the 8-byte count of the typed array ``array`` changed (byte 5: ~15 million)."""
    at = data.index(b"#L", data.index(array)) + 2
    out = bytearray(data)
    out[at + byte] = value
    return bytes(out)


# -- planting a version ---------------------------------------------------------------------------


def plant(p: ModelPersistence, name: str, version: str, new_bytes: bytes) -> None:
    """What an attacker who can write the store and the index does: replace the artifact and
    its digests in the index row and the sidecar. Holding no key, they drop the signature."""
    rec = p.get_version(name, version)
    art = rec.artifact
    assert art is not None
    path = Path(p.store.local_path(art.key) or "")
    os.chmod(path, 0o644)
    path.write_bytes(new_bytes)
    extra = {k: v for k, v in art.extra.items() if k not in ("blake3", "payload_ranges")}
    forged = dataclasses.replace(
        rec,
        artifact=ArtifactInfo(
            art.key, art.format, art.compression, len(new_bytes), hashlib.sha256(new_bytes).hexdigest(), extra
        ),
        signature=None,
    )
    p.index.put(forged)
    p.store.write_bytes(sidecar_key(name, version), sidecar_bytes(forged))


# -- a child to crash in -------------------------------------------------------------------------


@dataclasses.dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def signal(self) -> str | None:
        return signal.Signals(-self.returncode).name if self.returncode < 0 else None


def run_child(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``code`` in a fresh interpreter under :data:`CHILD_MEMORY`; ``"TIMEOUT"`` in
    stdout when it had to be killed."""
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))\n"
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=run_env,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return ChildResult(-int(signal.SIGKILL), out + "TIMEOUT", "")
    return ChildResult(proc.returncode, proc.stdout, proc.stderr)
