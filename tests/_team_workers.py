"""Worker processes for the team-registry tests: one "machine"'s process saving to a shared registry.

Run as ``python tests/_team_workers.py '<json spec>'``. The spec names the
registry (``models_dir``, ``registry_url``, ``index_schema``,
``storage_options``), the model to save, this worker's id, how many versions
to save, and a ``start_file`` to wait for so that every worker starts saving
at the same moment. Prints one JSON object: the versions this worker saved
with the SHA-256 of each artifact, and how long the saves took.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def team_model(worker: int, i: int) -> dict[str, Any]:
    """The object worker ``worker`` saves as its ``i``-th version (distinct per worker and step)."""
    import numpy as np

    return {"worker": worker, "i": i, "weights": np.full(50_000, worker * 1000 + i, dtype=np.int64)}


def save_versions(spec: dict[str, Any]) -> dict[str, Any]:
    from modelkeep import ModelPersistence

    deadline = time.monotonic() + 60
    while not os.path.exists(spec["start_file"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the start signal never came")
        time.sleep(0.01)
    saved = []
    started = time.perf_counter()
    with ModelPersistence(
        models_dir=spec["models_dir"],
        registry_url=spec["registry_url"],
        storage_options=spec["storage_options"],
        index_schema=spec["index_schema"],
    ) as p:
        for i in range(spec["count"]):
            rec = p.save_version(
                team_model(spec["worker"], i),
                spec["model_name"],
                metadata={"worker": spec["worker"], "i": i, "cwd": os.getcwd()},
            )
            assert rec.artifact is not None
            saved.append({"version": rec.version, "sha256": rec.artifact.sha256, "i": i})
    return {"worker": spec["worker"], "pid": os.getpid(), "saved": saved, "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    print(json.dumps(save_versions(json.loads(sys.argv[1]))))
