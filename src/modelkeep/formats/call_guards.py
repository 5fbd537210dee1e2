"""Checks of the arguments a pickle passes to the callables it may call.

Being on the callable list (:data:`~modelkeep.formats.allowlist.CALLABLE_ALLOWLIST`)
says a callable is safe *with data*. Some arguments are more than data:

- a count that makes the callee allocate (``bytearray(3_000_000_000)``, an ndarray shape,
  ``SeedSequence(pool_size=...)``, ``list(range(2e8))``): charged to the load's
  :class:`~modelkeep.formats.budget.LoadBudget` before the call;
- a string the callee opens as a file (pandas hands ``"dateutil/<path>"`` time zones to
  ``dateutil.tz.gettz``, which opens any path): only IANA zone names pass;
- a class or function the callee will call in turn (``copyreg.__newobj__(cls)``,
  ``numpy.random._pickle.__generator_ctor(name, ctor)``): it must itself be allowed.

Each guard is registered under the allow-list spelling ``(module, name)`` of its
callable and receives the unpickler (a :class:`CallContext`), the positional
arguments and the keyword arguments. A guard raises
:class:`~modelkeep.errors.UnsafeModelError` saying what was wrong.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..errors import UnsafeModelError
from .budget import LoadBudget


class CallContext(Protocol):
    """What a guard may ask of the unpickler that is about to make the call."""

    budget: LoadBudget

    def require_callable(self, obj: Any, role: str) -> None:
        """Refuse ``obj`` unless it may be called (it is about to be, by the callee)."""

    def require_new(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], role: str) -> None:
        """Refuse ``cls.__new__(cls, *args, **kwargs)`` unless NEWOBJ would allow it."""


Guard = Callable[[CallContext, tuple[Any, ...], dict[str, Any]], None]

GUARDS: dict[tuple[str, str], Guard] = {}
#: Callables whose guard checks their class arguments itself (they only ``__new__`` them).
TAKES_CLASSES: set[tuple[str, str]] = set()

#: Bytes charged per element a lazy sequence (``range``, ``RangeIndex``) would materialize.
ELEMENT_BYTES = 40
#: Bytes charged per element of a container constructor (a pointer and change).
POINTER_BYTES = 8


def guard(*names: str, takes_classes: bool = False) -> Callable[[Guard], Guard]:
    """Register ``check`` for each ``"module:name"`` spelling."""

    def add(check: Guard) -> Guard:
        for spelled in names:
            module, _, name = spelled.partition(":")
            GUARDS[(module, name)] = check
            if takes_classes:
                TAKES_CLASSES.add((module, name))
        return check

    return add


def refuse(text: str) -> UnsafeModelError:
    return UnsafeModelError(f"refused to load: {text} (possible malicious pickle)")


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _count(value: Any, what: str) -> int:
    """A non-negative integer count, or a refusal (a float or a huge int is not a shape)."""
    if type(value) is int:
        return value if value > 0 else 0
    try:
        number = int(value.__index__())
    except (AttributeError, TypeError):
        raise refuse(f"{what} is {type(value).__name__}, not an integer") from None
    if number < 0:
        return 0  # the callee refuses negative counts itself, before allocating
    return number


def _shape(value: Any, what: str) -> list[int]:
    if isinstance(value, (tuple, list)):
        return [_count(v, what) for v in value[:64]]
    return [_count(value, what)]


def _itemsize(dtype: Any) -> int:
    import numpy as np

    try:
        return int(np.dtype(dtype).itemsize) or 1
    except (TypeError, ValueError):
        return 8


def charge_array(ctx: CallContext, shape: Any, dtype: Any, what: str) -> None:
    dims = _shape(shape, "an array shape")
    ctx.budget.charge(math.prod(dims) * _itemsize(dtype), what)


def _length(value: Any) -> int | None:
    try:
        return len(value)
    except OverflowError:
        return 1 << 62  # a range longer than sys.maxsize
    except Exception:
        return None


def _is_lazy(value: Any) -> bool:
    """A sequence whose length costs nothing until someone iterates it."""
    if isinstance(value, range):
        return True
    kind = type(value)
    return kind.__name__ == "RangeIndex" and kind.__module__.startswith("pandas")


def charge_lazy(ctx: CallContext, values: Iterable[Any], what: str) -> None:
    """Charge each lazy sequence among ``values`` (and one level into lists, tuples and dicts)."""
    for value in values:
        inner: Iterable[Any]
        if isinstance(value, dict):
            inner = list(value.values())[:64]
        elif isinstance(value, (list, tuple)):
            inner = value[:64]
        else:
            inner = ()
        for item in (value, *inner):
            if _is_lazy(item):
                n = _length(item) or 0
                ctx.budget.charge(n * ELEMENT_BYTES, f"{what} materializing a sequence of {n} items")


# -- Python -----------------------------------------------------------------------------------


@guard("builtins:bytearray", "builtins:bytes", "numpy:void", "numpy:bytes_")
def _bytes(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    source = _arg(args, kwargs, 0, "source", b"")
    if isinstance(source, int) and not isinstance(source, bool):
        ctx.budget.charge(_count(source, "a bytes length"), "a bytes or bytearray of that length")
    elif isinstance(source, str):
        ctx.budget.charge(4 * len(source), "encoding a string")
    elif not isinstance(source, (bytes, bytearray, memoryview)):
        n = _length(source)
        if n is not None:
            ctx.budget.charge(n, "a bytes object from a sequence")


@guard(
    "builtins:list",
    "builtins:tuple",
    "builtins:set",
    "builtins:frozenset",
    "builtins:dict",
    "collections:deque",
    "collections:Counter",
    "collections:OrderedDict",
)
def _container(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in args[:1]:
        n = _length(value)
        if n is not None and not _is_lazy(value):  # lazy ones are charged generically
            ctx.budget.charge(n * POINTER_BYTES, "a container copied from a sequence")


_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii"})


@guard("_codecs:encode")
def _codecs_encode(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = _arg(args, kwargs, 0, "obj")
    encoding = _arg(args, kwargs, 1, "encoding", "utf-8")
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _ENCODINGS:
        raise refuse(f"_codecs.encode is allowed only to encode a string as latin-1, utf-8 or ascii, got {encoding!r}")
    ctx.budget.charge(4 * len(text), "encoding a string")


_FRACTION_TEXT = re.compile(r"^\s*[-+]?(\d[\d_]*)?(\.\d[\d_]*)?([eE][-+]?\d{1,4})?\s*(/\s*\d[\d_]*)?\s*$")


@guard("fractions:Fraction")
def _fraction(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, str) and (len(value) > 10_000 or not _FRACTION_TEXT.match(value)):
            raise refuse("a Fraction string with an exponent beyond 4 digits (10**exp would fill memory)")


#: IANA names: letters, digits and ``_+-`` in ``/``-separated parts, no dot-only part, no leading ``/``.
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*$")


@functools.cache
def _known_zones() -> frozenset[str]:
    import zoneinfo

    names = set(zoneinfo.available_timezones())
    try:
        import pytz

        names.update(pytz.all_timezones)
    except ImportError:
        pass
    return frozenset(names | {"UTC", "utc"})


def check_zone_name(name: Any, where: str) -> None:
    """Refuse a time-zone key that is not a known IANA name (no paths, no ``..``)."""
    if isinstance(name, str) and len(name) <= 64 and _ZONE_NAME.match(name) and name in _known_zones():
        return
    shown = repr(name)[:80]
    raise refuse(
        f"{where} names the time zone {shown}, which is not an IANA zone name (a path there would be opened as a file)"
    )


@guard("zoneinfo:ZoneInfo")
def _zoneinfo(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    check_zone_name(_arg(args, kwargs, 0, "key"), "zoneinfo.ZoneInfo")


def zoneinfo_unpickle(key: Any, from_cache: Any = 1) -> Any:
    """``zoneinfo.ZoneInfo._unpickle`` (what a pickled ZoneInfo calls) with its key checked first."""
    import zoneinfo

    check_zone_name(key, "zoneinfo.ZoneInfo._unpickle")
    return zoneinfo.ZoneInfo._unpickle(key, from_cache)  # type: ignore[attr-defined]


# -- copyreg ------------------------------------------------------------------------------------


@guard("copyreg:__newobj__", takes_classes=True)
def _newobj(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not args:
        raise refuse("copyreg.__newobj__ without a class")
    ctx.require_new(args[0], tuple(args[1:]), {}, "copyreg.__newobj__")


@guard("copyreg:__newobj_ex__", takes_classes=True)
def _newobj_ex(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) != 3 or not isinstance(args[1], tuple) or not isinstance(args[2], dict):
        raise refuse("copyreg.__newobj_ex__ with arguments other than (class, tuple, dict)")
    ctx.require_new(args[0], args[1], args[2], "copyreg.__newobj_ex__")


@guard("copyreg:_reconstructor", takes_classes=True)
def _reconstructor(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) != 3:
        raise refuse("copyreg._reconstructor with other than (class, base, state)")
    cls, base, state = args
    ctx.require_new(cls, (), {}, "copyreg._reconstructor")
    if base is not object:
        # base.__new__(cls, state) and base.__init__(obj, state) run: base must be callable
        ctx.require_callable(base, "the base class of copyreg._reconstructor")
        guard_of = GUARDS.get((getattr(base, "__module__", ""), getattr(base, "__qualname__", "")))
        if guard_of is not None:
            guard_of(ctx, (state,), {})


# -- numpy --------------------------------------------------------------------------------------


@guard("numpy:ndarray", "numpy.ma:MaskedArray", "numpy.ma.core:MaskedArray")
def _ndarray(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    shape = _arg(args, kwargs, 0, "shape")
    if shape is None or not isinstance(shape, (int, tuple, list)) or isinstance(shape, bool):
        return  # MaskedArray(data) copies data that already exists
    charge_array(ctx, shape, _arg(args, kwargs, 1, "dtype", float), "numpy.ndarray")


@guard("numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct", takes_classes=True)
def _reconstruct(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) != 3:
        raise refuse("numpy's _reconstruct with other than (subtype, shape, dtype)")
    ctx.require_new(args[0], (), {}, "numpy's _reconstruct")
    charge_array(ctx, args[1], args[2], "numpy's _reconstruct")


@guard("numpy.ma.core:_mareconstruct", takes_classes=True)
def _mareconstruct(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) != 4:
        raise refuse("numpy.ma's _mareconstruct with other than (subtype, baseclass, baseshape, basetype)")
    subtype, baseclass, shape, dtype = args
    ctx.require_callable(subtype, "the subtype of numpy.ma's _mareconstruct")
    ctx.require_new(baseclass, (), {}, "numpy.ma's _mareconstruct")
    charge_array(ctx, shape, dtype, "numpy.ma's _mareconstruct")
    charge_array(ctx, shape, "b", "numpy.ma's _mareconstruct (mask)")


@guard("numpy._core.multiarray:scalar", "numpy.core.multiarray:scalar")
def _scalar(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if args:
        ctx.budget.charge(_itemsize(args[0]), "a numpy scalar")


def _check_bit_generator(ctx: CallContext, name: Any, where: str) -> None:
    """A name looked up in numpy's table, an allowed class (called), or a bit generator already built."""
    if isinstance(name, type):
        ctx.require_callable(name, f"the bit generator of {where}")
        return
    import numpy.random

    if isinstance(name, numpy.random.BitGenerator):
        return
    if not isinstance(name, str) or len(name) > 64:
        raise refuse(f"{where} needs a bit generator name or class")


def _is_bit_generator_ctor(obj: Any) -> bool:
    return getattr(obj, "__module__", "") == "numpy.random._pickle" and getattr(obj, "__name__", "") == (
        "__bit_generator_ctor"
    )


@guard("numpy.random._pickle:__bit_generator_ctor", takes_classes=True)
def _bit_generator_ctor(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check_bit_generator(ctx, _arg(args, kwargs, 0, "bit_generator_name", "MT19937"), "__bit_generator_ctor")


@guard("numpy.random._pickle:__generator_ctor", "numpy.random._pickle:__randomstate_ctor", takes_classes=True)
def _generator_ctor(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _check_bit_generator(ctx, _arg(args, kwargs, 0, "bit_generator_name", "MT19937"), "a numpy generator")
    ctor = _arg(args, kwargs, 1, "bit_generator_ctor")
    if ctor is not None and not _is_bit_generator_ctor(ctor):
        raise refuse("a numpy random generator whose constructor argument is not numpy's own __bit_generator_ctor")


@guard("numpy.random:SeedSequence", "numpy.random.bit_generator:SeedSequence")
def _seed_sequence(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    pool = kwargs.get("pool_size", 4)
    ctx.budget.charge(4 * _count(pool, "SeedSequence's pool_size"), "numpy.random.SeedSequence's pool")


def _new_only(module: str, name: str, position: int = 0) -> None:
    """A reconstructor that only ``__new__``s its class argument (checked like NEWOBJ)."""

    def check(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(args) <= position:
            raise refuse(f"{module}.{name} without its class argument")
        ctx.require_new(args[position], (), {}, f"{module}.{name}")

    guard(f"{module}:{name}", takes_classes=True)(check)


_new_only("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")
_new_only("sklearn.metrics._dist_metrics", "newObj")
_new_only("sklearn.neighbors._ball_tree", "newObj")
_new_only("sklearn.neighbors._kd_tree", "newObj")
_new_only("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")
_new_only("pandas._libs.interval", "__pyx_unpickle_IntervalMixin")
_new_only("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss")


# -- pandas -------------------------------------------------------------------------------------

_DATEUTIL = "dateutil/"


def _strings(values: Iterable[Any], depth: int = 2) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif depth and isinstance(value, dict):
            yield from _strings(list(value.keys())[:256] + list(value.values())[:256], depth - 1)
        elif depth and isinstance(value, (list, tuple)):
            yield from _strings(value[:256], depth - 1)


def check_pandas_strings(values: Iterable[Any], where: str) -> None:
    """Refuse ``"dateutil/<x>"`` time zones (or dtype strings holding one) unless ``x`` is an IANA name:
    pandas hands ``x`` to ``dateutil.tz.gettz``, which opens it as a file."""
    for text in _strings(values):
        at = text.find(_DATEUTIL)
        while at >= 0:
            rest = text[at + len(_DATEUTIL) :]
            name = re.split(r"[\],\s]", rest, maxsplit=1)[0]
            check_zone_name(name, where)
            at = text.find(_DATEUTIL, at + 1)


def _pandas_index_class(ctx: CallContext, cls: Any, where: str) -> None:
    import pandas as pd

    if not (isinstance(cls, type) and issubclass(cls, pd.Index)):
        raise refuse(f"{where} with a class that is not a pandas Index")
    ctx.require_new(cls, (), {}, where)


def _pandas_new_index(where: str) -> Guard:
    def check(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not args:
            raise refuse(f"{where} without its class argument")
        _pandas_index_class(ctx, args[0], where)
        check_pandas_strings((*args[1:], *kwargs.values()), where)

    return check


for _module, _name in (
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
    ("pandas.core.indexes.interval", "_new_IntervalIndex"),
    ("pandas.core.indexes.period", "_new_PeriodIndex"),
    ("pandas.core.indexes.timedeltas", "_new_TimedeltaIndex"),
):
    guard(f"{_module}:{_name}", takes_classes=True)(_pandas_new_index(f"pandas' {_name}"))


def pandas_call(ctx: CallContext, where: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Every call into pandas: time-zone strings checked; an index x columns product charged."""
    check_pandas_strings((*args, *kwargs.values()), where)
    index = _arg(args, kwargs, 1, "index")
    columns = _arg(args, kwargs, 2, "columns")
    rows, cols = _length(index), _length(columns)
    if rows is not None and cols is not None:
        ctx.budget.charge(rows * cols * POINTER_BYTES, f"{where} with {rows} x {cols} cells")


# -- scipy, sklearn, statsmodels ----------------------------------------------------------------


@guard("sklearn.tree._tree:Tree")
def _tree(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``Tree(n_features, n_classes, n_outputs)`` copies ``n_outputs`` entries of ``n_classes``
    without bounds checks: ``n_classes`` must hold that many."""
    outputs = _count(_arg(args, kwargs, 2, "n_outputs", 1), "Tree's n_outputs")
    ctx.budget.charge(16 * outputs, "sklearn Tree's per-output arrays")
    classes = _arg(args, kwargs, 1, "n_classes")
    n = _length(classes)
    if n is None or n < outputs:
        raise refuse(f"a scikit-learn Tree with n_outputs={outputs} but {n} class counts")


@guard(
    "sklearn.neighbors._ball_tree:NeighborsHeap32",
    "sklearn.neighbors._ball_tree:NeighborsHeap64",
    "sklearn.neighbors._kd_tree:NeighborsHeap32",
    "sklearn.neighbors._kd_tree:NeighborsHeap64",
)
def _neighbors_heap(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    points = _count(_arg(args, kwargs, 0, "n_pts", 0), "NeighborsHeap's n_pts")
    neighbors = _count(_arg(args, kwargs, 1, "n_nbrs", 0), "NeighborsHeap's n_nbrs")
    ctx.budget.charge(16 * points * neighbors, "sklearn NeighborsHeap")


@guard("sklearn.neighbors._ball_tree:NodeHeap", "sklearn.neighbors._kd_tree:NodeHeap")
def _node_heap(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    size = _count(_arg(args, kwargs, 0, "size_guess", 100), "NodeHeap's size_guess")
    ctx.budget.charge(24 * size, "sklearn NodeHeap")


@guard("sklearn.tree._tree:_PathFinder")
def _path_finder(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    nodes = _count(_arg(args, kwargs, 0, "node_count", 0), "_PathFinder's node_count")
    ctx.budget.charge(16 * nodes, "sklearn _PathFinder")


@guard(
    "statsmodels.tsa.statespace._initialization:cInitialization",
    "statsmodels.tsa.statespace._initialization:dInitialization",
    "statsmodels.tsa.statespace._initialization:sInitialization",
    "statsmodels.tsa.statespace._initialization:zInitialization",
)
def _initialization(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    states = _count(_arg(args, kwargs, 0, "k_states", 0), "the state-space dimension")
    ctx.budget.charge(48 * states * states, "a statsmodels state-space initialization")


def _no_backward_hooks(position: int) -> Guard:
    def check(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hooks = _arg(args, kwargs, position, "backward_hooks")
        if hooks:
            raise refuse("a torch tensor with backward hooks (they would run code on backward)")

    return check


guard("torch._utils:_rebuild_tensor_v2")(_no_backward_hooks(5))
guard("torch._utils:_rebuild_parameter")(_no_backward_hooks(2))


@guard("torch._utils:_rebuild_parameter_with_state")
def _parameter_with_state(ctx: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The state is applied with ``setattr``: plain attribute names only (no ``__class__``, no dunders)."""
    _no_backward_hooks(2)(ctx, args, kwargs)
    state = _arg(args, kwargs, 3, "state")
    parts = state if isinstance(state, tuple) else (state,)
    for part in parts:
        for name in part or {}:
            if not isinstance(name, str) or name.startswith("__"):
                raise refuse(f"a torch parameter whose state sets the attribute {name!r}")
