"""How much memory one load may allocate: bounded by what its artifact can justify.

A pickle is a program: twelve bytes can claim a three-gigabyte buffer
(``BYTEARRAY8``), and forty-eight can call ``bytearray(3_000_000_000)``. So every
load gets a :class:`LoadBudget`, by default ``max(256 MiB, 32 x the artifact's size
on disk)``: a pickle that is parsed allocates roughly its own size (arrays are their
bytes), so 32 times as much leaves room for any honest model, and the floor covers
small models whose Python objects weigh more than their bytes. For a compressed
artifact the size on disk is the *compressed* size: the uncompressed size a stream
declares is attacker-controlled, so it is never used; 32 x covers the ratios of
real models (typically 1.5-10 x) and the floor covers the rest. The limit is
configurable as ``max_load_memory`` (``ModelPersistence(max_load_memory=...)``, the
``max_load_memory`` config key, ``MODELKEEP_MAX_LOAD_MEMORY``, ``modelkeep
--max-load-memory``).

The unpicklers charge the budget before they allocate: each length-carrying opcode,
each call of an allow-listed callable that allocates by a count (see
:mod:`modelkeep.formats.call_guards`), each container's items, and every byte a
decompressor produces (:class:`BoundedReader`). A charge that would pass the limit
raises :class:`~modelkeep.errors.UnsafeModelError` naming the budget and the setting.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ..errors import UnsafeModelError

MIB = 1 << 20
#: The budget of any load is at least this many bytes.
FLOOR = 256 * MIB
#: ... and at least this many times the artifact's size on disk.
FACTOR = 32
#: Option key of a format's ``load(**options)`` carrying the configured limit (bytes or ``None``).
OPTION = "max_load_memory"
#: Option key carrying the artifact's size on disk, including its blobs (bytes).
SIZE_OPTION = "artifact_size"

SETTING = (
    "max_load_memory (ModelPersistence(max_load_memory=...), the max_load_memory config key, "
    "MODELKEEP_MAX_LOAD_MEMORY, or modelkeep --max-load-memory)"
)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``1073741824``, ``"1073741824"``, ``"1 GiB"``, ``"512M"`` or ``"2g"`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size in bytes such as 2GiB, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _SIZE_TEXT.match(value)):
        number = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise ValueError(f"must be a size in bytes such as 2GiB or 536870912, got {value!r}")
    if number <= 0:
        raise ValueError(f"must be a positive size in bytes, got {value!r}")
    return number


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class LoadBudget:
    """The bytes one load may still allocate; :meth:`charge` before each allocation."""

    __slots__ = ("configured", "limit", "used")

    def __init__(self, limit: int, *, configured: bool = False) -> None:
        self.limit = limit
        self.used = 0
        self.configured = configured

    @classmethod
    def for_artifact(cls, size: int | None, configured: int | None = None) -> LoadBudget:
        """``configured`` if set, else ``max(FLOOR, FACTOR x size)`` (the floor alone if ``size`` is unknown)."""
        if configured is not None:
            return cls(int(configured), configured=True)
        return cls(max(FLOOR, FACTOR * int(size or 0)))

    @classmethod
    def for_load(cls, options: Mapping[str, Any], size: int | None = None) -> LoadBudget:
        """The budget for a format's ``load(**options)``: ``max_load_memory``, else from ``artifact_size``
        (or ``size``, what the format measured, when the registry passed none)."""
        given = options.get(SIZE_OPTION)
        return cls.for_artifact(given if given is not None else size, options.get(OPTION))

    def refusal(self, nbytes: int, what: str) -> UnsafeModelError:
        how = (
            "the configured max_load_memory"
            if self.configured
            else f"max({_human(FLOOR)}, {FACTOR} x the artifact's size)"
        )
        return UnsafeModelError(
            f"refused to load: {what} would allocate {_human(nbytes)}, beyond this load's memory budget of "
            f"{_human(self.limit)} ({how}; {_human(self.used)} already used). A crafted pickle claims memory "
            f"its artifact cannot justify; if this model is honest, raise {SETTING}"
        )

    def check(self, nbytes: int, what: str) -> None:
        """Refuse a single allocation of ``nbytes`` that would not fit in what is left."""
        if nbytes > self.limit - self.used:
            raise self.refusal(nbytes, what)

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` against the budget (refused if they do not fit)."""
        if nbytes > self.limit - self.used:
            raise self.refusal(nbytes, what)
        self.used += nbytes


class BoundedReader(io.RawIOBase):
    """A read-only stream over a decompressor that refuses to produce more than the budget allows.

    Wrap the *decompressed* stream: each byte read is charged, so a small bomb
    (a zstd, gzip, lz4 or xz stream that expands past the budget) stops at the
    budget instead of filling memory or disk."""

    def __init__(self, inner: Any, budget: LoadBudget, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._budget = budget
        self._what = what
        self._produced = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._produced

    def readinto(self, view: Any) -> int:
        out = memoryview(view).cast("B")
        readinto = getattr(self._inner, "readinto", None)
        if readinto is not None:
            n = readinto(out)
        else:
            chunk = self._inner.read(len(out))
            n = len(chunk)
            out[:n] = chunk
        n = n or 0
        self._produced += n
        if self._produced > self._budget.limit:
            raise self._budget.refusal(self._produced, f"{self._what} (decompressed)")
        return n
