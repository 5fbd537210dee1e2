"""A small read-only PostgreSQL client on libpq itself, through :mod:`ctypes`.

``import psycopg`` alone costs about as much as the whole of ``modelkeep list`` may take
(issue 29: 150 ms), and the command line's read path (:mod:`modelkeep.index.readonly`)
needs only a handful of libpq calls: connect, send a few statements with bound parameters
in one pipeline (one network round trip), read their rows as text. This module makes
those calls on the libpq psycopg itself would use (the copy bundled with
``psycopg-binary``, else the system's), and reads values the way psycopg does by default
for the few types the registry's tables hold; parameters go with the type psycopg gives
them (a ``str`` untyped, an ``int`` as the smallest integer type that holds it, a
``float`` as ``double precision``, ``bytes`` as ``bytea``).

Anything else (no psycopg, no libpq, a failed connection, a client encoding other than
UTF-8, a parameter or a column type it does not handle, a value it cannot read, an
error from the server) raises :class:`LibpqError`: the caller then leaves the command
to the library, which reports as always. Values are only ever sent as parameters, never
spliced into SQL text.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]
Statement = tuple[str, Sequence[Any]]

_CONNECTION_OK = 0
_COMMAND_OK, _TUPLES_OK, _PIPELINE_SYNC = 1, 2, 10
#: The shared-library names of the system's libpq (what psycopg's C and pure-Python builds use).
_SYSTEM_NAMES = ("libpq.so.5", "libpq.5.dylib")


class LibpqError(Exception):
    """What this client does not do exactly as psycopg would (or a failure): the caller asks the library."""


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _bytea(value: bytes) -> bytes:
    if not value.startswith(b"\\x"):  # the old "escape" output (bytea_output): not read here
        raise LibpqError("bytea not in hex format")
    return bytes.fromhex(value[2:].decode("ascii"))


def _bool(value: bytes) -> bool:
    if value not in (b"t", b"f"):
        raise LibpqError("not a boolean")
    return value == b"t"


#: Type OID -> how psycopg's default text loader reads a value of it.
_LOADERS: dict[int, Callable[[bytes], Any]] = {
    16: _bool,  # boolean
    17: _bytea,  # bytea
    19: _text,  # name
    20: int,  # bigint
    21: int,  # smallint
    23: int,  # integer
    25: _text,  # text
    700: float,  # real
    701: float,  # double precision
    705: _text,  # unknown (a literal)
    1042: _text,  # char(n)
    1043: _text,  # varchar
}
_FLOAT_SPECIAL = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def dump(value: Any) -> tuple[int, bytes]:
    """The type OID and text of a parameter, as psycopg sends it (its default adapters)."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise LibpqError("PostgreSQL text cannot hold NUL")  # psycopg refuses it too
        try:
            return 0, value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LibpqError("not UTF-8 text") from exc
    if kind is int:
        if -(2**15) <= value < 2**15:
            oid = 21
        elif -(2**31) <= value < 2**31:
            oid = 23
        else:
            oid = 20 if -(2**63) <= value < 2**63 else 1700
        return oid, str(value).encode()
    if kind is float:
        text = repr(value)
        return 701, _FLOAT_SPECIAL.get(text) or text.encode()
    if kind is bytes:
        return 17, b"\\x" + value.hex().encode()
    raise LibpqError(f"no parameter of type {kind.__name__} here")


def library_candidates() -> list[str]:
    """The libpq files to try, in order: the one psycopg would use (``PSYCOPG_IMPL`` as psycopg
    reads it; ``psycopg-binary``'s bundled copy, else the system's), none without psycopg."""
    from importlib.util import find_spec

    if find_spec("psycopg") is None:
        return []  # the library could not connect either: let it say so
    impl = os.environ.get("PSYCOPG_IMPL", "")
    if impl in ("c", "python") or (impl == "" and find_spec("psycopg_c") is not None):
        return list(_SYSTEM_NAMES)
    if impl not in ("", "binary"):
        return []
    spec = find_spec("psycopg_binary")
    if spec is None or not spec.submodule_search_locations:
        return [] if impl == "binary" else list(_SYSTEM_NAMES)
    package = Path(next(iter(spec.submodule_search_locations)))
    bundled = [*(package.parent / "psycopg_binary.libs").glob("libpq*.so*"), *(package / ".dylibs").glob("libpq*")]
    return [str(p) for p in sorted(bundled)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "PQconnectdbParams": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
    "PQstatus": (ctypes.c_int, [ctypes.c_void_p]),
    "PQparameterStatus": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "PQfinish": (None, [ctypes.c_void_p]),
    "PQenterPipelineMode": (ctypes.c_int, [ctypes.c_void_p]),
    "PQexitPipelineMode": (ctypes.c_int, [ctypes.c_void_p]),
    "PQpipelineSync": (ctypes.c_int, [ctypes.c_void_p]),
    # conn, command, nParams, paramTypes, paramValues, paramLengths, paramFormats, resultFormat
    "PQsendQueryParams": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, *[ctypes.c_void_p] * 4, ctypes.c_int],
    ),
    "PQgetResult": (ctypes.c_void_p, [ctypes.c_void_p]),
    "PQresultStatus": (ctypes.c_int, [ctypes.c_void_p]),
    "PQresultErrorMessage": (ctypes.c_char_p, [ctypes.c_void_p]),
    "PQntuples": (ctypes.c_int, [ctypes.c_void_p]),
    "PQnfields": (ctypes.c_int, [ctypes.c_void_p]),
    "PQftype": (ctypes.c_uint, [ctypes.c_void_p, ctypes.c_int]),
    "PQgetvalue": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
    "PQgetisnull": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
    "PQclear": (None, [ctypes.c_void_p]),
}
_loaded: list[Any] = []


def _libpq() -> Any:
    """libpq, loaded once, with the signatures of the functions used here (pipelines need libpq 14)."""
    if _loaded:
        return _loaded[0]
    for candidate in library_candidates():
        try:
            lib = ctypes.CDLL(candidate)
            for name, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, name)
                function.restype, function.argtypes = restype, argtypes
        except (OSError, AttributeError):
            continue
        _loaded.append(lib)
        return lib
    raise LibpqError("no libpq to load")


def _strings(items: Sequence[bytes | None]) -> Any:
    return (ctypes.c_char_p * len(items))(*items)


class Connection:
    """One libpq connection; :meth:`run` sends statements in one pipeline and returns their rows."""

    def __init__(self, lib: Any, handle: int) -> None:
        self._lib = lib
        self._handle: int | None = handle
        self._broken = False
        #: Pipelines sent: each is one network round trip (after the connection's own).
        self.round_trips = 0

    @classmethod
    def connect(cls, url: str, params: dict[str, Any]) -> Connection:
        """Connect as ``psycopg.connect(url, **params)`` would (``params`` win over the URL's);
        :class:`LibpqError` when that fails or the client encoding is not UTF-8."""
        lib = _libpq()
        try:
            keys = [b"dbname", *(k.encode() for k in params), None]
            values = [url.encode(), *(str(v).encode() for v in params.values()), None]
        except UnicodeEncodeError as exc:
            raise LibpqError("not UTF-8") from exc
        if any(b"\x00" in v for v in values if v is not None):
            raise LibpqError("NUL in the connection parameters")
        handle = lib.PQconnectdbParams(_strings(keys), _strings(values), 1)
        if not handle:
            raise LibpqError("out of memory")
        conn = cls(lib, handle)
        if lib.PQstatus(handle) != _CONNECTION_OK or lib.PQparameterStatus(handle, b"client_encoding") != b"UTF8":
            conn.close()
            raise LibpqError("no connection, or not UTF-8")
        return conn

    def run(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """The rows of each statement (``$1``-style parameters), sent in one pipeline; any error
        raises :class:`LibpqError` and leaves the connection unusable."""
        handle, lib = self._handle, self._lib
        if handle is None or self._broken:
            raise LibpqError("the connection is closed or unusable")
        self._broken = True  # until the pipeline ends well
        if not lib.PQenterPipelineMode(handle):
            raise LibpqError("no pipeline mode")
        for sql, params in statements:
            dumped = [dump(p) for p in params]
            types = (ctypes.c_uint * len(dumped))(*(oid for oid, _ in dumped))
            values = _strings([data for _, data in dumped])
            if not lib.PQsendQueryParams(handle, sql.encode(), len(dumped), types, values, None, None, 0):
                raise LibpqError("could not send a statement")
        if not lib.PQpipelineSync(handle):
            raise LibpqError("could not send the pipeline")
        self.round_trips += 1
        out = [self._result(handle) for _ in statements]
        sync = lib.PQgetResult(handle)
        status = lib.PQresultStatus(sync) if sync else None
        lib.PQclear(sync)
        if status != _PIPELINE_SYNC or not lib.PQexitPipelineMode(handle):
            raise LibpqError("the pipeline did not end")
        self._broken = False
        return out

    def _result(self, handle: int) -> list[Row]:
        """The rows of the next statement's result (then libpq's end-of-statement ``NULL``)."""
        lib = self._lib
        res = lib.PQgetResult(handle)
        if not res:
            raise LibpqError("no result")
        try:
            status = lib.PQresultStatus(res)
            if status == _TUPLES_OK:
                rows = _rows(lib, res)
            elif status == _COMMAND_OK:
                rows = []
            else:
                message = lib.PQresultErrorMessage(res) or b""
                raise LibpqError(message.decode("utf-8", "replace").strip() or f"status {status}")
        finally:
            lib.PQclear(res)
        extra = lib.PQgetResult(handle)
        if extra:
            lib.PQclear(extra)
            raise LibpqError("more than one result for a statement")
        return rows

    def close(self) -> None:
        """Close the connection (again: nothing)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.PQfinish(handle)


def _rows(lib: Any, res: int) -> list[Row]:
    """The rows of a result, each value read by its column's type (:data:`_LOADERS`)."""
    loaders = []
    for column in range(lib.PQnfields(res)):
        oid = lib.PQftype(res, column)
        if oid not in _LOADERS:
            raise LibpqError(f"a column of type {oid}, not read here")
        loaders.append((column, _LOADERS[oid]))
    get, isnull = lib.PQgetvalue, lib.PQgetisnull
    out = []
    try:
        for row in range(lib.PQntuples(res)):
            cells = []
            for column, load in loaders:
                value = get(res, row, column)
                cells.append(None if not value and isnull(res, row, column) else load(value))
            out.append(tuple(cells))
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError too
        raise LibpqError(f"a value not read as psycopg reads it: {exc}") from exc
    return out


__all__ = ["Connection", "LibpqError", "dump", "library_candidates"]
