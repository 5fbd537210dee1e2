"""What signing costs per save and load: unsigned vs HMAC vs ECDSA P-256 (per-user key).

Run: ``python bench/signing.py [--repeats N]``. Each variant saves and loads the same
small scikit-learn model ``N`` times into its own fresh registry in this run; the
table gives medians and ratios against the unsigned baseline, plus the raw cost of
one ECDSA sign and verify. Paste the output into bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def _model() -> object:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(X, y)


def _run(variant: str, model: object, repeats: int, root: Path) -> tuple[float, float]:
    from modelkeep import ModelPersistence

    os.environ["MODELKEEP_CONFIG_DIR"] = str(root / f"config-{variant}")
    kwargs = {"signing_key": "bench-secret"} if variant == "hmac" else {}
    saves, loads = [], []
    with ModelPersistence(root / variant, **kwargs) as p:  # type: ignore[arg-type]
        if variant == "unsigned":
            p.keyring.use_user_key = False  # the 0.1 behaviour without a key
        p.save(model, "warmup")
        p.load("warmup")
        for i in range(repeats):
            t0 = time.perf_counter()
            p.save(model, "m", f"1.0.{i}")
            t1 = time.perf_counter()
            p.load("m", f"1.0.{i}")
            t2 = time.perf_counter()
            saves.append(t1 - t0)
            loads.append(t2 - t1)
        status = p.signature_status("m").status
        assert status == ("unsigned" if variant == "unsigned" else "trusted"), status
    return statistics.median(saves) * 1000, statistics.median(loads) * 1000


def _raw(repeats: int) -> tuple[float, float]:
    from modelkeep import keys

    key = keys.generate("bench")
    payload = b"x" * 600  # about the size of a manifest
    t0 = time.perf_counter()
    sigs = [key.sign(payload) for _ in range(repeats)]
    t1 = time.perf_counter()
    assert all(key.public.verify(s, payload) for s in sigs)
    t2 = time.perf_counter()
    return (t1 - t0) / repeats * 1000, (t2 - t1) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=41)
    args = parser.parse_args()
    model = _model()
    with tempfile.TemporaryDirectory() as tmp:
        results = {v: _run(v, model, args.repeats, Path(tmp)) for v in ("unsigned", "hmac", "ecdsa")}
    base_save, base_load = results["unsigned"]
    print(f"| variant | save (median ms) | ratio | load (median ms) | ratio |  ({args.repeats} repeats)")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, (save, load) in results.items():
        print(f"| {variant} | {save:.2f} | {save / base_save:.2f} | {load:.2f} | {load / base_load:.2f} |")
    sign_ms, verify_ms = _raw(1000)
    print(f"\nECDSA P-256 alone: sign {sign_ms * 1000:.0f} µs, verify {verify_ms * 1000:.0f} µs")


if __name__ == "__main__":
    main()
