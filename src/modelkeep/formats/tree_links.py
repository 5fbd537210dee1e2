"""The node links of a decision tree (or of a histogram gradient boosting predictor), checked
before native code follows them.

scikit-learn's ``Tree`` walks ``left_child``/``right_child`` and reads ``X[i, feature]`` with
bounds checks off. :func:`check_tree_links` refuses a node array unless both children of every
node are ``TREE_LEAF`` or both come after it and inside the array, every split feature is below
``n_features``, and every node but the root is the child of exactly one node (so the nodes are
one tree and a walk ends); it returns the tree's depth, for the check of ``max_depth``.

The check runs in C when the optional extension ``formats/_treelinks.c`` was built (one pass
over the records, no copy; :data:`TREE_SCANNER` says ``"c"``), else in numpy
(:func:`_check_numpy`): the same checks, the same first fault, the same message
(``tests/test_tree_links.py`` compares the two on crafted trees).

:func:`check_predictor_links` is the same check for the nodes of a histogram gradient boosting
``TreePredictor`` (``PREDICTOR_RECORD_DTYPE``: an ``is_leaf`` flag, unsigned 32-bit children),
which also refuses a categorical split whose ``bitset_idx`` is past the bitset rows, or (given
the estimator's ``is_categorical_``) whose feature is not categorical; in C
(``_treelinks.predictor_links``) or numpy (:func:`_check_predictor_numpy`), compared the same way.
"""

from __future__ import annotations

import functools
from typing import Any

from .state_checks import refuse

try:
    from ._treelinks import links as _c_links
    from ._treelinks import predictor_links as _c_predictor_links
except ImportError:  # built without a compiler: the numpy checks
    _c_links = _c_predictor_links = None

#: Which check :func:`check_tree_links` runs: ``"c"`` (the compiled extension) or ``"python"``.
TREE_SCANNER = "python" if _c_links is None else "c"

_FIELDS = ("left_child", "right_child", "feature")
#: The ``Tree`` node fields ``_treelinks.links`` reads, and the types it reads them as.
_TREE_FIELDS = (("left_child", "i8"), ("right_child", "i8"), ("feature", "i8"))
#: The ``TreePredictor`` node fields ``_treelinks.predictor_links`` reads, and their types.
_PREDICTOR_FIELDS = (
    ("left", "u4"),
    ("right", "u4"),
    ("feature_idx", "i8"),
    ("is_leaf", "u1"),
    ("is_categorical", "u1"),
    ("bitset_idx", "u4"),
)
#: The faults ``_treelinks`` reports, by kind (0 is a proper tree).
_LEAF_MISMATCH, _BAD_FEATURE, _BAD_LEFT, _BAD_RIGHT, _NOT_ONE_PARENT, _BAD_BITSET, _NOT_CATEGORICAL = range(1, 8)
#: The feature bound of a predictor whose input width is not known yet (it is checked later).
_NO_BOUND = 2**63 - 1


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


def feature_outside(what: str, i: int, feature: int, n_features: int | None) -> Exception:
    """Split node ``i`` reads a feature outside ``0..n_features - 1`` (below 0: ``n_features``
    ``None``, not known yet)."""
    if n_features is None:
        return refuse(f"{what} node {i} splits on feature {feature}, below 0")
    return refuse(f"{what} node {i} splits on feature {feature} outside 0..{n_features - 1}")


def child_outside(what: str, i: int, side: str, child: int, n: int) -> Exception:
    """Split node ``i`` has its ``side`` child outside ``i + 1..n - 1``."""
    return refuse(f"{what} node {i} has {side} child {child} outside {i + 1}..{n - 1}")


def not_one_parent(what: str, i: int, count: int) -> Exception:
    """Node ``i`` (not the root) is the child of ``count`` nodes, not one."""
    return refuse(f"{what} node {i} is the child of {count} nodes (a tree needs exactly one parent)")


def bitset_outside(what: str, i: int, bitset: int, rows: int) -> Exception:
    """Categorical split node ``i`` looks its categories up in a bitset row past the ``rows`` there are."""
    return refuse(f"{what} node {i} uses bitset {bitset} of {rows} bitset rows")


def not_categorical(what: str, i: int, feature: int) -> Exception:
    """Categorical split node ``i`` splits on a feature that has no category bitsets."""
    return refuse(f"{what} node {i} is a categorical split on feature {feature}, which is not categorical")


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
    offsets = _offsets(nodes, _TREE_FIELDS) if use_c and _c_links is not None else None
    if offsets is not None and _c_links is not None:
        import numpy as np

        nodes = np.ascontiguousarray(nodes)  # a view of the same memory when it already is
        kind, value = _c_links(nodes, nodes.shape[0], nodes.dtype.itemsize, *offsets, n_features)
        if kind == 0:
            return int(value)
        raise _fault(kind, value, nodes, n_features)
    return _check_numpy(nodes, n_features)


def _offsets(nodes: Any, layout: tuple[tuple[str, str], ...]) -> tuple[int, ...] | None:
    """The offsets of the ``layout`` fields in the records of the 1-d array ``nodes``, or ``None``
    unless each has its type in this machine's byte order (the node dtypes say little-endian: a
    big-endian machine takes the numpy check). Found once per dtype (a model has hundreds of trees)."""
    dtype = getattr(nodes, "dtype", None)
    if getattr(nodes, "ndim", None) != 1 or dtype is None:
        return None
    try:
        return _layout_offsets(dtype, layout)
    except TypeError:  # a dtype that cannot be a cache key
        return None


@functools.lru_cache(maxsize=16)
def _layout_offsets(dtype: Any, layout: tuple[tuple[str, str], ...]) -> tuple[int, ...] | None:
    import numpy as np

    fields = dtype.fields or {}
    if not all(
        k in fields and fields[k][0] == np.dtype(t).newbyteorder("=") and fields[k][0].isnative for k, t in layout
    ):
        return None
    return tuple(int(fields[k][1]) for k, _ in layout)


def _fault(
    kind: int,
    i: int,
    nodes: Any,
    n_features: int | None,
    *,
    what: str = "Tree",
    predictor: bool = False,
    n_bitsets: int | None = None,
) -> Exception:
    """The refusal for the fault ``kind`` at node ``i`` that ``_treelinks`` found, from the same
    builders the numpy checks raise (``predictor``: ``TreePredictor`` nodes)."""
    lk, rk, fk = ("left", "right", "feature_idx") if predictor else _FIELDS
    n = nodes.shape[0]
    left, right = int(nodes[lk][i]), int(nodes[rk][i])
    if kind == _LEAF_MISMATCH:
        return leaf_mismatch(what, i, left, right)
    if kind == _BAD_FEATURE:
        return feature_outside(what, i, int(nodes[fk][i]), n_features)
    if kind in (_BAD_LEFT, _BAD_RIGHT):
        side, child = ("left", left) if kind == _BAD_LEFT else ("right", right)
        return child_outside(what, i, side, child, n)
    if kind == _NOT_ONE_PARENT:
        internal = nodes["is_leaf"] == 0 if predictor else nodes["left_child"] != -1
        count = int((internal & (nodes[lk] == i)).sum() + (internal & (nodes[rk] == i)).sum())
        return not_one_parent(what, i, count)
    if kind == _BAD_BITSET and predictor and n_bitsets is not None:
        return bitset_outside(what, i, int(nodes["bitset_idx"][i]), n_bitsets)
    if kind == _NOT_CATEGORICAL and predictor:
        return not_categorical(what, i, int(nodes[fk][i]))
    return refuse(f"{what} nodes failed an unknown link check ({kind}, {i})")


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


def check_predictor_links(
    nodes: Any,
    n_bitsets: int | None = None,
    n_features: int | None = None,
    categorical: Any = None,
    *,
    what: str = "TreePredictor",
    scanner: str | None = None,
) -> int:
    """Refuse the ``PREDICTOR_RECORD_DTYPE`` array ``nodes`` of a histogram gradient boosting
    ``TreePredictor`` unless the children of its split nodes make one tree (after their parent,
    inside the array, one parent each) and their features are at least 0, and, for what is
    given: features below ``n_features``, categorical splits on one of the ``n_bitsets`` bitset
    rows and on a feature true in ``categorical`` (a 1-d bool array, a value per feature).
    Returns the depth. ``what`` names the nodes in the refusal; ``scanner`` as for
    :func:`check_tree_links`."""
    import numpy as np

    mask = None if categorical is None else np.ascontiguousarray(categorical, dtype=bool)
    use_c = _c_predictor_links is not None if scanner is None else scanner == "c"
    offsets = _offsets(nodes, _PREDICTOR_FIELDS) if use_c and _c_predictor_links is not None else None
    if offsets is not None and _c_predictor_links is not None:
        nodes = np.ascontiguousarray(nodes)
        features, rows = (_NO_BOUND if v is None else v for v in (n_features, n_bitsets))
        kind, value = _c_predictor_links(nodes, nodes.shape[0], nodes.dtype.itemsize, *offsets, features, rows, mask)
        if kind == 0:
            return int(value)
        raise _fault(kind, value, nodes, n_features, what=what, predictor=True, n_bitsets=n_bitsets)
    return _check_predictor_numpy(nodes, n_bitsets, n_features, mask, what)


def check_predictor_features(
    nodes: Any, n_features: int, categorical: Any, *, what: str, scanner: str | None = None
) -> None:
    """For the estimator holding a ``TreePredictor`` whose nodes passed :func:`check_predictor_links`:
    refuse them unless every split's feature is below ``n_features`` and every categorical
    split's feature is true in ``categorical``. The compiled pass checks the links again on the
    way (one pass either way); the numpy check tests only these two (an estimator holds hundreds
    of predictors, and their links were checked at each predictor)."""
    import numpy as np

    use_c = _c_predictor_links is not None if scanner is None else scanner == "c"
    if use_c and _c_predictor_links is not None and _offsets(nodes, _PREDICTOR_FIELDS) is not None:
        check_predictor_links(nodes, None, n_features, categorical, what=what, scanner="c")
    else:
        mask = np.ascontiguousarray(categorical, dtype=bool)
        _check_predictor_numpy(nodes, None, n_features, mask, what, links=False)


def _check_predictor_numpy(
    nodes: Any, n_bitsets: int | None, n_features: int | None, categorical: Any, what: str, *, links: bool = True
) -> int:
    """:func:`check_predictor_links` in numpy, testing for the faults in the compiled check's order
    (``links=False``: not the links, nor the depth, which is then -1)."""
    import numpy as np

    internal = nodes["is_leaf"] == 0
    feature = nodes["feature_idx"]
    bad = internal & ((feature < 0) | (feature >= (_NO_BOUND if n_features is None else n_features)))
    if bad.any():
        i = first_bad(bad)
        raise feature_outside(what, i, int(feature[i]), n_features)
    depth = -1
    if links:
        left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
        depth = check_single_parent_tree(what, left, right, internal)
    split = internal & (nodes["is_categorical"] != 0)
    bad = split & (nodes["bitset_idx"] >= (_NO_BOUND if n_bitsets is None else n_bitsets))
    if bad.any():
        i = first_bad(bad)
        raise bitset_outside(what, i, int(nodes["bitset_idx"][i]), _NO_BOUND if n_bitsets is None else n_bitsets)
    if categorical is not None:
        inside = (feature >= 0) & (feature < categorical.shape[0])
        marked = np.zeros(feature.shape[0], dtype=bool)
        marked[inside] = categorical[feature[inside]]
        bad = split & ~marked
        if bad.any():
            i = first_bad(bad)
            raise not_categorical(what, i, int(feature[i]))
    return depth
