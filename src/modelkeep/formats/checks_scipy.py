"""State checks for ``scipy.sparse`` matrices and arrays (reviewed in docs/native-state-review.md).

A sparse matrix is pickled as its ``__dict__`` and rebuilt without any validation; its
arrays then go straight to ``sparsetools`` (C++), which trusts them: a CSR ``indices`` entry
past the column count makes ``X @ w`` read and write outside its buffers. These checks are
``check_format(full_check=True)``'s, done here on the state (not trusting a half-built
object) with messages that say which entry is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .state_checks import refuse, register_build

#: Index dtypes sparsetools accepts.
_INDEX_DTYPES = ("int32", "int64")


def _shape(name: str, attrs: Mapping[str, Any], ndims: tuple[int, ...] = (2,)) -> tuple[int, ...]:
    import numpy as np

    shape = attrs.get("_shape")
    if not isinstance(shape, tuple) or len(shape) not in ndims:
        raise refuse(f"{name} shape is {shape!r}, expected a tuple of {' or '.join(map(str, ndims))} sizes")
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= int(n) < 2**62:
            raise refuse(f"{name} shape {shape!r} has an invalid size {n!r}")
    return tuple(int(n) for n in shape)


def _array(name: str, attrs: Mapping[str, Any], key: str, ndim: int, index: bool = False) -> Any:
    import numpy as np

    value = attrs.get(key)
    if not isinstance(value, np.ndarray):
        raise refuse(f"{name} {key} is {type(value).__name__}, not a numpy array")
    if value.ndim != ndim:
        raise refuse(f"{name} {key} has {value.ndim} dimensions, expected {ndim}")
    if index and value.dtype.name not in _INDEX_DTYPES:
        raise refuse(f"{name} {key} has dtype {value.dtype}, expected int32 or int64")
    if not index and value.dtype.hasobject:
        raise refuse(f"{name} {key} has dtype object")
    return value


def _in_range(name: str, what: str, values: Any, high: int) -> None:
    import numpy as np

    bad = (values < 0) | (values >= high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise refuse(f"{name} {what}[{i}] is {int(values[i])}, outside 0..{high - 1}")


def _attrs(target: Any, state: Any) -> dict[str, Any]:
    attrs = dict(getattr(target, "__dict__", None) or {})
    if isinstance(state, Mapping):
        attrs.update(state)
    return attrs


@register_build("scipy.sparse._compressed", "_cs_matrix")
def check_compressed(matrix: Any, state: Any) -> None:
    """CSR/CSC (and BSR, by blocks): ``indptr`` of ``major + 1`` non-decreasing offsets from 0
    to ``nnz``, ``indices`` and ``data`` of ``nnz`` entries, every index below ``minor``."""
    import numpy as np

    name = type(matrix).__name__
    attrs = _attrs(matrix, state)
    blocks = hasattr(matrix, "blocksize") or name.startswith("bsr")
    shape = _shape(name, attrs, (2,) if blocks or name.startswith("csc") else (1, 2))
    indptr = _array(name, attrs, "indptr", 1, index=True)
    indices = _array(name, attrs, "indices", 1, index=True)
    data = _array(name, attrs, "data", 3 if blocks else 1)
    if indptr.dtype != indices.dtype:
        raise refuse(f"{name} indptr ({indptr.dtype}) and indices ({indices.dtype}) differ in dtype")
    if len(shape) == 1:
        major, minor = 1, shape[0]
    else:
        major, minor = (shape[1], shape[0]) if name.startswith("csc") else shape
    if blocks:
        r, c = data.shape[1:]
        if r < 1 or c < 1 or major % r or minor % c:
            raise refuse(f"{name} blocks of {r}x{c} do not tile its shape {shape}")
        major, minor = major // r, minor // c
    if indptr.shape[0] != major + 1:
        raise refuse(f"{name} indptr has {indptr.shape[0]} entries, expected {major + 1} for shape {shape}")
    nnz = indices.shape[0]
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
        raise refuse(f"{name} indptr runs {int(indptr[0])}..{int(indptr[-1])}, expected 0..{nnz}")
    steps = np.diff(indptr)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0])
        raise refuse(f"{name} indptr decreases at {i} ({int(indptr[i])} then {int(indptr[i + 1])})")
    if data.shape[0] != nnz:
        raise refuse(f"{name} has {data.shape[0]} stored values for {nnz} indices")
    _in_range(name, "indices", indices, minor)
    for flag, strict in (("_has_sorted_indices", False), ("_has_canonical_format", True)):
        if attrs.get(flag) and nnz:
            rows = np.repeat(np.arange(major), steps)
            same = rows[1:] == rows[:-1]
            step = np.diff(indices)
            if (same & ((step <= 0) if strict else (step < 0))).any():
                raise refuse(f"{name} claims {flag.strip('_')} but its indices are not")


@register_build("scipy.sparse._coo", "_coo_base")
def check_coo(matrix: Any, state: Any) -> None:
    """COO: one coordinate array per dimension, each as long as ``data``, within the shape."""
    name = type(matrix).__name__
    attrs = _attrs(matrix, state)
    shape = _shape(name, attrs, tuple(range(1, 65)))
    coords = attrs.get("coords")
    if not isinstance(coords, tuple) or len(coords) != len(shape):
        raise refuse(f"{name} coords is not a tuple of {len(shape)} index arrays")
    data = _array(name, attrs, "data", 1)
    for axis, size in enumerate(shape):
        values = _array(name, {"coords": coords[axis]}, "coords", 1, index=True)
        if values.shape[0] != data.shape[0]:
            raise refuse(f"{name} coords[{axis}] has {values.shape[0]} entries for {data.shape[0]} values")
        _in_range(name, f"coords[{axis}]", values, size)


@register_build("scipy.sparse._dia", "_dia_base")
def check_dia(matrix: Any, state: Any) -> None:
    """DIA: ``data`` is ``(n_diagonals, L)`` with one ``offsets`` entry per diagonal."""
    name = type(matrix).__name__
    attrs = _attrs(matrix, state)
    _shape(name, attrs)
    data = _array(name, attrs, "data", 2)
    offsets = _array(name, attrs, "offsets", 1, index=True)
    if offsets.shape[0] != data.shape[0]:
        raise refuse(f"{name} has {data.shape[0]} diagonals but {offsets.shape[0]} offsets")


@register_build("scipy.sparse._lil", "_lil_base")
def check_lil(matrix: Any, state: Any) -> None:
    """LIL: one row list per row, column indices within the shape, values as long as indices
    (``tocsr`` sizes its output from these lists in Cython)."""
    import numpy as np

    name = type(matrix).__name__
    attrs = _attrs(matrix, state)
    shape = _shape(name, attrs)
    rows, data = attrs.get("rows"), attrs.get("data")
    for key, value in (("rows", rows), ("data", data)):
        if not isinstance(value, np.ndarray) or value.shape != (shape[0],) or not value.dtype.hasobject:
            raise refuse(f"{name} {key} is not an object array of {shape[0]} lists")
    assert isinstance(rows, np.ndarray) and isinstance(data, np.ndarray)
    for i, (cols, vals) in enumerate(zip(rows, data, strict=True)):
        if not isinstance(cols, list) or not isinstance(vals, list) or len(cols) != len(vals):
            raise refuse(f"{name} row {i} is not two lists of equal length")
        for j in cols:
            if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < shape[1]:
                raise refuse(f"{name} row {i} has column {j!r}, outside 0..{shape[1] - 1}")


@register_build("scipy.sparse._dok", "_dok_base")
def check_dok(matrix: Any, state: Any) -> None:
    """DOK: every key an index tuple within the shape (``tocoo`` copies keys unchecked)."""
    import numpy as np

    name = type(matrix).__name__
    attrs = _attrs(matrix, state)
    shape = _shape(name, attrs, (1, 2))
    entries = attrs.get("_dict", {})
    if not isinstance(entries, dict):
        raise refuse(f"{name} entries are {type(entries).__name__}, not a dict")
    for key in entries:
        index = key if isinstance(key, tuple) else (key,)
        if len(index) != len(shape) or not all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < n
            for k, n in zip(index, shape, strict=True)
        ):
            raise refuse(f"{name} has an entry at {key!r}, outside its shape {shape}")


@register_build("scipy.interpolate._bsplines", "BSpline")
def check_bspline(spline: Any, state: Any) -> None:
    """What ``BSpline.__init__`` checks (a pickled spline skips it): ``_bspl``'s Cython evaluation
    and design matrix find the knot interval in ``t[k:n+1]`` and read ``c[interval - k ...]``."""
    import numpy as np

    attrs = _attrs(spline, state)
    k, t, c = attrs.get("k"), attrs.get("_t"), attrs.get("_c")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= 1000:
        raise refuse(f"BSpline degree k is {k!r}, expected a small non-negative integer")
    if not isinstance(t, np.ndarray) or t.ndim != 1 or t.dtype != np.float64 or not t.flags.c_contiguous:
        raise refuse("BSpline knots are not a contiguous 1-D float64 array")
    n = t.shape[0] - int(k) - 1
    if n < k + 1:
        raise refuse(f"BSpline has {t.shape[0]} knots, degree {k} needs at least {2 * k + 2}")
    if not np.isfinite(t).all() or (np.diff(t) < 0).any() or len(np.unique(t[k : n + 1])) < 2:
        raise refuse("BSpline knots are not finite, non-decreasing, with two distinct internal knots")
    if not isinstance(c, np.ndarray) or c.ndim < 1 or c.shape[0] < n or c.dtype.kind not in "fc":
        raise refuse(f"BSpline has coefficients of shape {getattr(c, 'shape', None)} for {n} basis functions")
    axis, extrapolate = attrs.get("axis", 0), attrs.get("extrapolate", True)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis < c.ndim:
        raise refuse(f"BSpline axis {axis!r} is not an axis of its coefficients")
    if not isinstance(extrapolate, (bool, np.bool_)) and extrapolate != "periodic":
        raise refuse(f"BSpline extrapolate is {extrapolate!r}")
