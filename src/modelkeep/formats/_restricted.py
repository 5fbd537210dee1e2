"""Unpicklers that refuse globals no model needs (``os.system``, ``eval``, ...).

A pickle can name any importable callable and have it called while loading:
that is how "malicious model" exploits work. modelkeep checks every global a
pickle asks for against a deny-list before importing it, and raises
:class:`~modelkeep.errors.UnsafeModelError` naming the refused global. The
deny-list is defence in depth: the SHA-256 check (and the signature, when a
key is configured) is what keeps foreign pickles out in the first place.

On top of the deny-list, every save records the set of globals its pickle
stream references (``ArtifactInfo.extra["globals"]``, covered by the
signature). At load, a global outside that recorded set is refused too, so a
swapped artifact cannot reach for anything the original model did not use.
The pickle format records by scanning the opcode stream as it is written
(:class:`GlobalsScanner`); joblib, whose files interleave raw array bytes with
pickle opcodes, records inside its pickler (:func:`recording_joblib_globals`).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import contextvars
import copyreg
import pickle
import pickletools
import types
from collections.abc import Collection, Iterator
from typing import Any

from ..errors import UnsafeModelError

#: Whole modules (and their submodules) a model never needs at load time.
DENIED_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "importlib",
        "marshal",
        "ctypes",
        "pickle",
        "_pickle",
        "shutil",
        "socket",
        "runpy",
        "code",
        "codeop",
        "pty",
        "multiprocessing",
        "webbrowser",
        "pdb",
        "bdb",
        "timeit",
        "trace",
        "profile",
        "cProfile",
        "site",
        "sysconfig",
        "asyncio",
        "signal",
        "threading",
        "_thread",
        "tempfile",
        "zipimport",
        "pkgutil",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "dill",
        "cloudpickle",
        "joblib.numpy_pickle_utils",
        "setuptools",
        "pip",
        "distutils",
        "_posixsubprocess",
        "shelve",
        "dbm",
        "imp",
        "inspect",
        "gc",
        "builtins.__import__",
    }
)
#: Individual globals refused wherever they come from.
DENIED_GLOBALS = frozenset(
    {
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "compile"),
        ("builtins", "__import__"),
        ("builtins", "getattr"),
        ("builtins", "setattr"),
        ("builtins", "delattr"),
        ("builtins", "open"),
        ("builtins", "input"),
        ("builtins", "breakpoint"),
        ("builtins", "globals"),
        ("builtins", "locals"),
        ("builtins", "vars"),
        ("builtins", "exit"),
        ("builtins", "quit"),
        ("builtins", "help"),
        ("io", "open"),
        ("io", "FileIO"),
        ("_io", "open"),
        ("_io", "FileIO"),
        ("types", "CodeType"),
        ("types", "FunctionType"),
        ("types", "LambdaType"),
        ("types", "MethodType"),
        ("types", "ModuleType"),
        ("operator", "attrgetter"),
        ("operator", "methodcaller"),
        ("platform", "popen"),
        ("numpy", "load"),
        ("numpy", "save"),
        ("numpy", "fromfile"),
        ("numpy", "memmap"),
        ("numpy.lib.npyio", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("joblib", "load"),
        ("joblib", "dump"),
        ("torch", "load"),
        ("pandas", "read_pickle"),
        ("pandas.io.pickle", "read_pickle"),
        ("numpy.lib.format", "read_array"),
    }
)


#: Key of ``ArtifactInfo.extra`` holding the sorted ``"module.name"`` globals of a pickle.
GLOBALS_KEY = "globals"


def _denied(module: str, name: str) -> bool:
    root = module.split(".", 1)[0]
    return (
        (module, name) in DENIED_GLOBALS
        or module in DENIED_MODULES
        or root in DENIED_MODULES
        or f"{module}.{name}" in DENIED_MODULES
        or f"{module}.{name.split('.', 1)[0]}" in DENIED_MODULES
        or (module == "builtins" and name.startswith("__"))
    )


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The name ``find_class`` really imports: protocol 0-2 pickles may use Python 2 names
    (``__builtin__.eval``), which the unpickler maps to Python 3 ones before importing."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        mapped: tuple[str, str] = _compat_pickle.NAME_MAPPING[(module, name)]
        return mapped
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def check_global(module: str, name: str, allowed: Collection[str] | None = None) -> None:
    """Raise :class:`UnsafeModelError` if ``module.name`` may not be loaded.

    A global is refused when it is on the deny-list, or when ``allowed`` (the
    globals recorded at save) is given and does not contain it.
    """
    if _denied(module, name) or _denied(*_py3_name(module, name)):
        raise UnsafeModelError(
            f"refused to load: the artifact references the global {module}.{name}, "
            "which modelkeep never unpickles (possible malicious pickle)"
        )
    if allowed is not None and f"{module}.{name}" not in allowed:
        raise UnsafeModelError(
            f"refused to load: the artifact references the global {module}.{name}, which is not among "
            "the globals recorded when this version was saved (the artifact was probably replaced)"
        )


def allowed_globals(extra: dict[str, Any] | None) -> frozenset[str] | None:
    """The recorded globals in a version's ``extra``, or ``None`` when none were recorded."""
    found = (extra or {}).get(GLOBALS_KEY)
    if not isinstance(found, list):
        return None
    return frozenset(str(g) for g in found)


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that consults the deny-list (and the recorded globals) for every global."""

    def __init__(self, file: Any, *, allowed: Collection[str] | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        check_global(module, name, self._allowed)
        return super().find_class(module, name)


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
            if found is not None:
                if self._mk_names is not None and type(obj) is str:
                    self._mk_names.append(obj)
                np = self.np
                if np is not None and type(obj) in (np.ndarray, np.matrix) and obj.dtype.hasobject:
                    nested = scan_pickle_globals(pickle.dumps(obj, protocol=5))  # what joblib writes
                    if nested is None:
                        raise pickle.PicklingError("cannot record the globals of an object array")
                    found.update(nested)
            base.save(self, obj, *args)

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

_enforce: contextvars.ContextVar[bool] = contextvars.ContextVar("modelkeep_restrict", default=False)
_allowed: contextvars.ContextVar[Collection[str] | None] = contextvars.ContextVar("modelkeep_allowed", default=None)
_installed = False


def _install_joblib_hook() -> None:
    """Swap joblib's unpickler class for a subclass that checks the deny-list.

    The check is only active inside :func:`restricted_joblib`, so other code in
    the process that calls ``joblib.load`` directly behaves exactly as before.
    """
    global _installed
    if _installed:
        return
    from joblib import numpy_pickle

    base = numpy_pickle.NumpyUnpickler

    class _CheckedNumpyUnpickler(base):  # type: ignore[valid-type, misc]
        def find_class(self, module: str, name: str) -> Any:
            if _enforce.get():
                check_global(module, name, _allowed.get())
            return super().find_class(module, name)

    numpy_pickle.NumpyUnpickler = _CheckedNumpyUnpickler
    _installed = True


@contextlib.contextmanager
def restricted_joblib(allowed: Collection[str] | None = None) -> Iterator[None]:
    """Within this block, ``joblib.load`` refuses denied globals, and any outside ``allowed``."""
    _install_joblib_hook()
    token = _enforce.set(True)
    allowed_token = _allowed.set(allowed)
    try:
        yield
    finally:
        _allowed.reset(allowed_token)
        _enforce.reset(token)
