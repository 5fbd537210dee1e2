"""The one state check numpy needs (reviewed in docs/native-state-review.md).

numpy checks an array's own state (``(version, shape, dtype, is_fortran, rawdata)``): the
buffer must match the shape and dtype. What it does not stop is a pickle that rebuilds an
array *after* another object took it in: a second ``BUILD`` on a memoized array swaps its
buffer, so a Cython memoryview taken earlier (a KD tree's index array, a Kalman filter's
state) would point at freed memory, and a sparse matrix checked earlier would hold new
indices. An honest pickle builds each array exactly once, on the empty placeholder
``numpy.core.multiarray._reconstruct`` returns; anything else is refused.
"""

from __future__ import annotations

from typing import Any

from .state_checks import refuse, register_build


@register_build("numpy", "ndarray", build_only=True)
def check_ndarray(array: Any, state: Any) -> None:
    """``BUILD`` only on the empty placeholder array, never on an array already filled."""
    if getattr(array, "size", 0) != 0:
        raise refuse(
            f"the pickle rebuilds an array of shape {getattr(array, 'shape', '?')} that was already built "
            "(an honest pickle builds each array once)"
        )
