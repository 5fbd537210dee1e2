"""The node links of a decision tree, checked before native code follows them.

scikit-learn's ``Tree`` walks ``left_child``/``right_child`` and reads ``X[i, feature]`` with
bounds checks off. :func:`check_tree_links` refuses a node array unless both children of every
node are ``TREE_LEAF`` or both come after it and inside the array, every split feature is below
``n_features``, and every node but the root is the child of exactly one node (so the nodes are
one tree and a walk ends); it returns the tree's depth, for the check of ``max_depth``.

The check runs in C when the optional extension ``formats/_treelinks.c`` was built (one pass
over the records, no copy; :data:`TREE_SCANNER` says ``"c"``), else in numpy
(:func:`_check_numpy`): the same checks, the same first fault, the same message
(``tests/test_tree_links.py`` compares the two on crafted trees).
"""

from __future__ import annotations

from typing import Any

from .state_checks import refuse

try:
    from ._treelinks import links as _c_links
except ImportError:  # built without a compiler: the numpy check
    _c_links = None

#: Which check :func:`check_tree_links` runs: ``"c"`` (the compiled extension) or ``"python"``.
TREE_SCANNER = "python" if _c_links is None else "c"

_FIELDS = ("left_child", "right_child", "feature")
#: The faults ``_treelinks.links`` reports, by kind (0 is a proper tree).
_LEAF_MISMATCH, _BAD_FEATURE, _BAD_LEFT, _BAD_RIGHT, _NOT_ONE_PARENT = range(1, 6)


def first_bad(mask: Any) -> int:
    """The index of the first true entry of ``mask``."""
    import numpy as np

    return int(np.flatnonzero(mask)[0])


# The refusals, one builder per fault, shared by the compiled check's :func:`_fault`, the numpy
# check and :func:`check_single_parent_tree` (whose other caller checks ``TreePredictor`` nodes):
# one wording per fault, whichever check found it.


def leaf_mismatch(what: str, i: int, left: int, right: int) -> Exception:
    """Node ``i`` has one child ``TREE_LEAF`` and the other a node."""
    return refuse(f"{what} node {i} has children {left} and {right}: one leaf marker, one node")


def feature_outside(what: str, i: int, feature: int, n_features: int) -> Exception:
    """Split node ``i`` reads a feature outside ``0..n_features - 1``."""
    return refuse(f"{what} node {i} splits on feature {feature} outside 0..{n_features - 1}")


def child_outside(what: str, i: int, side: str, child: int, n: int) -> Exception:
    """Split node ``i`` has its ``side`` child outside ``i + 1..n - 1``."""
    return refuse(f"{what} node {i} has {side} child {child} outside {i + 1}..{n - 1}")


def not_one_parent(what: str, i: int, count: int) -> Exception:
    """Node ``i`` (not the root) is the child of ``count`` nodes, not one."""
    return refuse(f"{what} node {i} is the child of {count} nodes (a tree needs exactly one parent)")


def check_single_parent_tree(what: str, left: Any, right: Any, internal: Any) -> int:
    """Children of internal nodes above their parent, every node but the root the child of
    exactly one parent (so a walk ends, and a stack sized by node count cannot overflow).
    Returns the depth of the tree."""
    import numpy as np

    n = left.shape[0]
    parents = np.flatnonzero(internal)
    lc, rc = left[parents].astype(np.int64, copy=False), right[parents].astype(np.int64, copy=False)
    if ((lc <= parents) | (lc >= n) | (rc <= parents) | (rc >= n)).any():
        for side, child in (("left", lc), ("right", rc)):
            bad = (child <= parents) | (child >= n)
            if bad.any():
                j = first_bad(bad)
                i = int(parents[j])
                raise child_outside(what, i, side, int(child[j]), n)
    children = np.concatenate([lc, rc]).astype(np.intp)
    counts = np.bincount(children, minlength=n)  # children > parents >= 0: never the root
    if n and (counts[1:] != 1).any():
        i = 1 + first_bad(counts[1:] != 1)
        raise not_one_parent(what, i, int(counts[i]))
    if n < 2:
        return 0
    # depth by pointer jumping: rank[i] is the distance from i to nxt[i]; log2(depth) rounds
    parent = np.zeros(n, dtype=np.intp)
    parent[children] = np.concatenate([parents, parents])
    rank = np.ones(n, dtype=np.intp)
    rank[0] = 0
    nxt = parent
    while nxt.any():
        rank = rank + rank[nxt]
        nxt = nxt[nxt]
    return int(rank.max())


def check_tree_links(nodes: Any, n_features: int, *, scanner: str | None = None) -> int:
    """Refuse the ``NODE_DTYPE`` array ``nodes`` unless its links make one tree whose split
    features are below ``n_features``; return its depth. ``scanner`` (``"c"`` or ``"python"``)
    picks the implementation, for tests; by default the compiled one when it was built."""
    use_c = _c_links is not None if scanner is None else scanner == "c"
    if use_c and _c_links is not None and _native_int64_fields(nodes):
        import numpy as np

        nodes = np.ascontiguousarray(nodes)  # a view of the same memory when it already is
        offsets = [nodes.dtype.fields[k][1] for k in _FIELDS]
        kind, value = _c_links(nodes, nodes.shape[0], nodes.dtype.itemsize, *offsets, n_features)
        if kind == 0:
            return int(value)
        raise _fault(kind, value, nodes, n_features)
    return _check_numpy(nodes, n_features)


def _native_int64_fields(nodes: Any) -> bool:
    """Whether the three link fields of ``nodes`` are 64-bit integers in this machine's byte order
    (``NODE_DTYPE`` says little-endian: a big-endian machine takes the numpy check)."""
    import numpy as np

    fields = getattr(getattr(nodes, "dtype", None), "fields", None) or {}
    native = np.dtype(np.int64)
    return nodes.ndim == 1 and all(k in fields and fields[k][0] == native and fields[k][0].isnative for k in _FIELDS)


def _fault(kind: int, i: int, nodes: Any, n_features: int) -> Exception:
    """The refusal for the fault ``kind`` at node ``i`` that ``_treelinks.links`` found, from the
    same builders :func:`_check_numpy` raises."""
    n = nodes.shape[0]
    left, right = int(nodes["left_child"][i]), int(nodes["right_child"][i])
    if kind == _LEAF_MISMATCH:
        return leaf_mismatch("Tree", i, left, right)
    if kind == _BAD_FEATURE:
        return feature_outside("Tree", i, int(nodes["feature"][i]), n_features)
    if kind in (_BAD_LEFT, _BAD_RIGHT):
        side, child = ("left", left) if kind == _BAD_LEFT else ("right", right)
        return child_outside("Tree", i, side, child, n)
    if kind == _NOT_ONE_PARENT:
        internal = nodes["left_child"] != -1
        count = int((internal & (nodes["left_child"] == i)).sum() + (internal & (nodes["right_child"] == i)).sum())
        return not_one_parent("Tree", i, count)
    return refuse(f"Tree nodes failed an unknown link check ({kind}, {i})")


def _check_numpy(nodes: Any, n_features: int) -> int:
    """:func:`check_tree_links` in numpy: field copies and whole-array tests."""
    import numpy as np
    from sklearn.tree._tree import TREE_LEAF

    # contiguous copies of the three fields: every test below then runs on plain int arrays
    left, right, feature = (np.ascontiguousarray(nodes[k]) for k in _FIELDS)
    leaf_l, leaf_r = left == TREE_LEAF, right == TREE_LEAF
    if (leaf_l != leaf_r).any():
        i = first_bad(leaf_l != leaf_r)
        raise leaf_mismatch("Tree", i, int(left[i]), int(right[i]))
    internal = ~leaf_l
    bad = internal & ((feature < 0) | (feature >= n_features))
    if bad.any():
        i = first_bad(bad)
        raise feature_outside("Tree", i, int(feature[i]), n_features)
    return check_single_parent_tree("Tree", left, right, internal)
