"""Structural checks of framework model files, before a native parser sees their bytes.

LightGBM's and xgboost's C++ parsers trust the sizes and indices a model file declares.
A LightGBM model string whose ``tree_sizes`` point past the text reads out of bounds
(SIGSEGV); a tree block whose arrays disagree with ``num_leaves`` raises a C++ exception
inside an OpenMP loop, which aborts the process (SIGABRT); a child index outside the
tree makes ``predict`` loop forever or read out of bounds. One changed count byte in an
xgboost UBJSON typed array makes ``XGBoosterLoadModelFromBuffer`` read past its buffer.
None of these can be caught as a Python exception.

This module re-checks, in Python and in time linear in the file, what those parsers
would otherwise trust:

- :func:`check_lightgbm_model`: the header (``num_class``, ``max_feature_idx``,
  ``num_tree_per_iteration``, the objective's ``num_class``), ``tree_sizes`` against
  where each ``Tree=`` block really starts, and every tree's declared counts against
  its arrays (``num_leaves``, ``num_cat``, ``cat_boundaries``/``cat_threshold``,
  linear leaves), child indices (in range, one parent each), ``split_feature`` below
  the number of features, categorical thresholds below ``num_cat``.
- :func:`check_xgboost_model`: UBJSON parsed with every count and length checked
  against the bytes remaining and nesting bounded (JSON models too), then each tree's
  arrays against ``num_nodes``, children (in range, one parent each), ``split_indices``
  against ``num_feature``, categorical segments, ``tree_info`` against the number of
  outputs. Works on ``save_model`` files and on the buffer a pickled ``Booster`` holds
  (``{"Config": ..., "Model": ...}``).
- :func:`check_catboost_model`, :func:`check_safetensors`, :func:`check_keras_archive`:
  header checks (magic, declared sizes and offsets within the file).

Each raises :class:`~modelkeep.errors.UnsafeModelError` naming what was wrong. The
checks are a first line; content nobody trusted is also loaded in a quarantined child
process first (:mod:`modelkeep.quarantine`).

Pickled ``lightgbm.basic.Booster``, ``xgboost.core.Booster`` and CatBoost models are
checked the same way, through :mod:`modelkeep.formats.state_checks`, before their
``__setstate__`` hands the model to native code.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import UnsafeModelError
from .state_checks import register_build

# -- LightGBM ------------------------------------------------------------------------

#: ``Tree(const char*)`` reads at most this many ``key=value`` lines per tree block.
_LGB_TREE_MAX_LINES = 22
_INT = re.compile(r"[+-]?\d+\Z")


def _lgb_refuse(what: str) -> UnsafeModelError:
    return UnsafeModelError(f"refused to load: the LightGBM model string {what} (crafted or corrupt model)")


def _lgb_int(value: str | None, what: str, *, low: int | None = None) -> int:
    if value is None or not _INT.match(value.strip()):
        raise _lgb_refuse(f"has {what}={value!r}, not an integer")
    number = int(value)
    if low is not None and number < low:
        raise _lgb_refuse(f"has {what}={number}, below {low}")
    return number


def _tokens(value: str) -> list[str]:
    """``value`` split as LightGBM splits it: on single spaces, empty tokens dropped."""
    return [t for t in value.split(" ") if t]


def _lgb_array(fields: dict[str, str], key: str, count: int, where: str, *, required: bool) -> list[str] | None:
    """The ``count`` space-separated items of ``key`` (``None`` when absent and optional)."""
    if key not in fields:
        if required and count > 0:
            raise _lgb_refuse(f"{where} has no {key}")
        return None
    items = _tokens(fields[key])
    if count > 0 and len(items) != count:
        raise _lgb_refuse(f"{where} declares {count} entries for {key} but has {len(items)}")
    return items


def _ints(items: Sequence[str], what: str) -> np.ndarray:
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise _lgb_refuse(f"{what} holds a value that is not an integer") from None
    if any(v < -(2**31) or v >= 2**31 for v in values):
        raise _lgb_refuse(f"{what} holds a value outside the 32-bit range")
    return np.asarray(values, dtype=np.int64)


def _check_children(left: np.ndarray, right: np.ndarray, n_internal: int, n_leaves: int, where: str) -> None:
    """Children of a LightGBM tree: internal nodes ``0..n_internal-1``, leaves ``~0..~(n_leaves-1)``;
    each node has one parent at most and the root none, so ``predict`` ends at a leaf."""
    children = np.concatenate([left, right])
    if ((children >= n_internal) | (children < -n_leaves)).any():
        bad = int(children[(children >= n_internal) | (children < -n_leaves)][0])
        raise _lgb_refuse(f"{where} has a child index {bad} outside its {n_internal} nodes and {n_leaves} leaves")
    internal = children[children >= 0]
    counts = np.bincount(internal, minlength=max(n_internal, 1))
    leaves = np.bincount(~children[children < 0], minlength=max(n_leaves, 1))
    if counts[0] > 0 or (counts > 1).any() or (leaves > 1).any():
        raise _lgb_refuse(f"{where} has a node reached from two parents or a loop back to its root")


def _lgb_tree(fields: dict[str, str], where: str, n_features: int) -> None:
    n_leaves = _lgb_int(fields.get("num_leaves"), f"{where} num_leaves", low=1)
    n_cat = _lgb_int(fields.get("num_cat"), f"{where} num_cat", low=0)
    _lgb_array(fields, "leaf_value", n_leaves, where, required=True)
    for key in ("leaf_weight", "leaf_count"):
        _lgb_array(fields, key, n_leaves, where, required=False)
    if _lgb_int(fields.get("is_linear", "0"), f"{where} is_linear"):
        _lgb_linear(fields, where, n_leaves, n_features)
    if n_leaves <= 1:
        return
    n_internal = n_leaves - 1
    arrays = {}
    for key in ("left_child", "right_child", "split_feature", "threshold"):
        arrays[key] = _lgb_array(fields, key, n_internal, where, required=True)
    for key in ("split_gain", "internal_value", "internal_weight", "internal_count", "decision_type"):
        arrays[key] = _lgb_array(fields, key, n_internal, where, required=False)
    left = _ints(arrays["left_child"] or [], f"{where} left_child")
    right = _ints(arrays["right_child"] or [], f"{where} right_child")
    _check_children(left, right, n_internal, n_leaves, where)
    features = _ints(arrays["split_feature"] or [], f"{where} split_feature")
    if ((features < 0) | (features >= n_features)).any():
        raise _lgb_refuse(f"{where} splits on a feature outside 0..{n_features - 1} (max_feature_idx)")
    decision = _ints(arrays["decision_type"] or ["0"] * n_internal, f"{where} decision_type")
    categorical = (decision & 1).astype(bool)
    if n_cat > 0:
        bounds = _ints(_lgb_array(fields, "cat_boundaries", n_cat + 1, where, required=True) or [], where)
        n_threshold = int(bounds[-1])
        if bounds[0] != 0 or (np.diff(bounds) < 0).any():
            raise _lgb_refuse(f"{where} has cat_boundaries that do not rise from 0")
        if n_threshold > len(_tokens(fields.get("cat_threshold", ""))):
            raise _lgb_refuse(f"{where} declares {n_threshold} cat_threshold entries but has fewer")
        _lgb_array(fields, "cat_threshold", n_threshold, where, required=True)
    if categorical.any():
        try:
            cats = np.asarray([float(x) for x in arrays["threshold"] or []])[categorical]
        except ValueError:
            raise _lgb_refuse(f"{where} has a threshold that is not a number") from None
        if not np.isfinite(cats).all() or ((cats < 0) | (cats >= n_cat)).any():
            raise _lgb_refuse(f"{where} has a categorical split outside its {n_cat} category sets (num_cat)")


def _lgb_linear(fields: dict[str, str], where: str, n_leaves: int, n_features: int) -> None:
    _lgb_array(fields, "leaf_const", n_leaves, where, required=True)
    per_leaf = _ints(_lgb_array(fields, "num_features", n_leaves, where, required=True) or [], where)
    if (per_leaf < 0).any():
        raise _lgb_refuse(f"{where} declares a negative num_features")
    total = int(per_leaf.sum())
    features = _ints(_tokens(fields.get("leaf_features", "")), f"{where} leaf_features")
    if len(features) != total or len(_tokens(fields.get("leaf_coeff", ""))) != total:
        raise _lgb_refuse(f"{where} declares {total} linear features but lists another number")
    if ((features < 0) | (features >= n_features)).any():
        raise _lgb_refuse(f"{where} has a linear leaf feature outside 0..{n_features - 1}")


def _lgb_tree_block(text: str, start: int, end: int, where: str) -> dict[str, str]:
    """The ``key=value`` lines of the tree block at ``start`` (after its ``Tree=`` line), read
    the way LightGBM reads them, but never past ``end``."""
    fields: dict[str, str] = {}
    pos = start
    for _ in range(_LGB_TREE_MAX_LINES):
        if pos >= end:
            raise _lgb_refuse(f"{where} runs past its declared size")
        if text[pos] in "\r\n":
            break
        newline = text.find("\n", pos, end)
        if newline < 0:
            raise _lgb_refuse(f"{where} runs past its declared size")
        line = text[pos:newline].rstrip("\r")
        if "=" not in line:
            raise _lgb_refuse(f"{where} has a line without '=': {line[:40]!r}")
        key, _, value = line.partition("=")
        fields[key] = value
        pos = newline + 1
    return fields


def check_lightgbm_model(text: str) -> None:
    """Refuse a LightGBM model string whose declared sizes or indices do not fit its content."""
    if not isinstance(text, str):
        raise UnsafeModelError(f"refused to load: a LightGBM model string must be text, not {type(text).__name__}")
    if "\x00" in text:
        raise _lgb_refuse("holds a NUL character")
    if "\r" in text:  # LightGBM ends lines at a lone CR too; model_to_string never writes one
        raise _lgb_refuse("holds a carriage return")
    first = re.search(r"^Tree=", text, re.MULTILINE)
    head_end = first.start() if first else len(text)
    header: dict[str, str] = {}
    for line in text[:head_end].splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            header[key] = value
    n_class = _lgb_int(header.get("num_class"), "num_class", low=1)
    per_iteration = _lgb_int(header.get("num_tree_per_iteration", "1"), "num_tree_per_iteration", low=1)
    if per_iteration > n_class:
        raise _lgb_refuse(f"has {per_iteration} trees per iteration for {n_class} classes")
    n_features = _lgb_int(header.get("max_feature_idx"), "max_feature_idx", low=0) + 1
    objective_classes = re.search(r"\bnum_class:(\S+)", header.get("objective", ""))
    if objective_classes and _lgb_int(objective_classes.group(1), "objective num_class", low=1) != n_class:
        raise _lgb_refuse(f"has an objective for {objective_classes.group(1)} classes but num_class={n_class}")
    starts = [m.start() for m in re.finditer(r"^Tree=", text, re.MULTILINE)]
    trees_end = text.find("end of trees", head_end)
    if trees_end >= 0:
        starts = [s for s in starts if s < trees_end]
    if "tree_sizes" in header:
        sizes = _ints(_tokens(header["tree_sizes"]), "tree_sizes")
        if (sizes <= 0).any():
            raise _lgb_refuse("declares a tree size of 0 or less in tree_sizes")
        bounds = head_end + np.concatenate([[0], np.cumsum(sizes)])
        if len(sizes) != len(starts) or list(bounds[:-1]) != starts or bounds[-1] > len(text):
            raise _lgb_refuse(
                f"declares tree_sizes that do not match its {len(starts)} trees in {len(text) - head_end} characters"
            )
        ends = [int(b) for b in bounds[1:]]
    else:
        ends = [*starts[1:], trees_end if trees_end >= 0 else len(text)]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        newline = text.find("\n", start, end)
        if newline < 0:
            raise _lgb_refuse(f"has a truncated tree {i}")
        where = f"tree {i}"
        _lgb_tree(_lgb_tree_block(text, newline + 1, end, where), where, n_features)


# -- UBJSON / xgboost ----------------------------------------------------------------

#: UBJSON nesting deeper than this is refused (xgboost's own models nest about 8 deep).
MAX_DEPTH = 64
_UBJ_SCALARS: dict[int, tuple[str, int]] = {
    ord("i"): (">i1", 1),
    ord("U"): (">u1", 1),
    ord("I"): (">i2", 2),
    ord("l"): (">i4", 4),
    ord("L"): (">i8", 8),
    ord("d"): (">f4", 4),
    ord("D"): (">f8", 8),
}

#: The same scalars as :mod:`struct` formats, for reading one value.
_UBJ_STRUCTS = {
    marker: struct.Struct(">" + code)
    for marker, code in zip(b"iUIlLdD", ("b", "B", "h", "i", "q", "f", "d"), strict=True)
}


def _ubj_refuse(what: str, pos: int) -> UnsafeModelError:
    return UnsafeModelError(
        f"refused to load: the xgboost UBJSON model {what} at byte {pos} (crafted or corrupt model)"
    )


class _UBJReader:
    """A UBJSON reader that checks every declared count and length against the bytes left.

    Typed arrays become numpy views of the buffer (no copy), so checking a large
    model costs about as much as one pass over its object keys."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.end = len(self.data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or n > self.end - self.pos:
            raise _ubj_refuse(f"declares {n} bytes where {self.end - self.pos} remain", self.pos)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _marker(self) -> int:
        if self.pos >= self.end:
            raise _ubj_refuse("ends where a value should follow", self.pos)
        marker = self.data[self.pos]
        self.pos += 1
        return int(marker)

    def _scalar(self, marker: int) -> Any:
        unpack = _UBJ_STRUCTS.get(marker)
        if unpack is None:
            raise _ubj_refuse(f"has an unknown type marker {chr(marker)!r}", self.pos - 1)
        if unpack.size > self.end - self.pos:
            raise _ubj_refuse(f"declares {unpack.size} bytes where {self.end - self.pos} remain", self.pos)
        (value,) = unpack.unpack_from(self.data, self.pos)
        self.pos += unpack.size
        return value

    def _count(self) -> int:
        at = self.pos
        marker = self._marker()
        if marker in (ord("d"), ord("D")):
            raise _ubj_refuse("gives a count that is not an integer", at)
        count = self._scalar(marker)
        if count < 0:
            raise _ubj_refuse(f"declares a negative count {count}", at)
        return int(count)

    def _string(self) -> str:
        raw = self._take(self._count())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise _ubj_refuse("has a string that is not UTF-8", self.pos) from None

    def value(self, depth: int = 0) -> Any:
        return self._value(self._marker(), depth)

    def _value(self, marker: int, depth: int) -> Any:
        if marker == ord("{"):
            return self._object(depth + 1)
        if marker == ord("["):
            return self._array(depth + 1)
        if marker == ord("S") or marker == ord("H"):
            return self._string()
        if marker == ord("C"):
            return chr(self._take(1)[0])
        if marker == ord("T"):
            return True
        if marker == ord("F"):
            return False
        if marker == ord("Z"):
            return None
        return self._scalar(marker)

    def _nest(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _ubj_refuse(f"nests containers more than {MAX_DEPTH} deep", self.pos)

    def _object(self, depth: int) -> dict[str, Any]:
        self._nest(depth)
        out: dict[str, Any] = {}
        count = None
        if self.pos < len(self.data) and self.data[self.pos] == ord("#"):
            self.pos += 1
            count = self._count()
        while True:
            if count is not None and len(out) == count:
                return out
            if count is None and self.pos < len(self.data) and self.data[self.pos] == ord("}"):
                self.pos += 1
                return out
            at = self.pos
            key = self._string()
            if key in out:
                raise _ubj_refuse(f"repeats the key {key[:40]!r}", at)
            out[key] = self.value(depth)

    def _array(self, depth: int) -> Any:
        self._nest(depth)
        typed = None
        if self.pos < len(self.data) and self.data[self.pos] == ord("$"):
            self.pos += 1
            typed = self._marker()
            if self.pos >= len(self.data) or self.data[self.pos] != ord("#"):
                raise _ubj_refuse("has a typed array without a count", self.pos)
        if self.pos < len(self.data) and self.data[self.pos] == ord("#"):
            self.pos += 1
            count = self._count()
            if typed is not None and typed in _UBJ_SCALARS:
                dtype, size = _UBJ_SCALARS[typed]
                if count > (len(self.data) - self.pos) // size:
                    raise _ubj_refuse(
                        f"declares a typed array of {count} items of {size} bytes where "
                        f"{len(self.data) - self.pos} bytes remain",
                        self.pos,
                    )
                return np.frombuffer(self._take(count * size), dtype=dtype)
            if count > len(self.data) - self.pos:  # every untyped item takes a byte at least
                raise _ubj_refuse(f"declares {count} items where {len(self.data) - self.pos} bytes remain", self.pos)
            if typed is not None:
                return [self._value(typed, depth) for _ in range(count)]
            return [self.value(depth) for _ in range(count)]
        items: list[Any] = []
        while True:
            if self.pos >= len(self.data):
                raise _ubj_refuse("ends inside an array", self.pos)
            if self.data[self.pos] == ord("]"):
                self.pos += 1
                return items
            items.append(self.value(depth))


def parse_ubjson(data: bytes | bytearray | memoryview) -> Any:
    """Parse UBJSON, refusing any count, length or nesting the bytes cannot back."""
    reader = _UBJReader(data)
    return reader.value()


def _xgb_refuse(what: str) -> UnsafeModelError:
    return UnsafeModelError(f"refused to load: the xgboost model {what} (crafted or corrupt model)")


def _xgb_int(value: Any, what: str, *, low: int = 0) -> int:
    try:
        number = int(value)  # xgboost writes its parameters as strings
    except (TypeError, ValueError):
        raise _xgb_refuse(f"has {what}={value!r}, not an integer") from None
    if number < low:
        raise _xgb_refuse(f"has {what}={number}, below {low}")
    return number


def _xgb_array(tree: dict[str, Any], key: str, where: str) -> np.ndarray | None:
    value = tree.get(key)
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=np.float64 if key in _XGB_FLOAT_ARRAYS else np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _xgb_refuse(f"{where} has a {key} that is not a flat array of numbers") from None


_XGB_FLOAT_ARRAYS = {"split_conditions", "base_weights", "loss_changes", "sum_hessian"}
_XGB_PER_NODE = ("left_children", "right_children", "parents", "split_indices", "split_conditions")
_XGB_PER_NODE_OPTIONAL = ("default_left", "split_type", "loss_changes", "sum_hessian")


def _xgb_tree(tree: Any, where: str, n_features: int) -> None:
    if not isinstance(tree, dict):
        raise _xgb_refuse(f"{where} is not an object")
    param = tree.get("tree_param")
    if not isinstance(param, dict):
        raise _xgb_refuse(f"{where} has no tree_param")
    n_nodes = _xgb_int(param.get("num_nodes"), f"{where} num_nodes", low=1)
    leaf_size = _xgb_int(param.get("size_leaf_vector", 1), f"{where} size_leaf_vector")
    arrays = {}
    for key in (*_XGB_PER_NODE, *_XGB_PER_NODE_OPTIONAL):
        arr = _xgb_array(tree, key, where)
        if arr is None:
            if key in _XGB_PER_NODE:
                raise _xgb_refuse(f"{where} has no {key}")
            continue
        if arr.ndim != 1 or len(arr) != n_nodes:
            raise _xgb_refuse(f"{where} declares {n_nodes} nodes but its {key} has {arr.size} entries")
        arrays[key] = arr
    weights = _xgb_array(tree, "base_weights", where)
    if weights is not None and weights.size not in (n_nodes, n_nodes * max(leaf_size, 1)):
        raise _xgb_refuse(f"{where} declares {n_nodes} nodes but its base_weights has {weights.size} entries")
    left, right = arrays["left_children"], arrays["right_children"]
    internal = left != -1  # xgboost's IsLeaf: no left child
    children = np.concatenate([left[internal], right[internal]])
    if ((children < 0) | (children >= n_nodes)).any():
        raise _xgb_refuse(f"{where} has a child index outside its {n_nodes} nodes")
    counts = np.bincount(children, minlength=n_nodes)
    if counts[0] > 0 or (counts > 1).any():
        raise _xgb_refuse(f"{where} has a node reached from two parents or a loop back to its root")
    split = arrays["split_indices"][internal]
    if ((split < 0) | (split >= max(n_features, 1))).any():
        raise _xgb_refuse(f"{where} splits on a feature outside 0..{n_features - 1} (num_feature)")
    _xgb_categories(tree, where, n_nodes)


def _xgb_categories(tree: dict[str, Any], where: str, n_nodes: int) -> None:
    keys = ("categories_nodes", "categories_segments", "categories_sizes")
    found = [_xgb_array(tree, k, where) for k in keys]
    nodes, segments, sizes = (np.zeros(0, np.int64) if a is None else a.ravel() for a in found)
    if not (len(nodes) == len(segments) == len(sizes)):
        raise _xgb_refuse(f"{where} has categories_nodes, _segments and _sizes of different lengths")
    categories = _xgb_array(tree, "categories", where)
    n_categories = 0 if categories is None else categories.size
    if ((nodes < 0) | (nodes >= n_nodes)).any() or (segments < 0).any() or (sizes < 0).any():
        raise _xgb_refuse(f"{where} has a categorical split outside its nodes")
    if ((segments + sizes) > n_categories).any():
        raise _xgb_refuse(f"{where} has a categorical split past its {n_categories} categories")


def _xgb_learner(model: Any) -> None:
    if not isinstance(model, dict) or not isinstance(model.get("learner"), dict):
        raise _xgb_refuse("has no learner")
    learner = model["learner"]
    param = learner.get("learner_model_param")
    if not isinstance(param, dict):
        raise _xgb_refuse("has no learner_model_param")
    n_features = _xgb_int(param.get("num_feature"), "num_feature")
    n_outputs = max(
        _xgb_int(param.get("num_class", 0), "num_class"), _xgb_int(param.get("num_target", 1), "num_target"), 1
    )
    booster = learner.get("gradient_booster")
    if not isinstance(booster, dict):
        raise _xgb_refuse("has no gradient_booster")
    name = booster.get("name")
    if name == "gblinear":
        weights = (booster.get("model") or {}).get("weights")
        size = np.asarray(weights if weights is not None else []).size
        if size != (n_features + 1) * n_outputs:
            raise _xgb_refuse(f"has {size} linear weights for {n_features} features and {n_outputs} outputs")
        return
    tree_model = booster.get("model") if name == "gbtree" else (booster.get("gbtree") or {}).get("model")
    if name not in ("gbtree", "dart") or not isinstance(tree_model, dict):
        raise _xgb_refuse(f"has an unknown gradient_booster {name!r}")
    trees = tree_model.get("trees")
    if not isinstance(trees, list):
        raise _xgb_refuse("has no list of trees")
    declared = _xgb_int((tree_model.get("gbtree_model_param") or {}).get("num_trees"), "num_trees")
    if declared != len(trees):
        raise _xgb_refuse(f"declares {declared} trees but holds {len(trees)}")
    info = np.asarray(tree_model.get("tree_info", []), dtype=np.int64).ravel()
    if len(info) != len(trees) or ((info < 0) | (info >= n_outputs)).any():
        raise _xgb_refuse(f"has a tree_info that does not map its {len(trees)} trees to its {n_outputs} outputs")
    indptr = tree_model.get("iteration_indptr")
    if indptr is not None:
        ptr = np.asarray(indptr, dtype=np.int64).ravel()
        if len(ptr) == 0 or ptr[0] != 0 or ptr[-1] != len(trees) or (np.diff(ptr) < 0).any():
            raise _xgb_refuse("has an iteration_indptr that does not cover its trees in order")
    for i, tree in enumerate(trees):
        _xgb_tree(tree, f"tree {i}", n_features)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("an object repeats a key")
    return out


def _xgb_parse(data: bytes | bytearray | memoryview) -> Any:
    view = memoryview(data).cast("B")
    head = bytes(view[:2])
    if head[:1] == b"{" and head[1:2] in (b'"', b" ", b"\n", b"\r", b"\t", b"}"):
        try:
            return json.loads(bytes(view), object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            raise _xgb_refuse(f"is not valid JSON: {str(exc)[:80]}") from None
    if head[:1] != b"{":
        raise _xgb_refuse("is neither JSON nor UBJSON")
    reader = _UBJReader(view)
    value = reader.value()
    if reader.pos != len(view):
        raise _xgb_refuse(f"has {len(view) - reader.pos} bytes after its end")
    return value


def check_xgboost_model(data: bytes | bytearray | memoryview) -> None:
    """Refuse an xgboost model file (UBJSON or JSON, as ``save_model`` writes) whose declared
    counts, lengths or indices do not fit its content."""
    _xgb_learner(_xgb_parse(data))


def check_xgboost_serialized(data: bytes | bytearray | memoryview) -> None:
    """The same for the buffer of a pickled ``Booster`` (``{"Config": ..., "Model": ...}``)."""
    value = _xgb_parse(data)
    if not isinstance(value, dict) or "Model" not in value:
        raise _xgb_refuse("buffer of a pickled Booster has no Model")
    _xgb_learner(value["Model"])


# -- headers of the other frameworks -------------------------------------------------------


def check_catboost_model(data: bytes | bytearray | memoryview) -> None:
    """A CatBoost ``.cbm``: the ``CBM1`` magic and a core size within the file."""
    view = memoryview(data).cast("B")
    if bytes(view[:4]) != b"CBM1" or len(view) < 8:
        raise UnsafeModelError("refused to load: the CatBoost model does not start with the CBM1 header")
    (core,) = struct.unpack("<I", view[4:8])
    if core == 0 or core > len(view) - 8:
        raise UnsafeModelError(
            f"refused to load: the CatBoost model declares a {core}-byte core in {len(view) - 8} bytes"
        )


_SAFETENSORS_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def check_safetensors(data: bytes | bytearray | memoryview) -> None:
    """A safetensors file: its header size, dtypes, shapes and offsets within the file."""
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise UnsafeModelError("refused to load: the safetensors file is shorter than its header size")
    (size,) = struct.unpack("<Q", view[:8])
    if size > len(view) - 8:
        raise UnsafeModelError(f"refused to load: the safetensors header claims {size} bytes of {len(view) - 8}")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except (ValueError, RecursionError):
        raise UnsafeModelError("refused to load: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise UnsafeModelError("refused to load: the safetensors header is not a JSON object")
    room = len(view) - 8 - size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            count = int(np.prod([int(d) for d in info["shape"]], dtype=object))
            item = _SAFETENSORS_SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise UnsafeModelError(f"refused to load: the safetensors entry {name!r} is malformed") from None
        if not 0 <= begin <= end <= room or end - begin != count * item:
            raise UnsafeModelError(f"refused to load: the safetensors tensor {name!r} lies outside its data")


#: A ``.keras`` archive may hold this many times its own size, uncompressed.
KERAS_MAX_RATIO = 200


def check_keras_archive(data: bytes | bytearray | memoryview) -> None:
    """A ``.keras`` zip: readable, holding ``config.json``, and not expanding past a bound."""
    import io
    import zipfile

    raw = bytes(data)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UnsafeModelError(f"refused to load: the Keras archive is not a readable zip: {exc}") from None
    names = {i.filename for i in infos}
    if "config.json" not in names:
        raise UnsafeModelError("refused to load: the Keras archive has no config.json")
    total = sum(i.file_size for i in infos)
    if total > max(len(raw) * KERAS_MAX_RATIO, 1 << 26):
        raise UnsafeModelError(
            f"refused to load: the Keras archive of {len(raw)} bytes expands to {total} bytes (a zip bomb?)"
        )


# -- pickled Boosters (BUILD checks) --------------------------------------------------------


def _state_dict(state: Any, what: str) -> dict[str, Any]:
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
        state = state[0]
    if not isinstance(state, dict):
        raise UnsafeModelError(f"refused to load: the state of a pickled {what} is not a dict")
    return state


@register_build("lightgbm.basic", "Booster", copies=True)
def _lightgbm_booster(_target: Any, state: Any) -> None:
    fields = _state_dict(state, "lightgbm Booster")
    for key in ("_handle", "handle"):
        model = fields.get(key)
        if model is not None:
            check_lightgbm_model(model)


@register_build("xgboost.core", "Booster", copies=True)
def _xgboost_booster(_target: Any, state: Any) -> None:
    fields = _state_dict(state, "xgboost Booster")
    raw = fields.get("handle")
    if raw is None:
        return
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafeModelError(
            f"refused to load: a pickled xgboost Booster holds a {type(raw).__name__} where its model bytes go"
        )
    check_xgboost_serialized(raw)


@register_build("catboost.core", "_CatBoostBase", copies=True)
def _catboost_model(_target: Any, state: Any) -> None:
    fields = _state_dict(state, "CatBoost model")
    raw = fields.get("__model")
    if raw is not None:
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafeModelError("refused to load: a pickled CatBoost model holds no model bytes")
        check_catboost_model(raw)


def checked_names() -> Iterable[str]:
    """The pickled classes whose state this module checks (for the allow-list review)."""
    return ("lightgbm.basic.Booster", "xgboost.core.Booster", "catboost.core._CatBoostBase")
