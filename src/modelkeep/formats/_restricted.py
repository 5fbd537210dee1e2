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
import pickle
import pickletools
import struct
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsafeModelError
from . import state_checks
from .allowlist import BUILTIN_ALLOWLIST

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
                return getattr(*args)
    raise UnsafeModelError(
        "refused to load: the pickle calls the global builtins.getattr, which modelkeep allows only to fetch known "
        f"constructors (possible malicious pickle). {HOW_TO_TRUST} (builtins.getattr)."
    )


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
        return _ALWAYS_REPLACED[key]
    if source == "builtin" and key in _REPLACED_WHEN_BUILTIN:
        return _REPLACED_WHEN_BUILTIN[key]
    try:
        return _import_attribute(module, name)
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


class _Policed:
    """``find_class`` and ``BUILD`` checks shared by modelkeep's unpicklers (pure-Python ones:
    the C unpickler cannot intercept ``BUILD``)."""

    _policy: TrustPolicy
    _fetched: dict[int, Any]
    proto: int
    stack: list[Any]

    def find_class(self, module: str, name: str) -> Any:
        obj = resolve_global(self._policy, module, name, self.proto)
        self._fetched[id(obj)] = obj  # kept alive, so the id stays unique
        return obj

    def _check_build(self) -> None:
        """Refuse ``BUILD`` on a class, a module or anything fetched by name: setting the state
        of those would patch code for the rest of the process, not build a new object."""
        if len(self.stack) < 2:
            return
        target = self.stack[-2]
        if isinstance(target, (type, types.ModuleType)) or id(target) in self._fetched:
            raise UnsafeModelError(
                f"refused to load: the pickle sets the state of {getattr(target, '__name__', type(target).__name__)}, "
                "a class, module or global rather than a new object (possible malicious pickle)"
            )
        state_checks.check_build(target, self.stack[-1])


class RestrictedUnpickler(_Policed, pickle._Unpickler):
    """A pure-Python ``pickle`` unpickler that resolves globals only under ``policy``."""

    dispatch = pickle._Unpickler.dispatch.copy()
    # set by pickle._Unpickler.load(); declared for the type checker
    read: Any
    append: Any
    _unframer: Any

    def __init__(self, file: Any, *, policy: TrustPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._policy = policy or TrustPolicy()
        self._fetched = {}
        self._file_readinto = getattr(file, "readinto", None) or self._read_into_copy
        self._file = file

    def _read_into_copy(self, view: memoryview) -> int:
        chunk = self._file.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def load_build(self) -> None:
        self._check_build()
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]

    def load_bytearray8(self) -> None:
        """Protocol 5 in-band buffers (numpy arrays): read straight into the bytearray, as the C
        unpickler does, instead of reading bytes and copying them."""
        (size,) = struct.unpack("<Q", self.read(8))
        if size > sys.maxsize:
            raise pickle.UnpicklingError("BYTEARRAY8 exceeds system's maximum size")
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

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8  # type: ignore[assignment]


def restricted_loads(data: bytes, policy: TrustPolicy | None = None) -> Any:
    """Unpickle ``data`` under ``policy`` (the built-in allow-list alone by default)."""
    return RestrictedUnpickler(io.BytesIO(data), policy=policy).load()


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
_pickler_installed = False


def _install_joblib_recorder() -> None:
    """Swap joblib's pickler class for a subclass that records the globals it writes.

    joblib writes array bytes straight into the stream between pickle opcodes,
    so its output cannot be scanned as a plain pickle. Its pickler is the
    pure-Python one, though: the subclass captures the two strings each
    ``save_global`` call writes (module and name, exactly as ``find_class``
    will see them). Object arrays, which joblib pickles as a nested stream with
    the C pickler, are scanned with :func:`scan_pickle_globals`. Recording is
    only active inside :func:`recording_joblib_globals`.
    """
    global _pickler_installed
    if _pickler_installed:
        return
    from joblib import numpy_pickle

    base = numpy_pickle.NumpyPickler

    class _RecordingNumpyPickler(base):  # type: ignore[valid-type, misc]
        dispatch = base.dispatch.copy()
        _mk_names: list[str] | None = None

        def save(self, obj: Any, *args: Any) -> None:
            found = _recording.get()
            if found is None:
                base.save(self, obj, *args)
                return
            if self._mk_names is not None and type(obj) is str:
                self._mk_names.append(obj)
            np = self.np
            if np is not None and type(obj) in (np.ndarray, np.matrix) and obj.dtype.hasobject:
                nested = scan_pickle_globals(pickle.dumps(obj, protocol=5))  # what joblib writes
                if nested is None:
                    raise pickle.PicklingError("cannot record the globals of an object array")
                found.update(nested)
            marker = getattr(self.file_handle, "payload", None)
            if marker is None or np is None or type(obj) not in (np.ndarray, np.memmap) or obj.dtype.hasobject:
                base.save(self, obj, *args)
                return
            # joblib's own branch for arrays (NumpyPickler.save), with the raw bytes marked as a
            # payload: a load reads them into the array's own memory, or maps them, unparsed.
            obj = np.asanyarray(obj) if type(obj) is np.memmap else obj
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

    numpy_pickle.NumpyPickler = _RecordingNumpyPickler
    _pickler_installed = True


@contextlib.contextmanager
def recording_joblib_globals() -> Iterator[set[str]]:
    """Within this block, ``joblib.dump`` adds every global it writes to the yielded set."""
    _install_joblib_recorder()
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
            self, *args: Any, policy: TrustPolicy, verified: Any = None, map_mode: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self._policy = policy
            self._fetched = {}
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
                self.stack[-1] = RestrictedUnpickler(self.file_handle, policy=self._policy).load()
            elif payload is not None:
                self.stack[-1] = self._payload_array(wrapper, payload)
            else:
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
            else:
                flat = np.frombuffer(self._verified.buffers[start], dtype=wrapper.dtype, count=count)
                array = flat.reshape(shape[::-1]).T if wrapper.order == "F" else flat.reshape(shape)
                if self.ensure_native_byte_order:
                    array = numpy_pickle._ensure_native_byte_order(array)
            self.file_handle.seek(end)
            return array

        dispatch[pickle.BUILD[0]] = load_build

    return PolicedNumpyUnpickler


def joblib_load(
    source: Any, policy: TrustPolicy, mmap_mode: str | None = None, *, verified: Any = None, map_mode: str | None = None
) -> Any:
    """``joblib.load(source, mmap_mode)`` under ``policy``; ``source`` is a path or a file object.

    ``verified`` (a :class:`~modelkeep.storage.hashing.VerifiedArtifact`) supplies the arrays
    whose bytes are payload ranges: from their own buffers, or mapped (``map_mode``) from the
    open artifact."""
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
        fobj, mmap_mode = stack.enter_context(numpy_pickle._validate_fileobject_and_memmap(fobj, filename, mmap_mode))
        if isinstance(fobj, str):
            raise UnsafeModelError(
                "refused to load: a joblib file from before joblib 0.10 (its arrays live in side files)"
            )
        if not isinstance(filename, str):
            filename = ""
        unpickler = cls(
            filename, fobj, native_order, mmap_mode=mmap_mode, policy=policy, verified=verified, map_mode=map_mode
        )
        return unpickler.load()
