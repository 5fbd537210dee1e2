"""Unpicklers that refuse globals no model needs (``os.system``, ``eval``, ...).

A pickle can name any importable callable and have it called while loading:
that is how "malicious model" exploits work. modelkeep checks every global a
pickle asks for against a deny-list before importing it, and raises
:class:`~modelkeep.errors.UnsafeModelError` naming the refused global. The
deny-list is defence in depth: the SHA-256 check (and the signature, when a
key is configured) is what keeps foreign pickles out in the first place.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
from collections.abc import Iterator
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
    }
)


def check_global(module: str, name: str) -> None:
    """Raise :class:`UnsafeModelError` if ``module.name`` is on the deny-list."""
    root = module.split(".", 1)[0]
    if (
        (module, name) in DENIED_GLOBALS
        or module in DENIED_MODULES
        or root in DENIED_MODULES
        or f"{module}.{name}" in DENIED_MODULES
        or (name.startswith("__") and module == "builtins")
    ):
        raise UnsafeModelError(
            f"refused to load: the artifact references the global {module}.{name}, "
            "which modelkeep never unpickles (possible malicious pickle)"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that consults the deny-list for every global."""

    def find_class(self, module: str, name: str) -> Any:
        check_global(module, name)
        return super().find_class(module, name)


_enforce: contextvars.ContextVar[bool] = contextvars.ContextVar("modelkeep_restrict", default=False)
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
                check_global(module, name)
            return super().find_class(module, name)

    numpy_pickle.NumpyUnpickler = _CheckedNumpyUnpickler
    _installed = True


@contextlib.contextmanager
def restricted_joblib() -> Iterator[None]:
    """Within this block, ``joblib.load`` refuses denied globals."""
    _install_joblib_hook()
    token = _enforce.set(True)
    try:
        yield
    finally:
        _enforce.reset(token)
