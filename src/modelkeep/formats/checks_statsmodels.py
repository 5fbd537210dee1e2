"""State checks for statsmodels' Cython state-space objects (reviewed in docs/native-state-review.md).

``{s,d,c,z}Statespace``, ``*KalmanFilter``, ``*KalmanSmoother``, ``*SimulationSmoother`` and
``*Initialization`` are rebuilt by calling their constructor with the system matrices (or the
objects built from them), which statsmodels validates, and then ``__setstate__`` assigns
dozens of work and output arrays to typed memoryviews unchecked. The recursions index them by
the model's dimensions and by the time counter ``t``. So the state is judged against the object
the constructor just built: every array must have exactly the shape and dtype the constructor
allocated for it (an array the constructor left out must stay out), the missing-data masks
must be the ones computed from the observations, and every time index must lie within
``0..nobs``. Run at ``BUILD`` only (the comparison needs the freshly constructed object; the
numpy check stops arrays being swapped later).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .state_checks import refuse, register_build

_BASES = {
    "statsmodels.tsa.statespace._representation": "Statespace",
    "statsmodels.tsa.statespace._kalman_filter": "KalmanFilter",
    "statsmodels.tsa.statespace._kalman_smoother": "KalmanSmoother",
    "statsmodels.tsa.statespace._simulation_smoother": "SimulationSmoother",
    "statsmodels.tsa.statespace._initialization": "Initialization",
}
#: Scalars that index the time axis.
_TIME_INDICES = ("t", "nobs_diffuse", "period_converged")
#: Flags the constructor derives from the system matrices and that choose code paths.
_DERIVED = ("has_missing", "companion_transition")
#: Statespace arrays that exist only once the model is initialized.
_INITIAL = ("initial_state", "initial_state_cov", "initial_diffuse_state_cov")


def _is_none(value: Any) -> bool:
    import numpy as np

    return value is None or (isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ())


def check_statespace_object(target: Any, state: Any) -> None:
    """The state of a statsmodels Cython state-space object against its constructor's allocation."""
    import numpy as np

    name = type(target).__name__
    if not isinstance(state, Mapping):
        raise refuse(f"{name} state is {type(state).__name__}, not a dict")
    reduced = target.__reduce__()
    fresh = reduced[2] if len(reduced) > 2 and isinstance(reduced[2], Mapping) else {}
    nobs = getattr(target, "nobs", None)
    model = getattr(target, "model", None)
    if nobs is None and model is not None:
        nobs = getattr(model, "nobs", None)
    k_states = getattr(target, "k_states", None)
    for key, expected in fresh.items():
        if key not in state:
            raise refuse(f"{name} state has no {key!r}")
        got = state[key]
        if key in _INITIAL:
            if _is_none(got):
                if state.get("initialized"):
                    raise refuse(f"{name} is marked initialized but has no {key}")
                continue
            shape = (k_states,) if key == "initial_state" else (k_states, k_states)
            if not isinstance(got, np.ndarray) or got.shape != shape or got.dtype != np.asarray(target.obs).dtype:
                raise refuse(f"{name} {key} is not a {np.asarray(target.obs).dtype} array of shape {shape}")
            continue
        if isinstance(expected, np.ndarray) and not _is_none(expected):
            if not isinstance(got, np.ndarray) or got.shape != expected.shape or got.dtype != expected.dtype:
                what = f"{got.dtype} {got.shape}" if isinstance(got, np.ndarray) else type(got).__name__
                raise refuse(f"{name} {key} is {what}, expected {expected.dtype} {expected.shape}")
            if key in ("missing", "nmissing") and not np.array_equal(got, expected):
                raise refuse(f"{name} {key} does not match the missing values of its observations")
        elif _is_none(expected):
            if not _is_none(got):
                raise refuse(f"{name} {key} is set, but this configuration never allocates it")
        elif key in _TIME_INDICES:
            # smoothers run backwards and stop at t = -1
            low = -1 if name.endswith("Smoother") else 0
            if (
                isinstance(got, bool)
                or not isinstance(got, (int, np.integer))
                or nobs is None
                or not low <= got <= nobs
            ):
                raise refuse(f"{name} {key} is {got!r}, outside {low}..{nobs}")
        elif key == "_smooth_method" or key in _DERIVED:
            if got != expected:
                raise refuse(f"{name} {key} is {got!r}, but it was built for {expected!r}")
        elif isinstance(expected, (bool, int, float, complex, np.number)) and not isinstance(
            got, (bool, int, float, complex, np.number)
        ):
            raise refuse(f"{name} {key} is {type(got).__name__}, expected a number")


for _module, _base in _BASES.items():
    for _prefix in "sdcz":
        register_build(_module, f"{_prefix}{_base}", build_only=True)(check_statespace_object)
