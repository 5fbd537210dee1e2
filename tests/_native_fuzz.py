"""Child-process side of tests/test_native_state.py: crafted native state, loaded and used.

Run as ``python -m tests._native_fuzz MODE KIND[,KIND...] SEED COUNT``. Everything that may crash runs
here, in a fresh interpreter with a memory cap, never in pytest's process. Before each case it
prints ``CASE <kind> <n> <description>`` (flushed), so a parent that sees this process die by a
signal can name the case that killed it.

MODE ``plain`` loads with ``pickle.loads`` (what an unguarded reader does); MODE ``modelkeep``
loads through modelkeep's pickle format (allow-list, ``BUILD`` checks, final pass).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import resource
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MEMORY_CAP = 3 << 30


class Reduced:
    """Pickles as ``func(*args)`` with ``state`` applied: writes a native type's real globals
    with whatever state the attacker chose, without building the bad object here."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any) -> None:
        self.reduced = (func, args, state)

    def __reduce__(self) -> Any:
        return self.reduced


# -- honest models and their states ---------------------------------------------------------


def data(n: int = 80, d: int = 4, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.RandomState(seed)
    x = rng.rand(n, d)
    return x, (x[:, 0] * 3).astype(int)


def tree_model() -> tuple[Any, Any]:
    from sklearn.tree import DecisionTreeClassifier

    x, y = data()
    return DecisionTreeClassifier(random_state=0).fit(x, y), x


def tree_payload(model: Any, state: dict[str, Any]) -> bytes:
    """The model's pickle with its ``tree_`` given ``state``."""
    from sklearn.tree._tree import Tree

    tree = model.tree_
    args = (tree.n_features, np.asarray(tree.n_classes, dtype=np.intp), tree.n_outputs)
    clone = pickle.loads(pickle.dumps(model))
    clone.tree_ = Reduced(Tree, args, state)
    return pickle.dumps(clone, protocol=4)


def binary_tree(kind: str, metric: str = "euclidean", **kwargs: Any) -> tuple[Any, Any]:
    from sklearn.neighbors import BallTree, KDTree

    x, _ = data(200)
    cls = KDTree if kind == "kd" else BallTree
    return cls(x, leaf_size=5, metric=metric, **kwargs), x


def binary_tree_payload(tree: Any, state: tuple[Any, ...]) -> bytes:
    func, args, _ = tree.__reduce__()
    return pickle.dumps(Reduced(func, args, state), protocol=4)


def knn_payload(state: tuple[Any, ...]) -> tuple[bytes, Any]:
    """A fitted ``KNeighborsClassifier`` whose ``KDTree`` has ``state``."""
    from sklearn.neighbors import KNeighborsClassifier

    x, y = data(200)
    model = KNeighborsClassifier(algorithm="kd_tree", leaf_size=5).fit(x, y)
    func, args, _ = model._tree.__reduce__()
    model._tree = Reduced(func, args, state)
    return pickle.dumps(model, protocol=4), x


# -- using what was loaded --------------------------------------------------------------------


def use(obj: Any, x: Any) -> None:
    """Everything a reader would call, each allowed to raise a Python error, none to crash."""
    from sklearn.metrics import DistanceMetric

    calls: list[Callable[[], Any]] = []
    if hasattr(obj, "tree_") or hasattr(obj, "_tree") or hasattr(obj, "support_vectors_"):
        calls += [lambda: obj.predict(x)]
        if hasattr(obj, "tree_"):
            calls += [lambda: obj.predict_proba(x), lambda: obj.apply(x), lambda: obj.decision_path(x)]
            calls += [lambda: obj.feature_importances_]
        if hasattr(obj, "_tree"):
            calls += [lambda: obj.kneighbors(x[:5], 3)]
    elif isinstance(obj, DistanceMetric):
        calls += [lambda: obj.pairwise(x[:10]), lambda: obj.pairwise(x[:5], x[5:9])]
    elif hasattr(obj, "query"):
        calls += [
            lambda: obj.query(x[:10], k=3),
            lambda: obj.query(x[:10], k=3, dualtree=True),
            lambda: obj.query(x[:10], k=3, breadth_first=True),
            lambda: obj.query_radius(x[:10], r=0.3),
            lambda: obj.query_radius(x[:10], r=0.3, count_only=True),
            lambda: obj.kernel_density(x[:10], h=0.2),
            lambda: obj.two_point_correlation(x[:10], [0.1, 0.3]),
        ]
    elif hasattr(obj, "_predictors"):
        calls += [lambda: obj.predict(x)]
    elif hasattr(obj, "tocsr"):
        calls += [lambda: obj @ np.ones(obj.shape[1]), lambda: obj.tocsc().sum(), lambda: obj.toarray()]
    for fn in calls:
        with contextlib.suppress(Exception):  # a Python error is a refusal too; only a crash fails
            fn()


# -- mutations ------------------------------------------------------------------------------


def _bad_int(rng: random.Random, n: int) -> int:
    return rng.choice([-(2**40), -7, -3, -2, -1, 0, 1, n - 1, n, n + 1, n + 1000, 2**31, 2**40])


def tree_cases(rng: random.Random) -> Iterator[tuple[str, bytes, Any]]:
    model, x = tree_model()
    honest = model.tree_.__getstate__()
    n = honest["node_count"]
    while True:
        state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in honest.items()}
        nodes = state["nodes"]
        what = rng.choice(["child", "child", "feature", "node_count", "max_depth", "values", "dtype", "cycle"])
        i = rng.randrange(n)
        if what == "child":
            side = rng.choice(["left_child", "right_child"])
            nodes[side][i] = _bad_int(rng, n)
            desc = f"nodes[{i}].{side} = {int(nodes[side][i])}"
        elif what == "feature":
            nodes["feature"][i] = _bad_int(rng, x.shape[1])
            desc = f"nodes[{i}].feature = {int(nodes['feature'][i])}"
        elif what == "node_count":
            state["node_count"] = _bad_int(rng, n)
            desc = f"node_count = {state['node_count']}"
        elif what == "max_depth":
            state["max_depth"] = rng.choice([0, 1, -1, 2**40])
            desc = f"max_depth = {state['max_depth']}"
        elif what == "values":
            shape = list(state["values"].shape)
            shape[rng.randrange(3)] += rng.choice([-1, 1, 5])
            state["values"] = np.zeros([max(s, 0) for s in shape])
            desc = f"values shape {tuple(shape)}"
        elif what == "dtype":
            state["nodes"] = nodes[["left_child", "right_child", "feature", "threshold"]]
            desc = "nodes without most fields"
        else:
            internal = np.flatnonzero(nodes["left_child"] >= 0)
            j = int(internal[rng.randrange(len(internal))]) if len(internal) else 0
            nodes["left_child"][j] = rng.choice([0, j])
            desc = f"nodes[{j}].left_child points back to {int(nodes['left_child'][j])}"
        yield desc, tree_payload(model, state), x


def binary_tree_cases(rng: random.Random, kind: str) -> Iterator[tuple[str, bytes, Any]]:
    metrics = [("euclidean", {}), ("minkowski", {"p": 3, "w": np.ones(4)})]
    if kind == "ball":
        metrics += [("seuclidean", {"V": np.ones(4)}), ("mahalanobis", {"VI": np.eye(4)})]
    while True:
        metric, kwargs = rng.choice(metrics)
        tree, x = binary_tree(kind, metric, **kwargs)
        state = list(tree.__getstate__())
        state[:4] = [a.copy() for a in state[:4]]
        n, n_nodes = state[0].shape[0], state[6]
        what = rng.choice(["idx", "idx", "node", "node", "leaf", "levels", "bounds", "data", "weight", "metric"])
        if what == "idx":
            i = rng.randrange(n)
            state[1][i] = _bad_int(rng, n)
            desc = f"idx_array[{i}] = {int(state[1][i])}"
        elif what == "node":
            i, field = rng.randrange(n_nodes), rng.choice(["idx_start", "idx_end"])
            state[2][field][i] = _bad_int(rng, n)
            desc = f"node_data[{i}].{field} = {int(state[2][field][i])}"
        elif what == "leaf":
            i = rng.randrange(n_nodes)
            state[2]["is_leaf"][i] = 0
            desc = f"node_data[{i}].is_leaf = 0"
        elif what == "levels":
            which = rng.choice([5, 6])
            state[which] = rng.choice([0, 1, state[which] + 1, state[which] + 5, 40])
            desc = f"state[{which}] (n_levels/n_nodes) = {state[which]}"
        elif what == "bounds":
            state[3] = np.zeros((state[3].shape[0], max(n_nodes - 2, 1), state[3].shape[2]))
            desc = f"node_bounds shape {state[3].shape}"
        elif what == "data":
            state[0] = state[0][: rng.choice([1, n // 2, n - 1])].copy()
            desc = f"data cut to {state[0].shape[0]} rows"
        elif what == "weight":
            state[12] = np.ones(rng.choice([0, 1, n - 1, n + 5]))
            desc = f"sample_weight of {state[12].shape[0]} entries"
        else:
            from sklearn.metrics import DistanceMetric

            choice = rng.choice(["seuclidean-short", "minkowski-short", "mahalanobis-small", "none"])
            if choice == "none":
                state[11] = None
            elif choice == "seuclidean-short":
                state[11] = DistanceMetric.get_metric("seuclidean", V=np.ones(rng.choice([1, 2, 3])))
            elif choice == "minkowski-short":
                state[11] = DistanceMetric.get_metric("minkowski", p=3, w=np.ones(rng.choice([1, 2, 3])))
            else:
                state[11] = DistanceMetric.get_metric("mahalanobis", VI=np.eye(rng.choice([1, 2, 3])))
            desc = f"dist_metric {choice}"
        desc = f"{kind} {metric}: {desc}"
        yield desc, binary_tree_payload(tree, tuple(state)), x


def metric_cases(rng: random.Random) -> Iterator[tuple[str, bytes, Any]]:
    from sklearn.metrics import DistanceMetric

    x, _ = data(40)
    honest = {
        "seuclidean": DistanceMetric.get_metric("seuclidean", V=np.ones(4)),
        "mahalanobis": DistanceMetric.get_metric("mahalanobis", VI=np.eye(4)),
        "minkowski": DistanceMetric.get_metric("minkowski", p=3, w=np.ones(4)),
    }
    while True:
        name = rng.choice(sorted(honest))
        metric = honest[name]
        p, vec, mat = metric.__getstate__()
        what = rng.choice(["vec", "mat", "p", "vec-dtype"])
        if what == "vec":
            vec = np.ones(rng.choice([0, 1, 2, 3, 7]))
        elif what == "mat":
            mat = np.eye(rng.choice([1, 2, 3]))[:, : rng.choice([1, 2, 3])].copy()
        elif what == "p":
            p = rng.choice([0.0, -1.0, float("nan"), float("inf")])
        else:
            vec = vec.astype(np.float32)
        func, args, _ = metric.__reduce__()
        desc = f"{name}: {what} -> p={p}, vec {vec.shape} {vec.dtype}, mat {mat.shape}"
        payload = pickle.dumps(Reduced(func, args, (p, vec, mat)), protocol=4)
        in_tree = rng.random() < 0.5
        if in_tree and name != "minkowski":
            tree, _ = binary_tree("ball", name, **({"V": np.ones(4)} if name == "seuclidean" else {"VI": np.eye(4)}))
            state = list(tree.__getstate__())
            state[11] = Reduced(func, args, (p, vec, mat))
            payload = binary_tree_payload(tree, tuple(state))
            desc = "in a BallTree: " + desc
        yield desc, payload, x


def hgb_cases(rng: random.Random) -> Iterator[tuple[str, bytes, Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = data(150)
    x[:, 3] = (x[:, 3] * 5).astype(int)
    honest = HistGradientBoostingClassifier(max_iter=3, categorical_features=[3], random_state=0).fit(x, y % 2)
    while True:
        model = pickle.loads(pickle.dumps(honest))
        predictor = model._predictors[rng.randrange(len(model._predictors))][0]
        nodes = predictor.nodes
        i = rng.randrange(nodes.shape[0])
        field = rng.choice(["left", "right", "feature_idx", "bitset_idx", "is_categorical", "is_leaf"])
        if field in ("left", "right", "bitset_idx"):
            nodes[field][i] = rng.choice([0, i, nodes.shape[0], nodes.shape[0] + 7, 2**31, 2**32 - 1])
        elif field == "feature_idx":
            nodes[field][i] = _bad_int(rng, x.shape[1])
        else:
            nodes[field][i] = 1 - nodes[field][i]
        desc = f"hgb nodes[{i}].{field} = {int(nodes[field][i])}"
        yield desc, pickle.dumps(model, protocol=4), x


def svc_cases(rng: random.Random) -> Iterator[tuple[str, bytes, Any]]:
    from sklearn.svm import SVC

    x, y = data(60)
    honest = SVC(kernel=rng.choice(["rbf", "linear"])).fit(x, y)
    while True:
        model = pickle.loads(pickle.dumps(honest))
        what = rng.choice(["n_support", "dual_coef", "intercept", "support", "vectors"])
        if what == "n_support":
            model._n_support = np.array([_bad_int(rng, 20) % 2**31 for _ in range(rng.choice([1, 2, 3, 5]))], np.int32)
        elif what == "dual_coef":
            model._dual_coef_ = np.zeros((rng.choice([0, 1, 2, 5]), rng.choice([1, 10, 200])))
        elif what == "intercept":
            model._intercept_ = np.zeros(rng.choice([0, 1, 2]))
        elif what == "support":
            model.support_ = np.array([_bad_int(rng, 60) % 2**31] * len(model.support_), np.int32)
        else:
            model.support_vectors_ = np.ascontiguousarray(model.support_vectors_[: rng.choice([1, 5])])
        yield f"svc {what}", pickle.dumps(model, protocol=4), x


CASES: dict[str, Callable[[random.Random], Iterator[tuple[str, bytes, Any]]]] = {
    "hgb": hgb_cases,
    "svc": svc_cases,
    "tree": tree_cases,
    "kdtree": lambda rng: binary_tree_cases(rng, "kd"),
    "balltree": lambda rng: binary_tree_cases(rng, "ball"),
    "metric": metric_cases,
}


#: Globals a kind's honest model needs beyond the built-in list (HGB with categorical features
#: keeps ``partial(check_array, ...)`` in its preprocessing), trusted as a user would trust them.
TRUSTED = {"hgb": ["functools.partial", "sklearn.utils.validation.check_array"]}


def load(mode: str, payload: bytes, kind: str = "") -> Any:
    if mode == "plain":
        return pickle.loads(payload)
    from modelkeep.formats import get_format

    return get_format("pickle").load(io.BytesIO(payload), None, trusted=TRUSTED.get(kind, []))


def main(mode: str, kinds: str, seed: int, count: int) -> None:
    """``count`` mutations of each of the comma-separated ``kinds``, in this one process."""
    from modelkeep.errors import UnsafeModelError

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    warnings.simplefilter("ignore")
    for kind in kinds.split(","):
        rng = random.Random(seed)
        refused = loaded = 0
        cases = CASES[kind](rng)
        for n in range(count):
            desc, payload, x = next(cases)
            print(f"CASE {kind} {n} {desc}", flush=True)
            try:
                obj = load(mode, payload, kind)
            except UnsafeModelError as exc:
                refused += 1
                print(f"REFUSED {exc}", flush=True)
                continue
            except Exception as exc:  # sklearn's own checks refusing the state is fine too
                refused += 1
                print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
                continue
            loaded += 1
            use(obj, x)
        print(f"DONE {kind} refused={refused} loaded={loaded}", flush=True)


def attack(name: str) -> None:
    """One crafted model, loaded with plain pickle (what ``joblib.load`` does) and used."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    warnings.simplefilter("ignore")
    payload, x = ATTACKS[name]()
    obj = pickle.loads(payload)
    print("LOADED", flush=True)
    use(obj, x)
    print("SURVIVED", flush=True)


def tree_attack() -> tuple[bytes, Any]:
    """A decision tree whose root's left child is a billion nodes past the node array."""
    model, x = tree_model()
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10**9
    return tree_payload(model, state), x


def kdtree_attack() -> tuple[bytes, Any]:
    """A KNN classifier whose KD tree's index array points a billion rows past its data."""
    from sklearn.neighbors import KDTree

    x, _ = data(200)
    state = list(KDTree(x, leaf_size=5).__getstate__())
    state[1] = state[1].copy()
    state[1][:] = 10**9
    return knn_payload(tuple(state))


ATTACKS: dict[str, Callable[[], tuple[bytes, Any]]] = {"tree": tree_attack, "kdtree": kdtree_attack}


if __name__ == "__main__":
    if sys.argv[1] == "attack":
        attack(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))


def manhattan(a: Any, b: Any) -> float:
    """A user's own distance function (for the trusted ``PyFuncDistance`` test)."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).sum())
