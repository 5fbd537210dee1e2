"""Write ``tests/data/registry_0_2/``: a registry as modelkeep 0.2 wrote it before event files
(index schema 6: aliases, tags, descriptions, the trash and the history live only in
``registry.db``).

Run with that release on the path, never with a newer one, for example::

    git archive 832b1ab src | tar -x -C /tmp/mk02
    PYTHONPATH=/tmp/mk02/src python tests/data/make_registry_0_2.py

Plain containers only (they load in every later release without trust settings), no signing key
(``MODELKEEP_CONFIG_DIR`` points at a throwaway folder, so no per-user key signs either).
``tests/test_old_registries.py`` opens a copy of it with the current code, upgrades it, and
rebuilds it from its store alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "registry_0_2"


def main() -> None:
    os.environ["MODELKEEP_CONFIG_DIR"] = tempfile.mkdtemp()
    os.environ["MODELKEEP_USER"] = "release-0.2"
    import modelkeep
    from modelkeep import ModelPersistence
    from modelkeep.index.names import SCHEMA_VERSION

    if modelkeep.__version__ != "0.2.0" or SCHEMA_VERSION != 6:
        sys.exit(f"run this with modelkeep 0.2.0 (schema 6) on the path, not {modelkeep.__version__}")
    shutil.rmtree(TARGET, ignore_errors=True)
    with ModelPersistence(TARGET, signing_key=None) as p:
        for i in range(4):
            p.save({"churn": i}, "churn", accuracy=0.8 + i / 100)
        p.save({"fraud": 0}, "fraud")
        p.save({"fraud": 1}, "fraud")
        p.set_alias("churn", "production", "1.0.1")
        p.set_alias("churn", "production", "1.0.2")
        p.set_alias("churn", "staging", "1.0.3")
        p.set_alias("fraud", "production", "1.0.0")
        p.set_tag("churn", "team", "growth")
        p.set_tag("churn", "approved", "yes", version="1.0.2")
        p.set_description("churn", "predicts churn")
        p.set_description("churn", "the good one", version="1.0.2")
        p.delete("churn", "1.0.0")
        p.delete("fraud", "1.0.1")
        p.restore("fraud", "1.0.1")
        p.delete("fraud", "1.0.1")
        assert p.verify().ok
        summary = {
            name: {
                "versions": p.list_versions(name),
                "aliases": p.get_aliases(name),
                "tags": p.get_tags(name),
                "description": p.get_description(name),
                "history": [[e.at, e.actor, e.action, e.version, e.alias, e.key] for e in p.history(name)],
            }
            for name in p.list_models()
        }
        summary["trash"] = [list(t) for t in p.list_trash()]  # type: ignore[assignment]
    (HERE / "registry_0_2.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
