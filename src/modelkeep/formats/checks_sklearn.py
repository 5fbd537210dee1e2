"""State checks for scikit-learn's native-backed types (reviewed in docs/native-state-review.md).

Each check reads the state a pickle (or skops) hands to a type whose Cython code indexes
arrays with bounds checks off, and refuses anything native code could read or write out of
bounds with: decision ``Tree`` nodes, KD/Ball tree index arrays and node data, distance
metric parameters, histogram gradient boosting predictor nodes, libsvm support arrays, and
the estimators that pass input of one width to trees built for another. numpy and
scikit-learn are imported inside the checks, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .state_checks import refuse, register_build, register_call
from .tree_links import check_predictor_features, check_predictor_links, check_tree_links
from .tree_links import first_bad as _first_bad

#: A tree's node count, class count or depth above this is refused as absurd (2**31: int32).
MAX_SIZE = 2**31 - 1


def _int(value: Any, what: str, low: int = 0, high: int = MAX_SIZE) -> int:
    """``value`` as an int in ``low..high`` (no bools, no floats)."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise refuse(f"{what} is {type(value).__name__} {value!r}, not an integer")
    if not low <= int(value) <= high:
        raise refuse(f"{what} is {int(value)}, outside {low}..{high}")
    return int(value)


def _array(value: Any, what: str, ndim: int, dtype: Any = None, kind: str | None = None) -> Any:
    """``value`` as an ndarray of ``ndim`` dimensions and exactly ``dtype`` (or dtype ``kind``)."""
    import numpy as np

    if not isinstance(value, np.ndarray):
        raise refuse(f"{what} is {type(value).__name__}, not a numpy array")
    if value.ndim != ndim:
        raise refuse(f"{what} has {value.ndim} dimensions, expected {ndim}")
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise refuse(f"{what} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if kind is not None and value.dtype.kind not in kind:
        raise refuse(f"{what} has dtype {value.dtype}, expected a {'/'.join(kind)} dtype")
    return value


# ---------------------------------------------------------------- sklearn.tree._tree.Tree


@register_call("sklearn.tree._tree", "Tree")
def check_tree_call(func: Any, args: tuple[Any, ...]) -> None:
    """``Tree(n_features, n_classes, n_outputs)``: ``__cinit__`` copies ``n_classes[k]`` for
    ``k < n_outputs`` with bounds checks off and sizes every node's value row by them."""
    if len(args) != 3:
        raise refuse(f"Tree() takes (n_features, n_classes, n_outputs), got {len(args)} arguments")
    _int(args[0], "Tree n_features", 1)
    n_outputs = _int(args[2], "Tree n_outputs", 1)
    n_classes = _array(args[1], "Tree n_classes", 1, kind="iu")
    if n_classes.shape[0] != n_outputs:
        raise refuse(f"Tree n_classes has {n_classes.shape[0]} entries for {n_outputs} outputs")
    if (n_classes < 1).any() or int(n_classes.max()) * n_outputs > MAX_SIZE:
        raise refuse(f"Tree n_classes {n_classes.tolist()[:10]} must be positive and small enough to allocate")


@register_build("sklearn.tree._tree", "Tree", copies=True)
def check_tree(tree: Any, state: Any) -> None:
    """Nodes exactly ``NODE_DTYPE``, values ``(node_count, n_outputs, max_n_classes)`` float64,
    children within ``node_count`` (both, or both ``TREE_LEAF``), features below ``n_features``,
    a proper tree (children after parents, one parent each), ``max_depth`` at least its depth."""
    import numpy as np
    from sklearn.tree._tree import NODE_DTYPE

    if not isinstance(state, Mapping):
        raise refuse(f"Tree state is {type(state).__name__}, not a dict")
    for key in ("max_depth", "node_count", "nodes", "values"):
        if key not in state:
            raise refuse(f"Tree state has no {key!r}")
    nodes = _array(state["nodes"], "Tree nodes", 1)
    if nodes.dtype != NODE_DTYPE:
        raise refuse(f"Tree nodes have dtype {nodes.dtype}, expected {NODE_DTYPE}")
    n = nodes.shape[0]
    node_count = _int(state["node_count"], "Tree node_count", 1)
    if node_count != n:
        raise refuse(f"Tree node_count is {node_count} but there are {n} nodes")
    shape = (n, int(tree.n_outputs), int(tree.max_n_classes))
    values = _array(state["values"], "Tree values", 3, np.float64)
    if values.shape != shape:
        raise refuse(f"Tree values have shape {values.shape}, expected {shape}")
    depth = check_tree_links(nodes, int(tree.n_features))
    max_depth = _int(state["max_depth"], "Tree max_depth", 0, n)
    if depth > max_depth:
        raise refuse(f"Tree max_depth is {max_depth} but the tree is {depth} deep")


# ---------------------------------------------------- estimators that feed trees their input


def _merged(target: Any, state: Any) -> dict[str, Any]:
    """The attributes ``target`` has after ``BUILD`` applies ``state`` (a dict, or ``(dict, slots)``)."""
    merged = dict(getattr(target, "__dict__", None) or {})
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    if isinstance(state, Mapping):
        merged.update(state)
    return merged


def _iter_estimators(value: Any) -> Iterable[Any]:
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return list(value.ravel())
    if isinstance(value, (list, tuple)):
        return value
    return ()


def _n_features_in(est: Any, what: str) -> int:
    n = est.get("n_features_in_") if isinstance(est, dict) else getattr(est, "n_features_in_", None)
    if n is None:
        raise refuse(f"{what} holds a fitted tree but has no n_features_in_ to check its input against")
    return _int(n, f"{what} n_features_in_", 0)


@register_build("sklearn.base", "BaseEstimator")
def check_estimator(est: Any, state: Any) -> None:
    """An estimator whose trees predict on input checked against *its* ``n_features_in_``
    (``tree_`` of a decision tree; ``estimators_`` of forests and gradient boosting, which call
    the trees without checking the input again) must have trees of exactly that width."""
    attrs = _merged(est, state)
    if attrs.get("tree_") is None and not _iter_estimators(attrs.get("estimators_")):
        return  # no tree to check: skip importing sklearn.tree (about 0.1 s of a server's start-up)
    import numpy as np
    from sklearn.tree._tree import Tree

    name = type(est).__name__
    tree = attrs.get("tree_")
    if isinstance(tree, Tree):
        n = _n_features_in(attrs, name)
        if int(tree.n_features) != n:
            raise refuse(f"{name} takes {n} features but its tree_ was built for {int(tree.n_features)}")
    members = list(_iter_estimators(attrs.get("estimators_")))
    if not any(isinstance(getattr(m, "tree_", None), Tree) for m in members):
        return
    features = attrs.get("estimators_features_")
    n_in = _n_features_in(attrs, name)
    if features is not None:
        features = list(features)
    for i, member in enumerate(members):
        if not isinstance(getattr(member, "tree_", None), Tree):
            continue
        width = _n_features_in(member, f"{name} estimator {i}")
        if features is not None:
            # bagging and isolation forests give tree i the columns estimators_features_[i]
            # (or all columns, when they think no subset was drawn): in range, no more than there are
            sub = np.asarray(features[i]) if i < len(features) else np.zeros(0)
            if (
                sub.ndim != 1
                or sub.dtype.kind not in "iu"
                or sub.size > n_in
                or (sub.size and (int(sub.min()) < 0 or int(sub.max()) >= n_in))
            ):
                raise refuse(f"{name} estimators_features_[{i}] is not a set of columns of its {n_in} features")
            expected = sub.size
        else:
            expected = n_in
        if width != expected or int(member.tree_.n_features) != width:
            raise refuse(
                f"{name} estimator {i} takes {width} features (tree: {int(member.tree_.n_features)}), "
                f"but is given {expected}"
            )
    _check_gradient_boosting(est, attrs, members)


def _check_gradient_boosting(est: Any, attrs: dict[str, Any], members: list[Any]) -> None:
    """``predict_stages`` adds each column of trees into a ``(n_samples, K)`` buffer sized by
    ``n_trees_per_iteration_`` (or the init estimator's classes), unchecked."""
    import numpy as np
    from sklearn.ensemble._gb import BaseGradientBoosting

    if not isinstance(est, BaseGradientBoosting):
        return
    name = type(est).__name__
    estimators = attrs.get("estimators_")
    if not isinstance(estimators, np.ndarray) or estimators.ndim != 2:
        raise refuse(f"{name} estimators_ is not a 2-D array of trees")
    k = _int(attrs.get("n_trees_per_iteration_"), f"{name} n_trees_per_iteration_", 1)
    if estimators.shape[1] != k:
        raise refuse(f"{name} has {estimators.shape[1]} trees per stage but n_trees_per_iteration_ {k}")
    init = attrs.get("init_")
    if init is None or (isinstance(init, str) and init == "zero"):
        return
    if "n_classes_" not in attrs:
        # a regressor's init predictions are reshaped to one column
        if k != 1:
            raise refuse(f"{name} is a regressor with {k} trees per stage, expected 1")
        return
    n_classes = _int(attrs["n_classes_"], f"{name} n_classes_", 1)
    if k != (1 if n_classes <= 2 else n_classes):
        raise refuse(f"{name} has {k} trees per stage for {n_classes} classes")
    if k == 1:
        return  # binary: one column taken from the init probabilities (numpy checks the index)
    # multiclass: the init estimator's probabilities, one column per class, are the buffer
    widths = {len(getattr(init, "classes_", ()))}
    if hasattr(init, "class_prior_"):  # DummyClassifier (the default): tiles class_prior_
        widths |= {len(init.class_prior_), int(getattr(init, "n_classes_", -1))}
    if widths != {n_classes}:
        raise refuse(f"{name} init_ predicts {sorted(widths)} columns, not one per each of {n_classes} classes")


# ------------------------------------------------------------ KDTree / BallTree (BinaryTree)


def _binary_tree(tree: Any, state: Any, module: str, suffix: str) -> None:
    """Check a ``BinaryTree{suffix}`` state tuple (see ``_binary_tree.pxi``)."""
    import importlib

    import numpy as np

    mod = importlib.import_module(module)
    name = type(tree).__name__
    if not isinstance(state, tuple) or len(state) != 13:
        raise refuse(f"{name} state is not the 13-tuple of a {name}")
    data_dtype = np.float64 if suffix == "64" else np.float32
    data = _array(state[0], f"{name} data", 2, data_dtype)
    n_samples, n_features = data.shape
    if n_samples < 1 or n_features < 1:
        raise refuse(f"{name} data has shape {data.shape}, expected at least one sample and one feature")
    idx = _array(state[1], f"{name} idx_array", 1, np.intp)
    if idx.shape[0] != n_samples:
        raise refuse(f"{name} idx_array has {idx.shape[0]} entries for {n_samples} samples")
    bad = (idx < 0) | (idx >= n_samples)
    if bad.any():
        i = _first_bad(bad)
        raise refuse(f"{name} idx_array[{i}] is {int(idx[i])}, outside the data rows 0..{n_samples - 1}")
    if (np.bincount(idx, minlength=n_samples) != 1).any():
        raise refuse(f"{name} idx_array is not a permutation of the data rows")
    node_data = _array(state[2], f"{name} node_data", 1)
    if node_data.dtype != mod.NodeData:
        raise refuse(f"{name} node_data has dtype {node_data.dtype}, expected {mod.NodeData}")
    leaf_size = _int(state[4], f"{name} leaf_size", 1)
    n_levels = _int(state[5], f"{name} n_levels", 1, 62)
    n_nodes = _int(state[6], f"{name} n_nodes", 1)
    del leaf_size
    for i, what in zip(range(7, 11), ("n_trims", "n_leaves", "n_splits", "n_calls"), strict=True):
        _int(state[i], f"{name} {what}", -(2**31), 2**31 - 1)
    if n_nodes != 2**n_levels - 1 or node_data.shape[0] != n_nodes:
        raise refuse(
            f"{name} has n_nodes {n_nodes}, n_levels {n_levels} and {node_data.shape[0]} node records "
            "(expected n_nodes = 2**n_levels - 1 records)"
        )
    bounds = _array(state[3], f"{name} node_bounds", 3, data_dtype)
    expected = (2 if module.endswith("_kd_tree") else 1, n_nodes, n_features)
    if bounds.shape != expected:
        raise refuse(f"{name} node_bounds has shape {bounds.shape}, expected {expected}")
    start, end, is_leaf = node_data["idx_start"], node_data["idx_end"], node_data["is_leaf"] != 0
    # Only nodes a query can reach matter (the builder leaves unreachable ones zeroed).
    reach = np.zeros(n_nodes, dtype=bool)
    frontier = np.zeros(1, dtype=np.intp)
    while frontier.size:
        reach[frontier] = True
        inner = frontier[~is_leaf[frontier]]
        if (2 * inner + 2 >= n_nodes).any():
            i = int(inner[2 * inner + 2 >= n_nodes][0])
            raise refuse(f"{name} node {i} is not a leaf but its children {2 * i + 1}, {2 * i + 2} are past {n_nodes}")
        frontier = np.concatenate([2 * inner + 1, 2 * inner + 2])
    bad = reach & ((start < 0) | (start > end) | (end > n_samples))
    if bad.any():
        i = _first_bad(bad)
        raise refuse(f"{name} node {i} covers idx_array[{int(start[i])}:{int(end[i])}], outside 0..{n_samples}")
    if int(start[0]) != 0 or int(end[0]) != n_samples:
        raise refuse(f"{name} root node covers {int(start[0])}..{int(end[0])}, not all {n_samples} samples")
    inner = np.flatnonzero(reach & ~is_leaf)
    c1, c2 = 2 * inner + 1, 2 * inner + 2
    split = (start[c1] != start[inner]) | (end[c1] != start[c2]) | (end[c2] != end[inner])
    if split.any():
        i = int(inner[_first_bad(split)])
        raise refuse(f"{name} node {i}: its children do not split its range {int(start[i])}..{int(end[i])}")
    metric = state[11]
    base = getattr(importlib.import_module("sklearn.metrics._dist_metrics"), f"DistanceMetric{suffix}")
    if not isinstance(metric, base):
        raise refuse(f"{name} dist_metric is {type(metric).__name__}, not a DistanceMetric{suffix}")
    valid = getattr(mod, f"VALID_METRICS{suffix}", None)
    if valid is not None and type(metric).__name__ not in valid:
        raise refuse(f"{name} cannot use the metric {type(metric).__name__}")
    check_distance_metric(metric, metric.__getstate__())
    try:
        metric._validate_data(data)
    except ValueError as exc:
        raise refuse(f"{name} dist_metric does not fit its {n_features}-feature data: {exc}") from None
    weight = state[12]
    if weight is not None:
        weight = _array(weight, f"{name} sample_weight", 1, data_dtype)
        if weight.shape[0] != n_samples:
            raise refuse(f"{name} sample_weight has {weight.shape[0]} entries for {n_samples} samples")


for _module in ("sklearn.neighbors._kd_tree", "sklearn.neighbors._ball_tree"):
    for _suffix in ("64", "32"):

        def _check(tree: Any, state: Any, module: str = _module, suffix: str = _suffix) -> None:
            _binary_tree(tree, state, module, suffix)

        _check.__doc__ = f"``{_module}.BinaryTree{_suffix}``: see :func:`_binary_tree`."
        register_build(_module, f"BinaryTree{_suffix}")(_check)


# ---------------------------------------------------------------------- DistanceMetric


@register_build("sklearn.metrics._dist_metrics", "DistanceMetric64")
@register_build("sklearn.metrics._dist_metrics", "DistanceMetric32")
def check_distance_metric(metric: Any, state: Any) -> None:
    """``(p, vec, mat[, func, kwargs])``: ``size = len(vec)``; SEuclidean reads ``vec[j]`` and
    Mahalanobis ``mat[i, j]`` (and writes ``vec[i]``) for ``i, j < size``; weighted Minkowski
    reads ``vec``. ``PyFuncDistance`` calls ``func``: refused unless the user trusts ``func``."""
    import math

    import numpy as np

    name = type(metric).__name__
    if not isinstance(state, tuple) or len(state) not in (3, 5):
        raise refuse(f"{name} state is not the (p, vec, mat) tuple of a distance metric")
    p = state[0]
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or math.isnan(p) or p < 1:
        raise refuse(f"{name} p is {p!r}, expected a number of at least 1")
    vec = _array(state[1], f"{name} vec", 1, np.float64)
    mat = _array(state[2], f"{name} mat", 2, np.float64)
    size = vec.shape[0]
    kind = name[:-2]
    if kind == "SEuclideanDistance" and size < 1:
        raise refuse(f"{name} has an empty variance vector")
    if kind == "MahalanobisDistance" and (mat.shape[0] < 1 or mat.shape[0] != mat.shape[1]):
        raise refuse(f"{name} mat has shape {mat.shape}, expected a square matrix")
    if kind == "MinkowskiDistance" and math.isinf(p):
        raise refuse(f"{name} p is infinite (use ChebyshevDistance)")
    if kind == "PyFuncDistance":
        if len(state) != 5:
            raise refuse(f"{name} state has no function")
        _check_pyfunc(name, state[3])
    elif len(state) != 3:
        raise refuse(f"{name} state has {len(state)} entries, expected 3")


def _check_pyfunc(name: str, func: Any) -> None:
    """A Python distance function is code that runs at every distance: only one the user trusts
    (admitted by the trust list or a verified signature, never by the built-in allow-list,
    whose functions may be *named* in a model but not used as code)."""
    from .allowlist import BUILTIN_ALLOWLIST

    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or ""
    if not callable(func) or (module, qualname) in BUILTIN_ALLOWLIST or module == "builtins":
        raise refuse(
            f"{name} would call {module}.{qualname} as a distance function; a built-in allow-listed "
            "name may be stored in a model but not called as one. Trust the function explicitly "
            "(trusted_types) if this model really uses it"
        )


# ----------------------------------------------- histogram gradient boosting predictors


@register_build("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor")
def check_tree_predictor(predictor: Any, state: Any) -> None:
    """Nodes exactly ``PREDICTOR_RECORD_DTYPE``; both bitset arrays ``(n, 8)`` uint32; split nodes
    on features at least 0, with ``left``/``right`` after the node and within the array, one
    parent each, and categorical splits on existing bitset rows (tree_links.check_predictor_links)."""
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    attrs = _merged(predictor, state)
    nodes = _array(attrs.get("nodes"), "TreePredictor nodes", 1)
    if nodes.dtype != PREDICTOR_RECORD_DTYPE:
        raise refuse(f"TreePredictor nodes have dtype {nodes.dtype}, expected {PREDICTOR_RECORD_DTYPE}")
    if nodes.shape[0] < 1:
        raise refuse("TreePredictor has no nodes")
    rows = []
    for key in ("binned_left_cat_bitsets", "raw_left_cat_bitsets"):
        bits = _array(attrs.get(key), f"TreePredictor {key}", 2, np.uint32)
        if bits.shape[1] != 8:
            raise refuse(f"TreePredictor {key} has shape {bits.shape}, expected (n, 8)")
        rows.append(bits.shape[0])
    check_predictor_links(nodes, min(rows))


@register_build("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "BaseHistGradientBoosting")
def check_hist_gradient_boosting(est: Any, state: Any) -> None:
    """Predictors read ``X[:, feature_idx]`` of input checked against ``n_features_in_``, and
    look categorical splits up in bitsets built from ``_bin_mapper.is_categorical_``."""
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    check_estimator(est, state)
    attrs = _merged(est, state)
    predictors = attrs.get("_predictors")
    if not predictors:
        return
    name = type(est).__name__
    n = _n_features_in(attrs, name)
    mapper = attrs.get("_bin_mapper")
    categorical = getattr(mapper, "is_categorical_", None)
    mask = np.zeros(0, dtype=bool)  # without is_categorical_ no split may be categorical
    if categorical is not None:
        categorical = np.asarray(categorical)
        if categorical.shape != (n,) or categorical.dtype.kind not in "biu":
            raise refuse(
                f"{name} _bin_mapper.is_categorical_ is {categorical.dtype} {categorical.shape}, expected ({n},) flags"
            )
        mask = categorical != 0
    for i, stage in enumerate(predictors):
        for k, predictor in enumerate(stage):
            nodes = getattr(predictor, "nodes", None)
            if nodes is None:
                raise refuse(f"{name} predictor {i},{k} has no nodes")
            if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1:
                raise refuse(f"{name} predictor {i},{k} nodes are not a 1-d {PREDICTOR_RECORD_DTYPE} array")
            check_predictor_features(nodes, n, mask, what=f"{name} predictor {i},{k}")


@register_build("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper")
def check_bin_mapper(mapper: Any, state: Any) -> None:
    """``_map_to_bins`` indexes ``is_categorical_`` per feature of ``bin_thresholds_``."""
    attrs = _merged(mapper, state)
    if "bin_thresholds_" not in attrs:
        return
    thresholds = attrs["bin_thresholds_"]
    sizes = {
        "bin_thresholds_": len(thresholds) if isinstance(thresholds, (list, tuple)) else -1,
        "is_categorical_": len(attrs.get("is_categorical_", ())),
        "n_bins_non_missing_": len(attrs.get("n_bins_non_missing_", ())),
    }
    if len(set(sizes.values())) != 1:
        raise refuse(f"_BinMapper per-feature arrays disagree on the number of features: {sizes}")


# -------------------------------------------------------------------------- libsvm models


@register_build("sklearn.svm._base", "BaseLibSVM")
def check_libsvm(est: Any, state: Any) -> None:
    """libsvm's ``set_model`` copies ``nr_class = len(_n_support)`` counts, ``nr_class - 1`` rows
    of ``len(support_)`` dual coefficients, ``nr_class*(nr_class-1)/2`` intercepts (and
    probability pairs), and reads support rows and, for kernels on indices, ``support_``."""
    import numpy as np
    from sklearn.svm._base import LIBSVM_IMPL

    check_estimator(est, state)
    attrs = _merged(est, state)
    if "support_vectors_" not in attrs:
        return
    name = type(est).__name__
    impl = attrs.get("_impl", getattr(type(est), "_impl", None))
    if impl not in LIBSVM_IMPL:
        raise refuse(f"{name} _impl is {impl!r}, not one of {LIBSVM_IMPL}")
    support = _array(attrs.get("support_"), f"{name} support_", 1, np.int32)
    n_sv = _array(attrs.get("_n_support"), f"{name} _n_support", 1, np.int32)
    nr_class = n_sv.shape[0]
    if nr_class < 2:
        raise refuse(f"{name} _n_support has {nr_class} entries, expected at least 2")
    length = support.shape[0]
    vectors = attrs["support_vectors_"]
    rows = vectors.shape[0] if hasattr(vectors, "shape") and len(vectors.shape) == 2 else -1
    if rows != length:
        shape = getattr(vectors, "shape", None)
        raise refuse(f"{name} has {length} support indices but support_vectors_ of shape {shape}")
    if impl in ("c_svc", "nu_svc") and ((n_sv < 0).any() or int(n_sv.sum()) != length):
        raise refuse(f"{name} _n_support {n_sv.tolist()} does not add up to its {length} support vectors")
    coef = attrs.get("_dual_coef_")
    if attrs.get("_sparse"):
        # libsvm_sparse copies (nr_class - 1) * l doubles out of the csr data
        data = getattr(coef, "data", None)
        size = data.shape[0] if isinstance(data, np.ndarray) and data.ndim == 1 else -1
        if getattr(coef, "shape", None) != (nr_class - 1, length) or size != (nr_class - 1) * length:
            raise refuse(f"{name} sparse _dual_coef_ does not hold {nr_class - 1} x {length} coefficients")
    else:
        coef = _array(coef, f"{name} _dual_coef_", 2, np.float64)
        if coef.shape != (nr_class - 1, length):
            raise refuse(f"{name} _dual_coef_ has shape {coef.shape}, expected {(nr_class - 1, length)}")
    pairs = nr_class * (nr_class - 1) // 2
    intercept = _array(attrs.get("_intercept_"), f"{name} _intercept_", 1, np.float64)
    if intercept.shape[0] < pairs:
        raise refuse(f"{name} _intercept_ has {intercept.shape[0]} entries, expected {pairs}")
    for key in ("_probA", "_probB"):
        prob = _array(attrs.get(key), f"{name} {key}", 1, np.float64)
        if prob.shape[0] and prob.shape[0] < pairs:
            raise refuse(f"{name} {key} has {prob.shape[0]} entries, expected {pairs}")
    probability = attrs.get("_effective_probability") or attrs.get("probability") is True
    if probability and min(attrs["_probA"].shape[0], attrs["_probB"].shape[0]) < pairs:
        raise refuse(f"{name} predicts probabilities but has no {pairs} probability pairs")
    shape_fit = attrs.get("shape_fit_")
    if not isinstance(shape_fit, tuple) or not shape_fit:
        raise refuse(f"{name} shape_fit_ is {shape_fit!r}, not the training shape")
    n_train = _int(shape_fit[0], f"{name} shape_fit_[0]", 0)
    bad = (support < 0) | (support >= n_train)
    if bad.any():
        i = _first_bad(bad)
        raise refuse(f"{name} support_[{i}] is {int(support[i])}, outside the {n_train} training samples")
    if callable(attrs.get("kernel")):
        fit = attrs.get("_BaseLibSVM__Xfit")
        if getattr(fit, "shape", (None,))[0] != n_train:
            raise refuse(f"{name} has a kernel function but its training data is not {n_train} rows")


# ------------------------------------------------------------------------------- k-means


@register_build("sklearn.cluster._kmeans", "_BaseKMeans")
def check_kmeans(est: Any, state: Any) -> None:
    """``predict``/``score`` hand ``cluster_centers_`` (and a bisecting tree's node centers) to
    the Lloyd kernel, which reads ``n_features`` entries per center, where ``n_features`` comes
    from the input (checked against ``n_features_in_``), not from the centers."""
    import numpy as np

    check_estimator(est, state)
    attrs = _merged(est, state)
    centers = attrs.get("cluster_centers_")
    if centers is None:
        return
    name = type(est).__name__
    n = _n_features_in(attrs, name)
    centers = _array(centers, f"{name} cluster_centers_", 2, kind="f")
    if centers.shape[0] < 1 or centers.shape[1] != n:
        raise refuse(f"{name} cluster_centers_ has shape {centers.shape}, expected (n_clusters, {n})")
    seen: set[int] = set()
    stack = [attrs.get("_bisecting_tree")]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        center = getattr(node, "center", None)
        if center is not None and np.shape(center) != (n,):
            raise refuse(f"{name} bisecting tree node center has shape {np.shape(center)}, expected ({n},)")
        stack += [getattr(node, "left", None), getattr(node, "right", None)]
