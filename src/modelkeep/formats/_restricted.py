"""Unpickling under an allow-list: a pickle may only load the globals someone vouched for.

A pickle can name any importable callable and have it called while loading:
that is how "malicious model" exploits work, and a deny-list of bad names
cannot win (every release of every library adds new ones). So modelkeep
resolves a global only when it is admitted by one of three sources:

1. the built-in allow-list (:mod:`modelkeep.formats.allowlist`): exact
   ``(module, qualified name)`` pairs reviewed as safe to call while
   unpickling -- containers, numpy/pandas/scipy reconstructors, estimator
   and model classes of scikit-learn, xgboost, lightgbm, catboost,
   statsmodels, torch's tensor rebuild functions;
2. the user's ``trusted`` setting (``ModelPersistence(trusted_types=...)``,
   the ``trusted_types`` config key, ``MODELKEEP_TRUSTED_TYPES``,
   ``modelkeep --trust``), never read from an artifact, sidecar or index;
3. the globals recorded at save (``ArtifactInfo.extra["globals"]``), but only
   when the registry verified the version's signature with a key the reader
   holds (the format's ``load`` gets ``signed=True``). Unsigned, the recorded
   list is only a hint for the error message.

Resolving a global only lets the pickle *name* it. Calling is narrower: the
callable of ``REDUCE``, ``NEWOBJ``/``NEWOBJ_EX`` (when the class has a ``__new__`` of
its own), ``INST`` and ``OBJ`` must be on
:data:`~modelkeep.formats.allowlist.CALLABLE_ALLOWLIST` (reviewed reconstructors and
data classes), or be trusted or signed as above (the user vouched for it); other
allow-listed classes are only created with a ``__new__`` that runs none of their code
(so ``Booster(model_file=...)`` is never reached), and functions a model holds as
values (a kmeans kernel, ``f_classif``) are never called. Each call's arguments are
checked first (:mod:`modelkeep.formats.call_guards`: paths and time zones, counts,
callables handed on), then :func:`modelkeep.formats.state_checks.check_call`. Every
load is bounded by a :class:`~modelkeep.formats.budget.LoadBudget`: length-carrying
opcodes are checked against the bytes left before allocating, allocating calls and
container items are charged, nesting is limited to :data:`MAX_DEPTH`.

Everything else raises :class:`~modelkeep.errors.UnsafeModelError` naming the
global and how to trust it; so does a name that resolves to a module object
(``GLOBAL pathlib os``) or walks through a module (protocol 4's dotted
``('pathlib', 'os.system')``), and a ``BUILD`` (``__setstate__``/``setattr``)
applied to a class, a module or any other object fetched by name, which
could otherwise patch library code for the rest of the process.

The policy is a frozen :class:`TrustPolicy` handed to each unpickler: there
is no module-level switch a payload could flip, and modelkeep's own modules
are not on the allow-list, so a payload cannot reach them at all.

Two globals are replaced by safe equivalents: ``torch.storage._load_from_bytes``
(which would run ``torch.load(weights_only=False)`` on bytes nested in the
pickle) loads the nested bytes with ``weights_only=True``, and
``builtins.getattr`` (which pandas writes for time zones) only reads the
attributes in :data:`SAFE_ATTRIBUTES` unless the user trusts ``builtins.getattr``.

At save, every format records the set of globals its pickle stream references
(scanned from the opcodes as they are written, :class:`GlobalsScanner`; joblib
records inside its pickler, :func:`recording_joblib_globals`).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import contextvars
import copyreg
import functools
import importlib
import io
import logging
import math
import mmap
import os
import pickle
import pickletools
import struct
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsafeModelError
from . import call_guards, state_checks
from .allowlist import BUILTIN_ALLOWLIST, CALLABLE_ALLOWLIST
from .budget import BoundedReader, LoadBudget

logger = logging.getLogger("modelkeep")

#: Key of ``ArtifactInfo.extra`` holding the sorted ``"module.name"`` globals of a pickle.
GLOBALS_KEY = "globals"
#: ``(module, qualified name, attribute)``: what the replacement ``getattr`` may read.
SAFE_ATTRIBUTES = frozenset({("zoneinfo", "ZoneInfo", "_unpickle")})
#: ``"module.name"`` spellings of the built-in allow-list, to match recorded or trusted strings.
_BUILTIN_DOTTED = frozenset(f"{m}.{n}" for m, n in BUILTIN_ALLOWLIST)

HOW_TO_TRUST = (
    "If you trust them, list them in trusted_types: ModelPersistence(trusted_types=[...]), "
    "the trusted_types config key, MODELKEEP_TRUSTED_TYPES, or modelkeep --trust NAME"
)
#: :data:`HOW_TO_TRUST` as the command line says it.
HOW_TO_TRUST_CLI = (
    "If you trust them, pass --trust NAME (modelkeep --trust NAME load ...), "
    "or list them in the trusted_types config key or MODELKEEP_TRUSTED_TYPES"
)


def recorded_globals(extra: Mapping[str, Any] | None) -> list[str]:
    """The globals recorded at save in a version's ``extra`` (``[]`` when none were recorded)."""
    found = (extra or {}).get(GLOBALS_KEY)
    return [str(g) for g in found] if isinstance(found, list) else []


def builtin_allows(dotted: str) -> bool:
    """Whether ``"module.qualname"`` names an entry of the built-in allow-list."""
    return dotted in _BUILTIN_DOTTED


@dataclass(frozen=True)
class TrustPolicy:
    """What one load may resolve, beyond the built-in allow-list. Immutable, one per load.

    Args:
        trusted: ``"module.qualname"`` names the user trusts (never from the store).
        recorded: the globals recorded at save, only when the version's signature verified.
        hint: recorded globals of an unsigned version, named in the error message only.
    """

    trusted: frozenset[str] = frozenset()
    recorded: frozenset[str] = frozenset()
    hint: tuple[str, ...] = field(default=())

    @classmethod
    def for_load(cls, options: Mapping[str, Any]) -> TrustPolicy:
        """The policy for a format's ``load(**options)``: ``trusted``, ``extra`` and ``signed``."""
        trusted = frozenset(str(t) for t in options.get("trusted") or ())
        recorded = recorded_globals(options.get("extra"))
        if options.get("signed"):
            return cls(trusted, frozenset(recorded))
        hint = tuple(g for g in recorded if not builtin_allows(g) and g not in trusted)
        return cls(trusted, frozenset(), hint)

    def source(self, module: str, name: str) -> str | None:
        """``"builtin"``, ``"trusted"`` or ``"signed"``: what admits ``module.name``; ``None`` if nothing."""
        if (module, name) in BUILTIN_ALLOWLIST:
            return "builtin"
        dotted = f"{module}.{name}"
        if dotted in self.trusted:
            return "trusted"
        if dotted in self.recorded:
            return "signed"
        return None

    def vouched_for(self, key: tuple[str, str]) -> bool:
        """Whether the user trusts ``module.name``, or it was recorded in a version signed by a held key:
        such globals may be called, not only named."""
        dotted = f"{key[0]}.{key[1]}"
        return dotted in self.trusted or dotted in self.recorded

    def refusal(self, module: str, name: str) -> UnsafeModelError:
        """The error for a global no source admits: names it, and says how to trust it."""
        text = (
            f"refused to load: the pickle references the global {module}.{name}, which is neither in "
            "modelkeep's built-in allow-list nor in your trusted types (possible malicious pickle). "
            f"{HOW_TO_TRUST}."
        )
        if self.hint:
            text += (
                f" The version records these globals outside the allow-list: {', '.join(self.hint)}; "
                "recorded globals are trusted only when the version is signed by a key you hold."
            )
        error = UnsafeModelError(text, cli={HOW_TO_TRUST: HOW_TO_TRUST_CLI})
        error.refused = (f"{module}.{name}",)
        return error


def _module_refusal(what: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"refused to load: the pickle global {what} is a module or reaches through one, "
        "which modelkeep never unpickles (possible malicious pickle)"
    )


def _load_from_bytes_weights_only(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without the code execution: torch's weights-only loader."""
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelError(
            f"refused to load: a torch tensor holds a nested pickle that torch's weights-only loader refused: {exc}"
        ) from exc


def _restricted_getattr(*args: Any) -> Any:
    """``getattr`` for pickles: reads only the ``(class, attribute)`` pairs in :data:`SAFE_ATTRIBUTES`."""
    if len(args) in (2, 3) and isinstance(args[1], str):
        for module, qualname, attribute in SAFE_ATTRIBUTES:
            if args[1] == attribute and args[0] is _import_attribute(module, qualname):
                return _SAFE_ATTRIBUTE_VALUES.get((module, qualname, attribute)) or getattr(*args)
    raise UnsafeModelError(
        "refused to load: the pickle calls the global builtins.getattr, which modelkeep allows only to fetch known "
        f"constructors (possible malicious pickle). {HOW_TO_TRUST} (builtins.getattr)."
    )


#: What the replacement ``getattr`` returns for each safe attribute: a version that checks its arguments.
_SAFE_ATTRIBUTE_VALUES: dict[tuple[str, str, str], Any] = {
    ("zoneinfo", "ZoneInfo", "_unpickle"): call_guards.zoneinfo_unpickle
}
#: Substitutes that may always be called (they check their own arguments).
_SAFE_SUBSTITUTES: dict[int, Any] = {id(f): f for f in _SAFE_ATTRIBUTE_VALUES.values()}

#: Globals replaced at load: always (torch), or unless the user or a signature trusts the real one.
_ALWAYS_REPLACED = {("torch.storage", "_load_from_bytes"): _load_from_bytes_weights_only}
_REPLACED_WHEN_BUILTIN = {("builtins", "getattr"): _restricted_getattr}


def _import_attribute(module: str, qualname: str) -> Any:
    """Import ``module`` and walk ``qualname``; refuse module objects on the way and at the end."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
        if isinstance(obj, types.ModuleType):
            raise _module_refusal(f"{module}.{qualname}")
    return obj


def resolve_global(policy: TrustPolicy, module: str, name: str, protocol: int = 5) -> Any:
    """What ``find_class(module, name)`` returns under ``policy``, or :class:`UnsafeModelError`."""
    return _resolve(policy, module, name, protocol)[0]


def _resolve(policy: TrustPolicy, module: str, name: str, protocol: int) -> tuple[Any, str, tuple[str, str]]:
    """``(object, source, (module, name))``: the global, what admits it, and its Python 3 spelling."""
    if protocol < 3:  # Python 2 spellings, mapped exactly as pickle's own find_class does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    source = policy.source(module, name)
    if source is None:
        raise policy.refusal(module, name)
    key = (module, name)
    if key in _ALWAYS_REPLACED:
        return _ALWAYS_REPLACED[key], source, key
    if source == "builtin" and key in _REPLACED_WHEN_BUILTIN:
        return _REPLACED_WHEN_BUILTIN[key], source, key
    try:
        return _import_attribute(module, name), source, key
    except (ImportError, AttributeError) as exc:
        raise pickle.UnpicklingError(f"cannot find {module}.{name}: {exc}{missing_global_hint(module, exc)}") from exc


def missing_global_hint(module: str, exc: Exception) -> str:
    """What to do when a trusted global cannot be found: a class saved from a script's
    ``__main__``, or a module that is not importable here."""
    if module == "__main__" or module.startswith("__main__."):
        return (
            ". The class was defined in the script that saved the model (__main__), so only that script "
            "can load it: move the class into a module (e.g. mytransformers.py) that both scripts import, "
            "and save the model again; or define (or import) the class in this script's __main__ before loading"
        )
    if isinstance(exc, ModuleNotFoundError):
        return (
            f". The module {module!r} is not importable here: install it, or run from the folder that holds it "
            "(python -m modelkeep and the modelkeep command look in the working directory; "
            "add another folder with modelkeep --path DIR or PYTHONPATH)"
        )
    return ""


#: ``__new__`` of builtin bases that runs no code of the class and ignores or stores its arguments.
_PLAIN_NEW = frozenset(id(t.__new__) for t in (object, dict, list, set, BaseException))
#: ``__new__`` of builtin bases that consume their arguments: plain only without arguments.
_EMPTY_NEW = frozenset(id(t.__new__) for t in (tuple, frozenset, int, float, complex, str, bytes))
#: Containers (and objects) may nest this deep; honest pickles cannot (the pickler recurses).
MAX_DEPTH = 10_000
#: Items the unpickler's stack may hold at once.
MAX_STACK = 10_000_000
#: Bytes charged per item added to a container.
ITEM_BYTES = 8


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}" if module else str(name)


def source_size(file: Any) -> int | None:
    """The size of a fully known source (in-memory bytes, a private map, a regular file), else ``None``."""
    if isinstance(file, io.BytesIO):  # its size without getbuffer(), which would copy shared bytes
        here = file.tell()
        size = file.seek(0, 2)
        file.seek(here)
        return size
    if isinstance(file, mmap.mmap):
        return len(file)
    if isinstance(file, (io.BufferedReader, io.FileIO)) and type(getattr(file, "raw", file)) is io.FileIO:
        try:
            st = os.fstat(file.fileno())
        except (OSError, ValueError):
            return None
        import stat

        return st.st_size if stat.S_ISREG(st.st_mode) else None
    return None


class _Policed:
    """The checks shared by modelkeep's unpicklers (pure-Python ones: the C unpickler cannot
    intercept opcodes): ``find_class`` under the policy; "may be called" apart from "may be
    named" for every opcode that calls (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``INST``, ``OBJ``);
    ``BUILD`` only on new objects; lengths, counts and nesting charged to a :class:`LoadBudget`."""

    _policy: TrustPolicy
    _fetched: dict[int, Any]
    _callables: dict[int, Any]
    _guards: dict[int, tuple[Any, ...]]
    _takes_classes: set[int]
    _depth: dict[int, int]
    budget: LoadBudget
    _size: int | None
    _source: Any
    proto: int
    stack: list[Any]
    metastack: list[Any]
    append: Any
    read: Any

    def _init_policy(self, policy: TrustPolicy | None, budget: LoadBudget | None, source: Any) -> None:
        self._policy = policy or TrustPolicy()
        self._fetched = {}
        self._callables = dict(_SAFE_SUBSTITUTES)
        self._guards = {}
        self._takes_classes = set()
        self._depth = {}
        self._state_checks: dict[int, Any] = {}
        self._frame: Any = None
        self._frame_size = 0
        self._source = source
        self._size = source_size(source)
        self.budget = budget or LoadBudget.for_artifact(self._size)

    # -- naming ---------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        obj, _source, key = _resolve(self._policy, module, name, self.proto)
        oid = id(obj)
        self._fetched[oid] = obj  # kept alive, so the id stays unique
        if key in CALLABLE_ALLOWLIST or self._policy.vouched_for(key):
            self._callables[oid] = obj  # trusted and signed globals: the user vouched for them
        guards = []
        guard = call_guards.GUARDS.get(key)
        if guard is not None:
            guards.append(guard)
        if key[0] == "pandas" or key[0].startswith("pandas."):
            where = f"{key[0]}.{key[1]}"
            guards.append(lambda ctx, args, kwargs: call_guards.pandas_call(ctx, where, args, kwargs))
        if guards:
            self._guards[oid] = (*self._guards.get(oid, ()), *guards)
        if key in call_guards.TAKES_CLASSES:
            self._takes_classes.add(oid)
        if oid not in self._state_checks:
            self._state_checks[oid] = state_checks.call_check_for(obj)
        return obj

    # -- calling --------------------------------------------------------------------------------

    def _not_callable(self, func: Any, role: str) -> UnsafeModelError:
        if id(func) in self._fetched:
            return UnsafeModelError(
                f"refused to load: the pickle calls {_describe(func)} ({role}), which it may name as a value but "
                "not call: only modelkeep's reviewed reconstructors and data classes may be called while loading "
                f"(possible malicious pickle). {HOW_TO_TRUST} ({_describe(func)})."
            )
        return UnsafeModelError(
            f"refused to load: the pickle calls {type(func).__name__} object {_describe(func)} ({role}), which was "
            "not fetched as an allowed global (possible malicious pickle)"
        )

    def require_callable(self, obj: Any, role: str) -> None:
        """Refuse ``obj`` unless it may be called (:data:`CALLABLE_ALLOWLIST`, trusted or signed)."""
        if id(obj) not in self._callables:
            raise self._not_callable(obj, role)

    def require_new(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], role: str) -> None:
        """Refuse ``cls.__new__(cls, *args, **kwargs)`` unless ``cls`` is an allowed class whose
        ``__new__`` runs no code of its own, or a callable one (whose guard then checks the arguments)."""
        self._check_call(cls, args, kwargs, role, new=True)

    def _check_call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], role: str, *, new: bool) -> None:
        fid = id(func)
        if fid not in self._callables:
            plain = (
                new
                and isinstance(func, type)
                and fid in self._fetched
                and (id(func.__new__) in _PLAIN_NEW or (id(func.__new__) in _EMPTY_NEW and not args and not kwargs))
            )
            if not plain:
                raise self._not_callable(func, role)
        takes_classes = fid in self._takes_classes
        fetched = self._fetched
        for value in (*args, *kwargs.values()) if kwargs else args:
            kind = type(value)
            if kind in _LEAVES:
                continue
            vid = id(value)
            if vid in fetched and vid not in self._callables and callable(value):
                if takes_classes and isinstance(value, type):
                    continue  # the guard checks it, as NEWOBJ would
                raise UnsafeModelError(
                    f"refused to load: the pickle passes {_describe(value)}, which it may name but not call, to "
                    f"{_describe(func)}, which may call it (possible malicious pickle)"
                )
            if kind is range or kind.__name__ == "RangeIndex" or (kind in _SEQUENCES and _holds_lazy(value)):
                call_guards.charge_lazy(self, (value,), _describe(func))
        for guard in self._guards.get(fid, ()):
            guard(self, args, kwargs)
        check = self._state_checks.get(fid, _UNKNOWN)
        if check is _UNKNOWN:  # not fetched by name (what a trusted getattr returned)
            state_checks.check_call(func, args)
        elif check is not None:
            check(func, args)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_call(func, tuple(args) if isinstance(args, tuple) else args, {}, "REDUCE", new=False)
        value = func(*args)
        if func is getattr:  # the real one: the user trusts it, so what it fetches may be called
            self._callables[id(value)] = value
            self._fetched[id(value)] = value
        stack[-1] = value

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, {}, "NEWOBJ", new=True)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, kwargs, "NEWOBJ_EX", new=True)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        """``INST`` and ``OBJ``: a call when there are arguments, else ``klass.__new__(klass)``."""
        call = bool(args) or not isinstance(klass, type) or hasattr(klass, "__getinitargs__")
        self._check_call(klass, tuple(args), {}, "INST/OBJ", new=not call)
        try:
            value = klass(*args) if call else klass.__new__(klass)
        except TypeError as err:
            raise TypeError(f"in constructor for {klass.__name__}: {err}", err.__traceback__) from err
        self.append(value)

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")  # type: ignore[attr-defined]
        name = self.readline()[:-1].decode("ascii")  # type: ignore[attr-defined]
        klass = self.find_class(module, name)
        self._instantiate(klass, self.pop_mark())  # type: ignore[attr-defined]

    def load_obj(self) -> None:
        args = self.pop_mark()  # type: ignore[attr-defined]
        cls = args.pop(0)
        self._instantiate(cls, args)

    # -- building -------------------------------------------------------------------------------

    def _check_build(self) -> None:
        """Refuse ``BUILD`` on a class, a module or anything fetched by name: setting the state
        of those would patch code for the rest of the process, not build a new object."""
        if len(self.stack) < 2:
            return
        target = self.stack[-2]
        state = self.stack[-1]
        if isinstance(target, (type, types.ModuleType)) or id(target) in self._fetched:
            raise UnsafeModelError(
                f"refused to load: the pickle sets the state of {getattr(target, '__name__', type(target).__name__)}, "
                "a class, module or global rather than a new object (possible malicious pickle)"
            )
        kind = type(target)
        family = _FAMILY.get(kind)
        if family is None:
            module = kind.__module__ or ""
            family = _FAMILY[kind] = (
                "numpy" if module.startswith("numpy") else "pandas" if module.startswith("pandas") else ""
            )
        if family == "numpy" and type(state) is tuple and len(state) == 5:
            self._charge_array_state(state)
        elif family == "pandas":
            call_guards.check_pandas_strings((state,), f"the state of a {kind.__name__}")
        if type(state) not in _LEAVES:
            self._nest(target, (state,))
        state_checks.check_build(target, state)

    def _charge_array_state(self, state: tuple[Any, ...]) -> None:
        """``ndarray.__setstate__`` allocates ``shape`` before it checks an object array's list."""
        dtype = state[2]
        if getattr(dtype, "hasobject", False):
            call_guards.charge_array(self, state[1], dtype, "an object array's state")

    def load_build(self) -> None:
        self._check_build()
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    # -- bounded lengths, containers and nesting -----------------------------------------------

    def _remaining(self) -> int | None:
        """Bytes left in the artifact after the read position (``None`` if the source is a stream)."""
        frame = self._unframer.current_frame  # type: ignore[attr-defined]
        if frame is not None:
            if frame is not self._frame:  # a new frame: its size, without copying it (getbuffer would)
                here = frame.tell()
                self._frame, self._frame_size = frame, frame.seek(0, 2)
                frame.seek(here)
            left = self._frame_size - frame.tell()
            if left:
                return left  # an exhausted frame falls through to the file, as pickle reads
        return self._file_remaining()

    def _file_remaining(self) -> int | None:
        if self._size is None:
            return None
        try:
            return self._size - self._source.tell()
        except (OSError, ValueError, AttributeError):
            return None

    def _claim(self, size: int, opcode: str, *, unframed: bool = False) -> None:
        """Before reading ``size`` bytes that ``opcode`` announces: are they there, and affordable?"""
        left = self._file_remaining() if unframed else self._remaining()
        if left is not None and size > left:
            raise UnsafeModelError(
                f"refused to load: a {opcode} claims {size} bytes but only {left} remain in the artifact "
                "(truncated or malicious pickle)"
            )
        budget = self.budget
        if size > budget.limit - budget.used:
            raise budget.refusal(size, f"a {opcode} of {size} bytes")
        budget.used += size

    def _read_length(self, fmt: struct.Struct, opcode: str) -> int:
        (size,) = fmt.unpack(self.read(fmt.size))
        if size < 0 or size > sys.maxsize:
            raise pickle.UnpicklingError(f"{opcode} has a negative or excessive byte count")
        self._claim(size, opcode)
        return int(size)

    def load_binbytes(self) -> None:
        self.append(self.read(self._read_length(_U32, "BINBYTES opcode")))

    def load_binbytes8(self) -> None:
        self.append(self.read(self._read_length(_U64, "BINBYTES8 opcode")))

    def load_binunicode(self) -> None:
        self.append(str(self.read(self._read_length(_U32, "BINUNICODE opcode")), "utf-8", "surrogatepass"))

    def load_binunicode8(self) -> None:
        self.append(str(self.read(self._read_length(_U64, "BINUNICODE8 opcode")), "utf-8", "surrogatepass"))

    def load_binstring(self) -> None:
        data = self.read(self._read_length(_I32, "BINSTRING opcode"))
        self.append(self._decode_string(data))  # type: ignore[attr-defined]

    def load_long4(self) -> None:
        data = self.read(self._read_length(_I32, "LONG4 opcode"))
        self.append(pickle.decode_long(data))

    def load_frame(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if size > sys.maxsize:
            raise ValueError(f"frame size > sys.maxsize: {size}")
        unframer = self._unframer  # type: ignore[attr-defined]
        if unframer.current_frame and unframer.current_frame.read() != b"":
            raise pickle.UnpicklingError("beginning of a new frame before end of current frame")
        unframer.current_frame = None
        left = None if self._size is None else self._remaining()
        if left is not None and size > left:
            raise UnsafeModelError(
                f"refused to load: a FRAME opcode claims {size} bytes but only {left} remain in the artifact "
                "(truncated or malicious pickle)"
            )
        self.budget.check(size, f"a FRAME of {size} bytes")
        unframer.load_frame(size)

    def load_bytearray8(self) -> None:
        size = self._read_length(_U64, "BYTEARRAY8 opcode")
        data = bytearray(size)
        self.readinto(data)  # type: ignore[attr-defined]
        self.append(data)

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_DEPTH or len(self.stack) >= MAX_STACK:
            raise self._too_deep()
        self.metastack.append(self.stack)
        self.stack = []
        self.append = self.stack.append

    def _too_deep(self) -> UnsafeModelError:
        return UnsafeModelError(
            f"refused to load: the pickle nests containers or objects more than {MAX_DEPTH} deep, or holds more than "
            f"{MAX_STACK} items at once; no pickler writes that (possible malicious pickle)"
        )

    def _nest(self, container: Any, items: Any) -> None:
        """Record how deep ``container`` nests now that it holds ``items`` (refused past MAX_DEPTH).

        Depths are kept by ``id`` only, without keeping the objects alive (that would keep every
        temporary of the load in memory). An id reused after its object died can only make a
        depth look larger, by at most the depth of what honestly came before: never smaller."""
        depth = self._depth
        deepest = 0
        for item in items:
            kind = type(item)
            if kind in _LEAVES:
                continue
            found = depth.get(id(item), 0)
            if found > deepest:
                deepest = found
            elif deepest == 0 and kind in _CONTAINERS:
                deepest = 1
        if deepest:
            if deepest >= MAX_DEPTH:
                raise self._too_deep()
            if depth.get(id(container), 0) <= deepest:
                depth[id(container)] = deepest + 1

    def load_appends(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        budget = self.budget
        if ITEM_BYTES * len(items) > budget.limit - budget.used:
            raise budget.refusal(ITEM_BYTES * len(items), "the items of a list")
        budget.used += ITEM_BYTES * len(items)
        target = self.stack[-1]
        self._nest(target, items)
        extend = getattr(target, "extend", None)
        if extend is not None:
            extend(items)
            return
        append = target.append
        for item in items:
            append(item)

    def load_append(self) -> None:
        value = self.stack[-1]
        self._nest(self.stack[-2], (value,))
        pickle._Unpickler.load_append(self)  # type: ignore[attr-defined]

    def load_setitems(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        budget = self.budget
        if ITEM_BYTES * len(items) > budget.limit - budget.used:
            raise budget.refusal(ITEM_BYTES * len(items), "the items of a dict")
        budget.used += ITEM_BYTES * len(items)
        target = self.stack[-1]
        self._nest(target, items[1::2])  # keys nest only through tuples, counted when built
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_setitem(self) -> None:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._nest(stack[-1], (value,))
        stack[-1][key] = value

    def load_additems(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        budget = self.budget
        if ITEM_BYTES * len(items) > budget.limit - budget.used:
            raise budget.refusal(ITEM_BYTES * len(items), "the items of a set")
        budget.used += ITEM_BYTES * len(items)
        target = self.stack[-1]
        self._nest(target, items)
        if isinstance(target, set):
            target.update(items)
        else:
            add = target.add
            for item in items:
                add(item)

    def load_tuple(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        value = tuple(items)
        self._nest(value, items)
        self.append(value)

    # TUPLE1-3 and the calls run for nearly every object: their checks skip plain values inline.

    def load_tuple1(self) -> None:
        self.stack[-1] = value = (self.stack[-1],)
        if type(value[0]) not in _LEAVES:
            self._nest(value, value)

    def load_tuple2(self) -> None:
        stack = self.stack
        value = (stack[-2], stack[-1])
        stack[-2:] = [value]
        if type(value[0]) not in _LEAVES or type(value[1]) not in _LEAVES:
            self._nest(value, value)

    def load_tuple3(self) -> None:
        stack = self.stack
        value = (stack[-3], stack[-2], stack[-1])
        stack[-3:] = [value]
        if type(value[0]) not in _LEAVES or type(value[1]) not in _LEAVES or type(value[2]) not in _LEAVES:
            self._nest(value, value)

    def load_list(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        self._nest(items, items)
        self.append(items)

    def load_dict(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        value = {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        self._nest(value, items)
        self.append(value)

    def load_frozenset(self) -> None:
        items = self.pop_mark()  # type: ignore[attr-defined]
        value = frozenset(items)
        self._nest(value, items)
        self.append(value)

    def load_empty_list(self) -> None:
        if len(self.stack) >= MAX_STACK:
            raise self._too_deep()
        self.append([])

    def load_empty_dictionary(self) -> None:
        if len(self.stack) >= MAX_STACK:
            raise self._too_deep()
        self.append({})

    @classmethod
    def _install(cls, dispatch: dict[int, Any], base: type) -> None:
        """Point ``dispatch`` (a copy of the pickle table) at the checked handlers of ``base``."""
        for opcode, name in _CHECKED_OPCODES.items():
            dispatch[opcode[0]] = getattr(base, name)


_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})
_U32, _U64, _I32 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<i")
_UNKNOWN = object()
#: Per type of a BUILD target: "numpy", "pandas" or "" (which state checks apply).
_FAMILY: dict[type, str] = {}
#: Values that hold nothing and cannot be called: skipped by the per-item checks.
_LEAVES = frozenset({int, float, str, bytes, bool, type(None), complex, bytearray})
#: Arguments that may hold a lazy sequence.
_SEQUENCES = frozenset({dict, list, tuple})


def _holds_lazy(value: Any) -> bool:
    """Whether a list, tuple or dict argument holds a ``range`` or ``RangeIndex`` among its first items."""
    items = list(value.values())[:64] if type(value) is dict else value[:64]
    for item in items:
        kind = type(item)
        if kind is range or (kind not in _LEAVES and kind.__name__ == "RangeIndex"):
            return True
    return False


#: Opcode -> name of the checked handler on :class:`_Policed`.
_CHECKED_OPCODES = {
    pickle.REDUCE: "load_reduce",
    pickle.NEWOBJ: "load_newobj",
    pickle.NEWOBJ_EX: "load_newobj_ex",
    pickle.INST: "load_inst",
    pickle.OBJ: "load_obj",
    pickle.BUILD: "load_build",
    pickle.BINBYTES: "load_binbytes",
    pickle.BINBYTES8: "load_binbytes8",
    pickle.BINUNICODE: "load_binunicode",
    pickle.BINUNICODE8: "load_binunicode8",
    pickle.BINSTRING: "load_binstring",
    pickle.LONG4: "load_long4",
    pickle.FRAME: "load_frame",
    pickle.MARK: "load_mark",
    pickle.APPENDS: "load_appends",
    pickle.APPEND: "load_append",
    pickle.SETITEMS: "load_setitems",
    pickle.SETITEM: "load_setitem",
    pickle.ADDITEMS: "load_additems",
    pickle.TUPLE: "load_tuple",
    pickle.TUPLE1: "load_tuple1",
    pickle.TUPLE2: "load_tuple2",
    pickle.TUPLE3: "load_tuple3",
    pickle.LIST: "load_list",
    pickle.DICT: "load_dict",
    pickle.FROZENSET: "load_frozenset",
    pickle.EMPTY_LIST: "load_empty_list",
    pickle.EMPTY_DICT: "load_empty_dictionary",
    pickle.BYTEARRAY8: "load_bytearray8",
}


class RestrictedUnpickler(_Policed, pickle._Unpickler):
    """A pure-Python ``pickle`` unpickler that resolves globals only under ``policy``, calls only
    what may be called, and allocates within ``budget`` (by default sized from ``file``)."""

    dispatch = pickle._Unpickler.dispatch.copy()
    # set by pickle._Unpickler.load(); declared for the type checker
    read: Any
    append: Any
    _unframer: Any

    def __init__(
        self, file: Any, *, policy: TrustPolicy | None = None, budget: LoadBudget | None = None, **kwargs: Any
    ) -> None:
        super().__init__(file, **kwargs)
        self._init_policy(policy, budget, file)
        self._file_readinto = getattr(file, "readinto", None) or self._read_into_copy
        self._file = file

    def _read_into_copy(self, view: memoryview) -> int:
        chunk = self._file.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def load_bytearray8(self) -> None:
        """Protocol 5 in-band buffers (numpy arrays): checked against the bytes left, then read
        straight into the bytearray, as the C unpickler does, instead of reading bytes and copying them."""
        size = self._read_length(_U64, "BYTEARRAY8 opcode")
        data = bytearray(size)
        unframer, got = self._unframer, 0
        if unframer.current_frame:  # small buffers sit inside a frame
            got = unframer.current_frame.readinto(data)
            if got == 0 and size:
                unframer.current_frame = None  # the frame is used up: the buffer follows it
            elif got < size:
                raise pickle.UnpicklingError("pickle exhausted before end of frame")
        if got == 0 and size:  # read from the file, in place (large buffers are written unframed)
            view = memoryview(data)
            while got < size:
                n = self._file_readinto(view[got:])
                if not n:
                    break
                got += n
        if got != size:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(data)


_Policed._install(RestrictedUnpickler.dispatch, RestrictedUnpickler)


def restricted_loads(data: bytes, policy: TrustPolicy | None = None, budget: LoadBudget | None = None) -> Any:
    """Unpickle ``data`` under ``policy`` (the built-in allow-list alone by default) and
    ``budget`` (by default ``max(256 MiB, 32 x len(data))``)."""
    return RestrictedUnpickler(io.BytesIO(data), policy=policy, budget=budget).load()


def warn_untrusted_globals(extra: Mapping[str, Any] | None, trusted: Iterable[str], where: str) -> list[str]:
    """At save: log one warning naming the recorded globals that a reader without the
    signing key could not load (outside the built-in allow-list and ``trusted``); return them."""
    trusted_set = set(trusted)
    outside = [g for g in recorded_globals(extra) if not builtin_allows(g) and g not in trusted_set]
    if outside:
        logger.warning(
            "%s uses globals outside modelkeep's built-in allow-list: %s. A reader without your signing key "
            "must trust them (trusted_types / MODELKEEP_TRUSTED_TYPES / --trust) to load it",
            where,
            ", ".join(outside),
        )
    return outside


# -- recording the globals of a pickle stream -------------------------------------------------

_OPS = {op.name: op.code.encode("latin-1")[0] for op in pickletools.opcodes}
_NEWLINE, _LEN1, _LEN4, _LEN4U, _LEN8U, _INVALID = -1, -2, -3, -4, -5, -9
_HEADER = {_LEN1: 1, _LEN4: 4, _LEN4U: 4, _LEN8U: 8}
#: Per opcode byte: the size of its fixed argument, or one of the negative markers above.
_SIZE = [_INVALID] * 256
for _op in pickletools.opcodes:
    _SIZE[_OPS[_op.name]] = 0 if _op.arg is None else _op.arg.n
# What an opcode does to the little the scanner tracks (the top two stack values and the memo).
_PUSH, _NEUTRAL, _STRING, _MEMOIZE, _PUT, _GET, _STACK_GLOBAL, _EXT, _STOP, _GLOBAL = range(10)
_KIND = [_PUSH] * 256
for _name, _kind in {
    "FRAME": _NEUTRAL,
    "PROTO": _NEUTRAL,
    "SHORT_BINUNICODE": _STRING,
    "BINUNICODE": _STRING,
    "BINUNICODE8": _STRING,
    "MEMOIZE": _MEMOIZE,
    "PUT": _PUT,
    "BINPUT": _PUT,
    "LONG_BINPUT": _PUT,
    "GET": _GET,
    "BINGET": _GET,
    "LONG_BINGET": _GET,
    "STACK_GLOBAL": _STACK_GLOBAL,
    "EXT1": _EXT,
    "EXT2": _EXT,
    "EXT4": _EXT,
    "STOP": _STOP,
    "GLOBAL": _GLOBAL,
    "INST": _GLOBAL,
}.items():
    _KIND[_OPS[_name]] = _kind
#: Strings longer than this are skipped, not kept: no module or name is this long.
_MAX_NAME_BYTES = 1 << 12


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


class GlobalsScanner:
    """Collect the globals a pickle stream references, fed incrementally as it is written.

    It walks the opcodes without building any object, keeping only what
    ``STACK_GLOBAL`` needs: the top two stack values when they are strings,
    and the strings in the memo (the pickler writes ``BINGET n`` for a module
    name it already wrote). Large payloads (array bytes) are skipped, never
    buffered. ``complete`` turns false if a global could not be resolved;
    callers then record nothing rather than a wrong set.
    """

    def __init__(self) -> None:
        self.found: set[str] = set()
        self.complete = True
        self._pending = b""
        self._skip = 0
        self._memo: dict[int, bytes | None] = {}
        self._below: bytes | None = None
        self._top: bytes | None = None

    def feed(self, data: Any) -> None:
        """Scan the next bytes of the stream."""
        view = memoryview(data).cast("B")
        end = len(view)
        pos = 0
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
            elif self._pending:
                take = min(end - pos, 1 << 16)
                buf = self._pending + bytes(view[pos : pos + take])
                stop = self._parse(buf, 0, len(buf))
                self._pending = buf[stop:]
                pos += take
            else:
                stop = self._parse(view, pos, end)
                self._pending = bytes(view[stop:end])
                pos = end

    @property
    def globals(self) -> list[str] | None:
        """The sorted ``"module.name"`` globals, or ``None`` if the scan was incomplete."""
        if not self.complete or self._pending or self._skip:
            return None
        return sorted(self.found)

    def _parse(self, buf: Any, pos: int, end: int) -> int:
        """Handle every complete opcode in ``buf[pos:end]``; return where the incomplete tail starts."""
        sizes, kinds, memo = _SIZE, _KIND, self._memo
        below, top = self._below, self._top
        while pos < end:
            code = buf[pos]
            kind = kinds[code]
            size = sizes[code]
            if size >= 0:
                nxt = pos + 1 + size
                if nxt > end:
                    break
                if kind == _PUSH:
                    below, top = top, None
                elif kind == _MEMOIZE:
                    memo[len(memo)] = top
                elif kind == _PUT:
                    memo[int.from_bytes(buf[pos + 1 : nxt], "little")] = top
                elif kind == _GET:
                    below, top = top, memo.get(int.from_bytes(buf[pos + 1 : nxt], "little"))
                elif kind == _STACK_GLOBAL:
                    if below is None or top is None:
                        self.complete = False
                    else:
                        self.found.add(f"{_text(below)}.{_text(top)}")
                    below = top = None
                elif kind == _EXT:
                    key = copyreg._inverted_registry.get(int.from_bytes(buf[pos + 1 : nxt], "little", signed=True))  # type: ignore[attr-defined]
                    if key is None:
                        self.complete = False
                    else:
                        self.found.add(f"{key[0]}.{key[1]}")
                    below, top = top, None
                elif kind == _STOP:
                    memo.clear()
                    below = top = None
                pos = nxt
            elif size < _NEWLINE and size != _INVALID:
                header = _HEADER[size]
                body = pos + 1 + header
                if body > end:
                    break
                length = int.from_bytes(buf[pos + 1 : body], "little", signed=size == _LEN4)
                if kind == _STRING and length <= _MAX_NAME_BYTES:
                    if body + length > end:
                        break
                    below, top = top, bytes(buf[body : body + length])
                    pos = body + length
                    continue
                below, top = top, None
                if body + length > end:  # a large payload: skip it as it streams past
                    self._skip = body + length - end
                    pos = end
                    break
                pos = body + length
            elif size == _NEWLINE:
                cursor = pos + 1
                lines: list[bytes] = []
                for _ in range(2 if kind == _GLOBAL else 1):
                    nl = bytes(buf[cursor:end]).find(b"\n")
                    if nl < 0:
                        break
                    lines.append(bytes(buf[cursor : cursor + nl]))
                    cursor += nl + 1
                else:
                    pos = cursor
                    if kind == _GLOBAL:
                        self.found.add(f"{lines[0].decode('latin-1')}.{lines[1].decode('latin-1')}")
                        below, top = top, None
                    elif kind == _GET:
                        below, top = top, memo.get(int(lines[0]))
                    elif kind == _PUT:
                        memo[int(lines[0])] = top
                    else:
                        below, top = top, None
                    continue
                break  # the line is not complete yet
            else:
                self.complete = False  # not a pickle opcode: stop trusting the scan
                pos = end
                break
        self._below, self._top = below, top
        return pos


class ScanningWriter:
    """A write-through wrapper that feeds every byte to a :class:`GlobalsScanner`."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.scanner = GlobalsScanner()

    def write(self, data: Any) -> int:
        self.scanner.feed(data)
        written: int = self._target.write(data)
        return written


def scan_pickle_globals(data: bytes) -> list[str] | None:
    """The sorted globals a complete pickle in ``data`` references (``None`` if unresolvable)."""
    scanner = GlobalsScanner()
    scanner.feed(data)
    return scanner.globals


_recording: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("modelkeep_record", default=None)


@functools.cache
def _recording_pickler() -> type[Any]:
    """joblib's pickler, subclassed to record the globals it writes (joblib itself is left alone).

    joblib writes array bytes straight into the stream between pickle opcodes,
    so its output cannot be scanned as a plain pickle. Its pickler is the
    pure-Python one, though: the subclass captures the two strings each
    ``save_global`` call writes (module and name, exactly as ``find_class``
    will see them). Object arrays, which joblib pickles as a nested stream with
    the C pickler, are scanned with :func:`scan_pickle_globals`. Recording is
    only active inside :func:`recording_joblib_globals`. modelkeep's saves use this class
    directly (:func:`joblib_dump`); ``joblib.numpy_pickle.NumpyPickler`` stays joblib's own, so
    the user's own ``joblib.dump`` calls are untouched.
    """
    from joblib import numpy_pickle

    base = numpy_pickle.NumpyPickler

    class _RecordingNumpyPickler(base):  # type: ignore[valid-type, misc]
        dispatch = base.dispatch.copy()
        _mk_names: list[str] | None = None

        def save(self, obj: Any, *args: Any) -> None:
            # Most objects are neither arrays nor strings: straight to the pure-Python pickler's
            # save (what joblib's NumpyPickler.save calls for them), one frame and no lookups
            # fewer per object (~10,000 in a 100-tree forest: ~8 ms of a save's 70 ms thread).
            kind = type(obj)
            np = self.np
            if kind is str and self._mk_names is not None:  # only set while recording, in save_global
                self._mk_names.append(obj)
            if np is None or kind not in (np.ndarray, np.matrix, np.memmap):
                pickle._Pickler.save(self, obj, *args)  # type: ignore[attr-defined]
                return
            found = _recording.get()
            if found is None:
                base.save(self, obj, *args)
                return
            if kind in (np.ndarray, np.matrix) and obj.dtype.hasobject:
                nested = scan_pickle_globals(pickle.dumps(obj, protocol=5))  # what joblib writes
                if nested is None:
                    raise pickle.PicklingError("cannot record the globals of an object array")
                found.update(nested)
            marker = getattr(self.file_handle, "payload", None)
            if marker is None or kind not in (np.ndarray, np.memmap) or obj.dtype.hasobject:
                base.save(self, obj, *args)
                return
            # joblib's own branch for arrays (NumpyPickler.save), with the raw bytes marked as a
            # payload: a load reads them into the array's own memory, or maps them, unparsed.
            obj = np.asanyarray(obj) if kind is np.memmap else obj
            wrapper = self._create_array_wrapper(obj)
            pickle._Pickler.save(self, wrapper)  # type: ignore[attr-defined]
            if self.proto >= 4:
                self.framer.commit_frame(force=True)
            with marker(obj.nbytes):
                wrapper.write_array(obj, self)

        def save_global(self, obj: Any, name: str | None = None) -> None:
            found = _recording.get()
            if found is None:
                base.save_global(self, obj, name)
                return
            outer, self._mk_names = self._mk_names, []
            try:
                base.save_global(self, obj, name)
                written = self._mk_names
            finally:
                self._mk_names = outer
            if len(written) >= 2:
                found.add(f"{written[-2]}.{written[-1]}")
            else:  # protocol < 4 or an extension code: the pickler resolved the name itself
                qualname = name or getattr(obj, "__qualname__", None) or obj.__name__
                found.add(f"{pickle.whichmodule(obj, qualname)}.{qualname}")  # type: ignore[attr-defined]

        dispatch[types.FunctionType] = save_global

    return _RecordingNumpyPickler


def joblib_dump(obj: Any, file: Any, compress: tuple[str, int] | None = None) -> None:
    """``joblib.dump(obj, file, compress=compress)`` through the recording pickler: the same
    bytes joblib writes (``joblib.load`` reads them), and the globals recorded when inside
    :func:`recording_joblib_globals`."""
    from joblib import numpy_pickle

    pickler = _recording_pickler()
    if compress is None:
        pickler(file, protocol=None).dump(obj)
        return
    with numpy_pickle._write_fileobject(file, compress=compress) as out:
        pickler(out, protocol=None).dump(obj)


@contextlib.contextmanager
def recording_joblib_globals() -> Iterator[set[str]]:
    """Within this block, :func:`joblib_dump` adds every global it writes to the yielded set."""
    found: set[str] = set()
    token = _recording.set(found)
    try:
        yield found
    finally:
        _recording.reset(token)


# -- joblib loading ------------------------------------------------------------------------


@functools.cache
def _joblib_unpickler() -> type[Any]:
    """joblib's unpickler with the policy's checks, including the object arrays that joblib
    stores as a nested pickle (read here with :class:`RestrictedUnpickler`, not plain pickle)."""
    from joblib import numpy_pickle

    base = numpy_pickle.NumpyUnpickler

    class PolicedNumpyUnpickler(_Policed, base):  # type: ignore[valid-type, misc]
        dispatch = base.dispatch.copy()

        def __init__(
            self,
            *args: Any,
            policy: TrustPolicy,
            verified: Any = None,
            map_mode: str | None = None,
            budget: LoadBudget | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self._init_policy(policy, budget, self.file_handle)
            self._verified = verified
            self._map_mode = map_mode

        def load_build(self) -> None:
            self._check_build()
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            wrapper = self.stack[-1]
            if type(wrapper) is not numpy_pickle.NumpyArrayWrapper:
                return
            payload = self._verified.ranges.get(self.file_handle.tell()) if self._verified is not None else None
            if wrapper.dtype.hasobject:
                nested = RestrictedUnpickler(self.file_handle, policy=self._policy, budget=self.budget)
                self.stack[-1] = nested.load()
            elif payload is not None:
                self.stack[-1] = self._payload_array(wrapper, payload)
            else:
                nbytes = math.prod(int(n) for n in wrapper.shape) * wrapper.dtype.itemsize
                self._claim(nbytes, "joblib array", unframed=True)
                self.stack[-1] = wrapper.read(self, self.ensure_native_byte_order)

        def _payload_array(self, wrapper: Any, payload: tuple[int, int, int]) -> Any:
            """The array whose raw bytes are the payload ``(start, data_start, end)``: its own
            verified buffer, or a map of the open file (no bytes parsed, none copied)."""
            np = self.np
            start, data_start, end = payload
            shape = tuple(int(n) for n in wrapper.shape)
            count = int(np.prod(shape, dtype=np.int64))
            if count * wrapper.dtype.itemsize != end - data_start or wrapper.order not in ("C", "F"):
                raise UnsafeModelError(f"refused to load: the array at byte {start} does not match its recorded range")
            if self._verified.mapped is not None:
                array = np.memmap(
                    self._verified.mapped,
                    dtype=wrapper.dtype,
                    mode=self._map_mode or "r",
                    offset=data_start,
                    shape=shape,
                    order=wrapper.order,
                )
                if array.dtype.kind not in "fc":
                    # Only float and complex numbers stay mapped. Integer, boolean and structured
                    # arrays can be indices that native code trusts (a KD-tree's idx_array): a
                    # write to the file after the load must not move them out of range behind the
                    # state checks, so they are copied into private memory here, before the
                    # checks run on them (formats/state_checks.py).
                    self._claim(array.nbytes, "mapped index-like array", unframed=True)
                    array = np.array(array, order="K")
            else:
                flat = np.frombuffer(self._verified.buffers[start], dtype=wrapper.dtype, count=count)
                array = flat.reshape(shape[::-1]).T if wrapper.order == "F" else flat.reshape(shape)
                if self.ensure_native_byte_order:
                    array = numpy_pickle._ensure_native_byte_order(array)
            self.file_handle.seek(end)
            return array

    _Policed._install(PolicedNumpyUnpickler.dispatch, PolicedNumpyUnpickler)
    return PolicedNumpyUnpickler


def joblib_load(
    source: Any,
    policy: TrustPolicy,
    mmap_mode: str | None = None,
    *,
    verified: Any = None,
    map_mode: str | None = None,
    budget: LoadBudget | None = None,
) -> Any:
    """``joblib.load(source, mmap_mode)`` under ``policy``; ``source`` is a path or a file object.

    ``verified`` (a :class:`~modelkeep.storage.hashing.VerifiedArtifact`) supplies the arrays
    whose bytes are payload ranges: from their own buffers, or mapped (``map_mode``) from the
    open artifact. ``budget`` bounds what the load allocates (by default from the file's size);
    joblib's own compressed streams are read through a :class:`BoundedReader`."""
    from joblib import numpy_pickle

    cls = _joblib_unpickler()
    native_order = mmap_mode is None and map_mode is None
    with contextlib.ExitStack() as stack:
        if hasattr(source, "read"):
            filename = getattr(source, "name", "")
            fobj = source
        else:
            filename = str(source)
            fobj = stack.enter_context(open(filename, "rb"))
        opened = fobj
        fobj, mmap_mode = stack.enter_context(numpy_pickle._validate_fileobject_and_memmap(fobj, filename, mmap_mode))
        if isinstance(fobj, str):
            raise UnsafeModelError(
                "refused to load: a joblib file from before joblib 0.10 (its arrays live in side files)"
            )
        if not isinstance(filename, str):
            filename = ""
        if budget is None:
            budget = LoadBudget.for_artifact(
                source_size(source) if hasattr(source, "read") else os.path.getsize(source)
            )
        if fobj is not opened:  # one of joblib's decompressors: bound what it may produce
            fobj = io.BufferedReader(BoundedReader(fobj, budget, "a joblib-compressed artifact"), 1 << 20)
        unpickler = cls(
            filename,
            fobj,
            native_order,
            mmap_mode=mmap_mode,
            policy=policy,
            verified=verified,
            map_mode=map_mode,
            budget=budget,
        )
        return unpickler.load()
