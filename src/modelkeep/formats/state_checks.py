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

import importlib
from collections.abc import Callable
from typing import Any

#: Modules that register checks when imported (each imports its framework lazily, inside the checks).
CHECK_MODULES: tuple[str, ...] = ()

BuildCheck = Callable[[Any, Any], None]
CallCheck = Callable[[Any, tuple[Any, ...]], None]

_BUILD_CHECKS: dict[tuple[str, str], BuildCheck] = {}
_CALL_CHECKS: dict[tuple[str, str], CallCheck] = {}
_loaded = False


def register_build(module: str, qualname: str) -> Callable[[BuildCheck], BuildCheck]:
    """Register ``check(target, state)`` for objects whose type (or a base) is ``module.qualname``."""

    def add(check: BuildCheck) -> BuildCheck:
        _BUILD_CHECKS[(module, qualname)] = check
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
    for base in getattr(cls, "__mro__", (cls,)):
        check = _BUILD_CHECKS.get(_key(base))
        if check is not None:
            return check
    return None


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


def check_loaded(obj: Any) -> None:
    """After a load that bypassed modelkeep's unpicklers: check every registered native object
    reachable from ``obj``. Filled in by the native-state work; a no-op until checks exist."""
    _ensure_loaded()
