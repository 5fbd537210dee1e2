"""The compiled check of a decision tree's node links (formats/_treelinks.c) against the numpy one.

The C check replaces the numpy check only if it gives the same answer on every input, so each
test runs both on the same node array: honest trees of several shapes, then trees broken the
ways an attacker would break them (children out of range or before their parent, cycles, two
parents, orphans, one leaf marker of two, features out of range, extreme integers), one and
several faults at once (the first fault reported must be the same), views that are not
contiguous and byte orders that are not native. Then the compiled function's own argument
checks, and a planted tree refused by a real load with either check. The same again for the
nodes of histogram gradient boosting predictors (``TreePredictor``, ``predictor_links``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence, UnsafeModelError
from modelkeep.formats import tree_links
from modelkeep.formats.state_checks import refuse

from ._native_fuzz import tree_attack
from .test_native_state import _plant

INT64 = np.iinfo(np.int64)


def _answer(nodes: Any, n_features: int, scanner: str) -> tuple[str, Any]:
    try:
        return "depth", tree_links.check_tree_links(nodes, n_features, scanner=scanner)
    except UnsafeModelError as exc:
        return "refused", str(exc)


def _same(nodes: Any, n_features: int) -> tuple[str, Any]:
    """Both checks' answer, which must be the same (depth, or the same refusal)."""
    c, py = _answer(nodes, n_features, "c"), _answer(nodes, n_features, "python")
    assert c == py
    return c


def _fitted_nodes(n_samples: int, seed: int, max_depth: int | None = None) -> tuple[np.ndarray, int, int]:
    """The node array, feature count and depth of a real fitted tree."""
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, 5))
    y = x[:, 0] * 3 + rng.standard_normal(n_samples)
    tree = DecisionTreeRegressor(max_depth=max_depth, random_state=seed).fit(x, y).tree_
    return tree.__getstate__()["nodes"].copy(), 5, int(tree.max_depth)


def test_the_compiled_check_is_the_one_that_runs() -> None:
    from sklearn.tree._tree import TREE_LEAF

    assert TREE_LEAF == -1  # the leaf marker _treelinks.c compares with
    assert tree_links.TREE_SCANNER == "c"  # setup.py built it (or these tests compare numpy with itself)


@pytest.mark.parametrize(("n_samples", "max_depth"), [(1, None), (2, None), (50, 3), (400, None), (3000, None)])
def test_honest_trees_get_their_depth_from_both(n_samples: int, max_depth: int | None) -> None:
    nodes, n_features, depth = _fitted_nodes(n_samples, n_samples, max_depth)
    assert _same(nodes, n_features) == ("depth", depth)


def _leaf(nodes: np.ndarray) -> np.ndarray:
    return np.flatnonzero(nodes["left_child"] == -1)


def _split(nodes: np.ndarray) -> np.ndarray:
    return np.flatnonzero(nodes["left_child"] != -1)


def _break(nodes: np.ndarray, rng: random.Random) -> str:
    """Break ``nodes`` in place one way an attacker would; says how."""
    n = nodes.shape[0]
    split = _split(nodes)
    i = int(rng.choice(split)) if split.size else 0
    side = rng.choice(["left_child", "right_child"])
    extreme = [INT64.min, INT64.max, -2, n, n + 1, 2**31, -(2**31)]
    how = rng.randrange(11)
    if how == 0:
        nodes[side][i] = rng.choice(extreme)
    elif how == 1:
        nodes[side][i] = rng.randrange(0, i + 1)  # back to itself or an ancestor's side: a cycle
    elif how == 2 and split.size > 1:
        j = int(rng.choice(split[split != i]))
        nodes[side][i] = nodes[side][j]  # one node with two parents, another with none
    elif how == 3:
        nodes[side][i] = -1  # one leaf marker of two
    elif how == 4 and _leaf(nodes).size:
        nodes["right_child"][int(rng.choice(_leaf(nodes)))] = rng.randrange(0, n)
    elif how == 5:
        nodes["feature"][i] = rng.choice([-1, 5, 6, INT64.max, INT64.min])
    elif how == 6 and split.size:
        nodes["left_child"][i], nodes["right_child"][i] = nodes["right_child"][i], nodes["left_child"][i]
    elif how == 7:
        nodes["left_child"][i] = nodes["right_child"][i]  # one child twice
    elif how == 8 and _leaf(nodes).size:
        nodes["feature"][int(rng.choice(_leaf(nodes)))] = -7  # a leaf's feature is never read
    elif how == 9:
        nodes["left_child"][rng.randrange(n)] = rng.randrange(-3, n + 3)
    else:
        nodes["right_child"][rng.randrange(n)] = rng.randrange(-3, n + 3)
    return f"way {how} at node {i}"


def test_broken_trees_get_the_same_answer_from_both() -> None:
    rng = random.Random(29)
    refused = 0
    for case in range(600):
        nodes, n_features, _ = _fitted_nodes(rng.choice([2, 3, 8, 60, 300]), case % 7)
        for _ in range(rng.choice([1, 1, 2, 3])):  # several faults: the first reported must agree
            _break(nodes, rng)
        refused += _same(nodes, n_features)[0] == "refused"
    assert refused > 400  # the mutations mostly break the tree (a few are harmless)


def test_every_kind_of_fault_is_worded_the_same() -> None:
    """Each fault the compiled scan reports (every branch of ``tree_links._fault``), crafted on
    a real tree: the scan's own kind, and the same whole message from both checks."""
    from modelkeep.formats._treelinks import links

    nodes, n_features, _ = _fitted_nodes(60, 1)
    n = nodes.shape[0]
    split = _split(nodes)
    i = int(split[1])
    left_i, right_i = int(nodes["left_child"][i]), int(nodes["right_child"][i])
    root_right, first_left = int(nodes["right_child"][0]), int(nodes["left_child"][0])
    orphan = int(nodes["right_child"][first_left])
    cases = [  # (field, node, value, kind _treelinks reports, whole message)
        ("right_child", i, -1, 1, f"Tree node {i} has children {left_i} and -1: one leaf marker, one node"),
        ("left_child", i, -1, 1, f"Tree node {i} has children -1 and {right_i}: one leaf marker, one node"),
        ("feature", i, n_features, 2, f"Tree node {i} splits on feature {n_features} outside 0..{n_features - 1}"),
        ("feature", i, -3, 2, f"Tree node {i} splits on feature -3 outside 0..{n_features - 1}"),
        ("left_child", i, i, 3, f"Tree node {i} has left child {i} outside {i + 1}..{n - 1}"),
        ("left_child", i, n, 3, f"Tree node {i} has left child {n} outside {i + 1}..{n - 1}"),
        ("right_child", i, 0, 4, f"Tree node {i} has right child 0 outside {i + 1}..{n - 1}"),
        ("right_child", i, n + 5, 4, f"Tree node {i} has right child {n + 5} outside {i + 1}..{n - 1}"),
        (
            "right_child",
            first_left,
            root_right,
            5,
            f"Tree node {min(orphan, root_right)} is the child of {0 if orphan < root_right else 2} nodes "
            "(a tree needs exactly one parent)",
        ),
    ]
    for key, node, value, kind, message in cases:
        broken = nodes.copy()
        broken[key][node] = value
        offsets = [broken.dtype.fields[k][1] for k in ("left_child", "right_child", "feature")]
        assert links(broken, n, broken.dtype.itemsize, *offsets, n_features)[0] == kind, (key, value)
        assert _same(broken, n_features) == ("refused", str(refuse(message))), (key, value)
    unknown = refuse("Tree nodes failed an unknown link check (99, 3)")
    assert str(tree_links._fault(99, 3, nodes, n_features)) == str(unknown)


def test_single_nodes_and_bare_roots() -> None:
    nodes, n_features, _ = _fitted_nodes(1, 0)
    assert nodes.shape[0] == 1
    assert _same(nodes, n_features) == ("depth", 0)
    nodes["left_child"][0], nodes["right_child"][0] = 1, 2  # a root whose children do not exist
    assert _same(nodes, n_features)[0] == "refused"


def test_views_and_byte_orders_give_the_same_answer() -> None:
    nodes, n_features, depth = _fitted_nodes(300, 3)
    every_other = np.zeros(nodes.shape[0] * 2, dtype=nodes.dtype)
    every_other[::2] = nodes
    assert _same(every_other[::2], n_features) == ("depth", depth)  # not contiguous: copied first
    swapped = nodes.astype(nodes.dtype.newbyteorder(">"))
    assert _same(swapped, n_features) == ("depth", depth)  # not native: the numpy check
    broken = every_other[::2]
    broken["left_child"][0] = 10**9
    assert _same(broken, n_features)[0] == "refused"


def test_the_compiled_function_refuses_records_that_do_not_fit_its_buffer() -> None:
    from modelkeep.formats._treelinks import links

    nodes, _, _ = _fitted_nodes(50, 2)
    n, size = nodes.shape[0], nodes.dtype.itemsize
    assert links(nodes, n, size, 0, 8, 16, 5)[0] == 0
    for args in [
        (n + 1, size, 0, 8, 16),  # more records than bytes
        (-1, size, 0, 8, 16),
        (n, 7, 0, 8, 16),  # a record smaller than one field
        (n, size, size - 7, 8, 16),  # a field past the record
        (n, size, 0, -8, 16),
        (n, size, 0, 8, 2**40),
    ]:
        with pytest.raises(ValueError, match="do not fit"):
            links(nodes, *args, 5)
    assert links(b"", 0, 64, 0, 8, 16, 5) == (0, 0)
    with pytest.raises(TypeError):
        links(list(range(10)), 1, 8, 0, 0, 0, 1)


# ---------------------------------------- histogram gradient boosting predictors (TreePredictor)


def _predictor_answer(nodes: Any, scanner: str, *args: Any) -> tuple[str, Any]:
    try:
        return "depth", tree_links.check_predictor_links(nodes, *args, scanner=scanner)
    except UnsafeModelError as exc:
        return "refused", str(exc)


def _same_predictor(
    nodes: Any, n_bitsets: int | None, n_features: int | None = None, categorical: Any = None
) -> tuple[str, Any]:
    """Both predictor checks' answer, which must be the same."""
    c = _predictor_answer(nodes, "c", n_bitsets, n_features, categorical)
    assert c == _predictor_answer(nodes, "python", n_bitsets, n_features, categorical)
    return c


#: The categorical flags of the fitted predictors' features: the model's encoder puts its
#: categorical feature (column 3 of its input) first.
CATEGORICAL = np.array([True, False, False, False, False])


def _fitted_predictors(seed: int, max_iter: int = 3, categorical: bool = True) -> tuple[list[Any], int]:
    """The predictors of a real fitted HGB classifier (a categorical feature) and its width."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, 5))
    x[:, 3] = rng.integers(0, 6, 300)
    y = (x[:, 0] + (x[:, 3] % 2) + 0.3 * rng.standard_normal(300) > 0.5).astype(int)
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, categorical_features=[3] if categorical else None, random_state=seed
    ).fit(x, y)
    return [stage[0] for stage in model._predictors], 5


def _rows(predictor: Any) -> int:
    return int(predictor.binned_left_cat_bitsets.shape[0])


def test_the_compiled_predictor_check_is_the_one_that_runs() -> None:
    assert tree_links._c_predictor_links is not None
    predictor = _fitted_predictors(0, 1)[0][0]
    assert tree_links._offsets(predictor.nodes, tree_links._PREDICTOR_FIELDS) is not None


@pytest.mark.parametrize(("seed", "max_iter", "categorical"), [(0, 1, False), (1, 3, True), (2, 20, True)])
def test_honest_predictors_get_their_depth_from_both(seed: int, max_iter: int, categorical: bool) -> None:
    predictors, n_features = _fitted_predictors(seed, max_iter, categorical)
    for predictor in predictors:
        nodes = predictor.nodes
        depth = int(nodes["depth"].max())  # the depth the grower recorded in each node
        assert _same_predictor(nodes, _rows(predictor)) == ("depth", depth)
        assert _same_predictor(nodes, _rows(predictor), n_features) == ("depth", depth)
        flags = CATEGORICAL if categorical else np.zeros(n_features, dtype=bool)
        assert _same_predictor(nodes, None, n_features, flags) == ("depth", depth)


def _break_predictor(nodes: np.ndarray, rng: random.Random) -> None:
    """Break a predictor's ``nodes`` in place one way an attacker would."""
    n = nodes.shape[0]
    split = np.flatnonzero(nodes["is_leaf"] == 0)
    i = int(rng.choice(split)) if split.size else 0
    side = rng.choice(["left", "right"])
    how = rng.randrange(9)
    if how == 0:
        nodes[side][i] = rng.choice([0, i, n, n + 7, 2**31, 2**32 - 1])
    elif how == 1:
        nodes[side][i] = rng.randrange(0, i + 1)  # back to itself or before: a cycle
    elif how == 2 and split.size > 1:
        nodes[side][i] = nodes[side][int(rng.choice(split[split != i]))]  # two parents, an orphan
    elif how == 3:
        nodes["feature_idx"][i] = rng.choice([-1, -(2**40), INT64.min, 5, 6, INT64.max])
    elif how == 4:
        nodes["is_leaf"][rng.randrange(n)] = rng.choice([0, 1, 2, 255])  # a leaf turned split, or back
    elif how == 5:
        nodes["is_categorical"][i], nodes["bitset_idx"][i] = 1, rng.choice([0, 1, 2, 2**31, 2**32 - 1])
    elif how == 6:
        nodes["left"][i], nodes["right"][i] = nodes["right"][i], nodes["left"][i]  # harmless
    elif how == 7:
        nodes["is_categorical"][i] = 1 - nodes["is_categorical"][i]  # a split made (or unmade) categorical
    else:
        nodes[side][rng.randrange(n)] = rng.randrange(0, n + 3)


def test_broken_predictors_get_the_same_answer_from_both() -> None:
    rng = random.Random(28)
    honest = [p for seed in range(3) for p in _fitted_predictors(seed, 4)[0]]
    refused = 0
    for _ in range(600):
        predictor = rng.choice(honest)
        nodes = predictor.nodes.copy()
        for _fault in range(rng.choice([1, 1, 2, 3])):  # several faults: the first reported must agree
            _break_predictor(nodes, rng)
        n_features = rng.choice([None, 5])
        flags = rng.choice([None, CATEGORICAL, CATEGORICAL[:3], np.zeros(0, dtype=bool)])
        refused += _same_predictor(nodes, rng.choice([None, _rows(predictor)]), n_features, flags)[0] == "refused"
    assert refused > 350  # most mutations break the predictor (swaps and re-marked leaves may not)


def _features_answer(nodes: Any, flags: Any, scanner: str) -> str | None:
    try:
        tree_links.check_predictor_features(nodes, 5, flags, what="HGB predictor 0,0", scanner=scanner)
    except UnsafeModelError as exc:
        return str(exc)
    return None


def test_the_estimator_check_of_predictor_features_is_the_same_from_both() -> None:
    """What the estimator checks of predictors whose links passed: features below its width,
    categorical splits on its categorical features (the numpy check tests only these)."""
    rng = random.Random(27)
    honest = [p for seed in range(3) for p in _fitted_predictors(seed, 4)[0]]
    refused = 0
    for _ in range(400):
        nodes = rng.choice(honest).nodes.copy()
        split = np.flatnonzero(nodes["is_leaf"] == 0)
        for _fault in range(rng.choice([0, 1, 2])):
            i = int(rng.choice(split))
            if rng.random() < 0.5:
                nodes["feature_idx"][i] = rng.choice([0, 1, 4, 5, 6, 2**40, INT64.max])
            else:
                nodes["is_categorical"][i] = 1 - nodes["is_categorical"][i]
        flags = rng.choice([CATEGORICAL, CATEGORICAL[:3], np.zeros(0, dtype=bool), np.ones(5, dtype=bool)])
        c = _features_answer(nodes, flags, "c")
        assert c == _features_answer(nodes, flags, "python")
        refused += c is not None
    assert 100 < refused < 400
    node = int(np.flatnonzero(honest[0].nodes["is_leaf"] == 0)[0])
    wide = honest[0].nodes.copy()
    wide["feature_idx"][node] = 5
    assert _features_answer(wide, CATEGORICAL, "python") == str(
        refuse(f"HGB predictor 0,0 node {node} splits on feature 5 outside 0..4")
    )


def test_every_kind_of_predictor_fault_is_worded_the_same() -> None:
    """Each fault ``_treelinks.predictor_links`` reports, crafted on a real predictor: the
    scan's own kind, and the same whole message from both checks."""
    from modelkeep.formats._treelinks import predictor_links

    predictors, n_features = _fitted_predictors(3, 3)
    predictor = max(predictors, key=lambda p: p.nodes.shape[0])
    nodes, rows = predictor.nodes, _rows(predictor)
    n = nodes.shape[0]
    split = np.flatnonzero(nodes["is_leaf"] == 0)
    i = int(split[1])
    root_right, first_left = int(nodes["right"][0]), int(nodes["left"][0])
    orphan = int(nodes["right"][first_left])
    j = next(int(k) for k in split if nodes["feature_idx"][k] != 0 and not nodes["is_categorical"][k])
    fj = int(nodes["feature_idx"][j])
    cases = [  # (field, node, value, n_features given, kind, whole message)
        ("feature_idx", i, -2, None, 2, f"TreePredictor node {i} splits on feature -2, below 0"),
        ("feature_idx", i, 5, 5, 2, f"TreePredictor node {i} splits on feature 5 outside 0..4"),
        ("left", i, i, None, 3, f"TreePredictor node {i} has left child {i} outside {i + 1}..{n - 1}"),
        ("left", i, 2**32 - 1, 5, 3, f"TreePredictor node {i} has left child {2**32 - 1} outside {i + 1}..{n - 1}"),
        ("right", i, n, None, 4, f"TreePredictor node {i} has right child {n} outside {i + 1}..{n - 1}"),
        (
            "right",
            first_left,
            root_right,
            None,
            5,
            f"TreePredictor node {min(orphan, root_right)} is the child of {0 if orphan < root_right else 2} "
            "nodes (a tree needs exactly one parent)",
        ),
        ("bitset_idx", i, rows, None, 6, f"TreePredictor node {i} uses bitset {rows} of {rows} bitset rows"),
        (
            "is_categorical",
            j,
            1,
            None,
            7,
            f"TreePredictor node {j} is a categorical split on feature {fj}, which is not categorical",
        ),
        (
            "feature_idx",
            j,
            4,
            5,
            7,
            f"TreePredictor node {j} is a categorical split on feature 4, which is not categorical",
        ),
    ]
    fields = [k for k, _ in tree_links._PREDICTOR_FIELDS]
    for key, node, value, width, kind, message in cases:
        broken = nodes.copy()
        broken[key][node] = value
        flags = CATEGORICAL
        if key == "bitset_idx":
            broken["is_categorical"][node] = 1
        if key == "feature_idx" and kind == 7:  # a feature past the four flags given
            broken["is_categorical"][node], broken["bitset_idx"][node], flags = 1, 0, CATEGORICAL[:4]
        offsets = [broken.dtype.fields[k][1] for k in fields]
        bound = 2**63 - 1 if width is None else width
        answer = predictor_links(broken, n, broken.dtype.itemsize, *offsets, bound, rows, flags)
        assert answer[0] == kind, (key, value)
        assert _same_predictor(broken, rows, width, flags) == ("refused", str(refuse(message))), (key, value)
    assert n_features == 5
    unknown = refuse("TreePredictor nodes failed an unknown link check (99, 3)")
    assert str(tree_links._fault(99, 3, nodes, None, what="TreePredictor", predictor=True)) == str(unknown)


def test_predictor_views_and_byte_orders_give_the_same_answer() -> None:
    predictor = _fitted_predictors(4, 2)[0][0]
    nodes, rows = predictor.nodes, _rows(predictor)
    depth = int(nodes["depth"].max())
    every_other = np.zeros(nodes.shape[0] * 2, dtype=nodes.dtype)
    every_other[::2] = nodes
    assert _same_predictor(every_other[::2], rows) == ("depth", depth)  # not contiguous: copied first
    swapped = nodes.astype(nodes.dtype.newbyteorder(">"))
    assert tree_links._offsets(swapped, tree_links._PREDICTOR_FIELDS) is None
    assert _same_predictor(swapped, rows) == ("depth", depth)  # not native: the numpy check
    broken = every_other[::2]
    broken["right"][0] = 10**9
    assert _same_predictor(broken, rows)[0] == "refused"


def test_the_compiled_predictor_function_refuses_records_that_do_not_fit_its_buffer() -> None:
    from modelkeep.formats._treelinks import predictor_links

    nodes = _fitted_predictors(5, 1)[0][0].nodes
    n, size = nodes.shape[0], nodes.dtype.itemsize
    offsets = [nodes.dtype.fields[k][1] for k, _ in tree_links._PREDICTOR_FIELDS]
    assert predictor_links(nodes, n, size, *offsets, 5, 1, None)[0] == 0
    for index, bad in [(0, size - 3), (1, -1), (2, size - 7), (3, size), (4, -5), (5, size - 3), (5, 2**40)]:
        moved = list(offsets)
        moved[index] = bad
        with pytest.raises(ValueError, match="do not fit"):
            predictor_links(nodes, n, size, *moved, 5, 1, None)
    for count, itemsize in [(n + 1, size), (-1, size), (n, 7)]:
        with pytest.raises(ValueError, match="do not fit"):
            predictor_links(nodes, count, itemsize, *offsets, 5, 1, None)
    assert predictor_links(b"", 0, 64, 0, 8, 16, 24, 25, 26, 5, 1, b"") == (0, 0)
    with pytest.raises(TypeError):  # the categorical flags must be a buffer
        predictor_links(nodes, n, size, *offsets, 5, 1, [True] * 5)


def _bad_predictor_model(how: str) -> bytes:
    """A pickled HGB regressor on 4 features whose second predictor is broken ``how``: a link
    (refused by the predictor's own check), or what only the estimator knows is wrong."""
    import pickle

    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(6)
    x = rng.standard_normal((100, 4))
    model = HistGradientBoostingRegressor(max_iter=3).fit(x, x[:, 0])
    predictor = model._predictors[1][0]
    nodes = predictor.nodes = predictor.nodes.copy()
    split = int(np.flatnonzero(nodes["is_leaf"] == 0)[1])
    if how == "link":
        nodes["right"][0] = 0  # the root its own child: a walk that never ends
    elif how == "width":
        nodes["feature_idx"][split] = 4  # reads X[:, 4] of 4-column input
    else:  # a categorical split (on a bitset row that exists) on a feature that is not categorical
        nodes["is_categorical"][split], nodes["bitset_idx"][split] = 1, 0
        predictor.binned_left_cat_bitsets = np.zeros((1, 8), np.uint32)
        predictor.raw_left_cat_bitsets = np.zeros((1, 8), np.uint32)
    return pickle.dumps(model)


_HGB = r"HistGradientBoostingRegressor predictor 1,0 node \d+"


PLANTED = {  # a model, the compiled check the numpy one replaces, and the refusal
    "tree": (lambda: tree_attack()[0], "_c_links", r"Tree node 0 has left child 1000000000"),
    "predictor": (
        lambda: _bad_predictor_model("link"),
        "_c_predictor_links",
        r"TreePredictor node 0 has right child 0 outside 1\.\.\d+",
    ),
    "predictor-width": (
        lambda: _bad_predictor_model("width"),
        "_c_predictor_links",
        _HGB + r" splits on feature 4 outside 0\.\.3",
    ),
    "predictor-categorical": (
        lambda: _bad_predictor_model("categorical"),
        "_c_predictor_links",
        _HGB + r" is a categorical split on feature \d, which is not categorical",
    ),
}


@pytest.mark.parametrize("scanner", ["c", "python"])
@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_planted_tree_is_refused_with_either_check(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, planted: str, scanner: str
) -> None:
    make, compiled, message = PLANTED[planted]
    if scanner == "python":
        monkeypatch.setattr(tree_links, compiled, None)
    with ModelPersistence(tmp_path / "models") as p:
        _plant(p, make())
        with pytest.raises(UnsafeModelError, match=message):
            p.load("victim", "1.0.0")
