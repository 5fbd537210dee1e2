"""Checks of the state a pickle hands to native code, run before native code sees it.

Native types (Cython, C++) trust their inputs: a scikit-learn ``Tree`` whose child
indices point past its node array, or a ``KDTree`` whose index array points outside its
data, reads and writes out of bounds in ``predict``. Being allow-listed only says a type
may be *named* in a pickle; the state it is given must still be checked.

This module is the one hook the unpicklers call:

- :func:`check_build` before ``BUILD`` applies ``state`` to ``target`` (``__setstate__``);
- :func:`check_call` before ``REDUCE``/``NEWOBJ`` calls an allow-listed callable;
- :func:`check_loaded` on a finished object graph, for loaders that do not go through
  modelkeep's unpicklers (skops).

Checks are registered per exact ``(module, qualified name)`` of a type (or callable) by
the modules named in :data:`CHECK_MODULES`, imported on first use. A check raises
:class:`~modelkeep.errors.UnsafeModelError` saying what was wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UnsafeModelError

#: Modules that register checks when imported (each imports its framework lazily, inside the checks).
CHECK_MODULES: tuple[str, ...] = (
    "modelkeep.formats.checks_numpy",
    "modelkeep.formats.checks_sklearn",
    "modelkeep.formats.checks_scipy",
    "modelkeep.formats.checks_statsmodels",
    "modelkeep.formats.native_checks",
)

#: :func:`check_loaded` refuses an object graph with more objects than this (a padded graph
#: must not hide a native object past the end of the walk).
MAX_LOADED_OBJECTS = 5_000_000

BuildCheck = Callable[[Any, Any], None]
CallCheck = Callable[[Any, tuple[Any, ...]], None]

_BUILD_CHECKS: dict[tuple[str, str], BuildCheck] = {}
#: Build checks of types whose ``__setstate__`` copies the state into native memory: once
#: checked at ``BUILD`` nothing later in the pickle can change it, so the final pass skips them.
_COPYING: set[BuildCheck] = set()
#: Build checks that only make sense at ``BUILD`` (they compare the state with what the
#: constructor allocated, or refuse rebuilding an object): the final pass skips them.
_BUILD_ONLY: set[BuildCheck] = set()
#: type -> its build check (or None), memoized: the MRO walk runs once per type, not per object.
_FOR_TYPE: dict[type, BuildCheck | None] = {}
_CALL_CHECKS: dict[tuple[str, str], CallCheck] = {}
_loaded = False


def register_build(
    module: str, qualname: str, *, copies: bool = False, build_only: bool = False
) -> Callable[[BuildCheck], BuildCheck]:
    """Register ``check(target, state)`` for objects whose type (or a base) is ``module.qualname``.

    ``copies=True`` says the type's ``__setstate__`` copies the state (so the check at ``BUILD``
    covers it for good and :func:`checked` need not repeat it); ``build_only=True`` that the
    check judges the state against the object as its constructor left it, so only ``BUILD``
    can run it (:func:`check_loaded` skips it)."""

    def add(check: BuildCheck) -> BuildCheck:
        _BUILD_CHECKS[(module, qualname)] = check
        _FOR_TYPE.clear()
        if copies:
            _COPYING.add(check)
        if build_only:
            _BUILD_ONLY.add(check)
        return check

    return add


def register_call(module: str, qualname: str) -> Callable[[CallCheck], CallCheck]:
    """Register ``check(func, args)`` for calls of the callable ``module.qualname``."""

    def add(check: CallCheck) -> CallCheck:
        _CALL_CHECKS[(module, qualname)] = check
        return check

    return add


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for name in CHECK_MODULES:
            importlib.import_module(name)
        _loaded = True


def _key(obj: Any) -> tuple[str, str]:
    return (getattr(obj, "__module__", "") or "", getattr(obj, "__qualname__", "") or "")


def build_check_for(cls: type) -> BuildCheck | None:
    """The registered state check for instances of ``cls`` (the nearest in its MRO), if any."""
    _ensure_loaded()
    try:
        return _FOR_TYPE[cls]
    except (KeyError, TypeError):  # not seen yet (or a type that cannot be a dict key)
        pass
    found = None
    for base in getattr(cls, "__mro__", (cls,)):
        found = _BUILD_CHECKS.get(_key(base))
        if found is not None:
            break
    with contextlib.suppress(TypeError):
        _FOR_TYPE[cls] = found
    return found


def check_build(target: Any, state: Any) -> None:
    """Before ``BUILD``: refuse ``state`` for ``target`` if its registered check finds it unsafe."""
    check = build_check_for(type(target))
    if check is not None:
        check(target, state)


def call_check_for(func: Any) -> CallCheck | None:
    """The registered argument check of the callable ``func``, if any (unpicklers look it up once per global)."""
    _ensure_loaded()
    return _CALL_CHECKS.get(_key(func))


def check_call(func: Any, args: tuple[Any, ...]) -> None:
    """Before ``REDUCE``/``NEWOBJ``: refuse ``args`` for ``func`` if its registered check finds them unsafe."""
    check = call_check_for(func)
    if check is not None:
        check(func, args)


def refuse(what: str) -> UnsafeModelError:
    """The error a check raises: ``what`` says exactly what was wrong with the state."""
    return UnsafeModelError(
        f"refused to load: {what}. Native code would read or write out of bounds with this state "
        "(a corrupted or malicious model); modelkeep checks it before native code sees it"
    )


def current_state(obj: Any) -> Any:
    """The state ``obj`` would pickle now: what a build check sees for an object built without
    modelkeep's unpicklers (skops) or changed after its ``BUILD``."""
    getstate = getattr(obj, "__getstate__", None)
    if getstate is not None:
        try:
            return getstate()
        except TypeError:
            pass
    reduced = obj.__reduce_ex__(4)
    return reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 else None


def _children(obj: Any) -> Iterator[Any]:
    """The objects ``obj`` refers to that a model can hide a native object in."""
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
        return
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        yield from obj
        return
    dtype = getattr(obj, "dtype", None)
    if dtype is not None and getattr(dtype, "hasobject", False) and hasattr(obj, "ravel"):
        try:
            items = list(obj.ravel(order="K"))
        except (TypeError, ValueError, AttributeError):
            items = []
        yield from items
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        yield from attrs.values()
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                yield getattr(obj, slot)


_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type, types.ModuleType)


def check_loaded(obj: Any, *, built: bool = False) -> None:
    """After a load: check every registered native object reachable from ``obj``.

    The walk is iterative (no recursion limit), visits each object once (cycles are fine) and
    covers dicts, lists, tuples, sets, object arrays, ``__dict__`` and ``__slots__``. Each
    native object's *current* state goes through its build check, and so do the estimators
    that hold them, so state changed after its ``BUILD`` (a second ``BUILD``, a shared array
    rebuilt later) and objects built without modelkeep's unpicklers (skops) are covered too.
    A graph of more than :data:`MAX_LOADED_OBJECTS` objects is refused, not half-checked.
    ``built=True`` (after modelkeep's unpicklers, which checked every ``BUILD``) skips the
    types whose state was copied into native memory at that ``BUILD``.
    """
    _ensure_loaded()
    if not _BUILD_CHECKS:
        return
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, _LEAVES) or id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > MAX_LOADED_OBJECTS:
            raise UnsafeModelError(
                f"refused to load: the object graph has more than {MAX_LOADED_OBJECTS} objects, "
                "too many to check for unsafe native state"
            )
        check = build_check_for(type(item))
        if check is not None and check not in _BUILD_ONLY and not (built and check in _COPYING):
            check(item, current_state(item))
        stack.extend(_children(item))


def checked(obj: Any) -> Any:
    """``obj`` after :func:`check_loaded`: the last step of every unpickling load. The checks
    at ``BUILD`` refuse bad state before ``__setstate__`` runs; this pass sees the final graph,
    so state changed after its check (an array rebuilt by a later ``BUILD``, an estimator
    whose trees were built after it) cannot slip through."""
    check_loaded(obj, built=True)
    return obj
