"""Print the framework sections of ``modelkeep/formats/allowlist.py`` from the installed packages.

Run it when a framework is upgraded, diff the output against the module, and
review every new entry by hand (a class whose constructor or ``__setstate__``
could touch files or run code must not go in). Classes are found two ways: the
public model classes of each framework, and every global that real fitted
models reference when pickled (``--observed FILE``: lines "module<TAB>name",
as printed by a recording ``find_class``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from collections import defaultdict


def _classes_in(module_name: str, base: type | None = None) -> set[tuple[str, str]]:
    mod = importlib.import_module(module_name)
    out = set()
    for _name, obj in vars(mod).items():
        ours = inspect.isclass(obj) and obj.__module__.startswith(module_name.split(".")[0])
        if ours and (base is None or issubclass(obj, base)):
            out.add((obj.__module__, obj.__qualname__))
    return out


def sklearn_classes() -> set[tuple[str, str]]:
    from sklearn.utils import all_estimators

    found = {(cls.__module__, cls.__qualname__) for _n, cls in all_estimators()}
    for name in (
        "sklearn._loss.loss",
        "sklearn._loss.link",
        "sklearn._loss._loss",
        "sklearn.gaussian_process.kernels",
        "sklearn.metrics._dist_metrics",
        "sklearn.linear_model._sgd_fast",
        "sklearn.model_selection._split",
        "sklearn.neural_network._stochastic_optimizers",
        "sklearn.tree._tree",
        "sklearn.neighbors._ball_tree",
        "sklearn.neighbors._kd_tree",
        "sklearn.utils._bunch",
    ):
        found |= {(m, q) for m, q in _classes_in(name) if m.startswith("sklearn.") and not q.startswith("_Cy")}
    return found


def torch_classes() -> set[tuple[str, str]]:
    import torch.nn as nn

    return {
        (c.__module__, c.__qualname__)
        for n in nn.modules.__all__
        for c in [getattr(nn.modules, n)]
        if inspect.isclass(c) and issubclass(c, nn.Module)
    }


def main() -> None:
    warnings.filterwarnings("ignore")
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    found["sklearn"] |= sklearn_classes()
    found["torch"] |= torch_classes()
    if len(sys.argv) > 2 and sys.argv[1] == "--observed":
        with open(sys.argv[2], encoding="utf-8") as observed:
            for line in observed:
                module, name = line.rstrip("\n").split("\t")
                found[module.split(".")[0]].add((module, name))
    for framework, pairs in sorted(found.items()):
        by_module: dict[str, list[str]] = defaultdict(list)
        for module, name in sorted(pairs):
            by_module[module].append(name)
        print(f"# {framework}")
        for module, names in sorted(by_module.items()):
            print(f"    {module!r}: {tuple(names)!r},")


if __name__ == "__main__":
    main()
