"""The compiled check of a decision tree's node links (formats/_treelinks.c) against the numpy one.

The C check replaces the numpy check only if it gives the same answer on every input, so each
test runs both on the same node array: honest trees of several shapes, then trees broken the
ways an attacker would break them (children out of range or before their parent, cycles, two
parents, orphans, one leaf marker of two, features out of range, extreme integers), one and
several faults at once (the first fault reported must be the same), views that are not
contiguous and byte orders that are not native. Then the compiled function's own argument
checks, and a planted tree refused by a real load with either check.
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


@pytest.mark.parametrize("scanner", ["c", "python"])
def test_a_planted_tree_is_refused_with_either_check(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, scanner: str
) -> None:
    if scanner == "python":
        monkeypatch.setattr(tree_links, "_c_links", None)
    with ModelPersistence(tmp_path / "models") as p:
        _plant(p, tree_attack()[0])
        with pytest.raises(UnsafeModelError, match="Tree node 0 has left child 1000000000"):
            p.load("victim", "1.0.0")
