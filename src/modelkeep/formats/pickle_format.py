"""pickle: the standard library's format, optionally gzip-compressed (``.pkl.gz``)."""

from __future__ import annotations

import gzip
import pickle
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Format, Writable
from .state_checks import checked

if TYPE_CHECKING:
    from ..blobs import BlobStore

PROTOCOL = 5


class PickleFormat(Format):
    """Pickle protocol 5, gzip-compressed when ``compress`` is on."""

    name = "pickle"

    def extension(self, compression: str | None) -> str:
        return ".pkl.gz" if compression else ".pkl"

    def normalize_compression(self, compress: Any) -> str | None:
        if compress is None or compress is False or compress == 0:
            return None
        if compress is True:
            return "gzip:6"
        if isinstance(compress, int):
            level = compress
        elif isinstance(compress, str) and compress.partition(":")[0] == "gzip":
            level = int(compress.partition(":")[2] or 6)
        elif isinstance(compress, (tuple, list)) and len(compress) == 2 and compress[0] == "gzip":
            level = int(compress[1])
        else:
            raise ConfigError(f"the pickle format compresses with gzip only; got compress={compress!r}")
        if not 1 <= level <= 9:
            raise ConfigError(f"compression level must be 1 to 9, got {level}")
        return f"gzip:{level}"

    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        """Pickle ``obj``; returns ``{"globals": [...]}``, the globals the stream references
        (scanned from the uncompressed stream as it is written)."""
        from ._restricted import GLOBALS_KEY, ScanningWriter

        if compression is None:
            out = ScanningWriter(file)
            pickle.dump(obj, out, protocol=PROTOCOL)
        else:
            level = int(compression.split(":")[1])
            with gzip.GzipFile(fileobj=file, mode="wb", compresslevel=level, mtime=0) as gz:  # type: ignore[call-overload]
                out = ScanningWriter(gz)
                pickle.dump(obj, out, protocol=PROTOCOL)
        found = out.scanner.globals
        return None if found is None else {GLOBALS_KEY: found}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        """Unpickle under the allow-list policy (``trusted``, and ``extra["globals"]`` when ``signed``).

        A stream proven to be plain data (:mod:`modelkeep.formats._fastpath`) is loaded by the C
        unpickler; every other one by the restricted unpickler."""
        import io

        from ._fastpath import MISS, PREFIX_BYTES, load_plain, prove_plain
        from ._restricted import RestrictedUnpickler, TrustPolicy, source_size
        from .budget import BoundedReader, LoadBudget

        policy = TrustPolicy.for_load(options)
        budget = LoadBudget.for_load(options, source_size(file))
        if compression is None:
            fast = load_plain(file, budget)
            if fast is not MISS:
                return fast
            return checked(RestrictedUnpickler(file, policy=policy, budget=budget).load())
        start = file.tell()
        with gzip.GzipFile(fileobj=file, mode="rb") as gz:
            bounded = io.BufferedReader(BoundedReader(gz, budget, "a gzip-compressed artifact"), 1 << 20)
            head = bounded.read(PREFIX_BYTES)
            if prove_plain(head, partial=True) is not False:  # plain so far: decompress it all, then prove it
                whole = io.BytesIO(head + bounded.read())
                fast = load_plain(whole, budget)
                if fast is not MISS:
                    return fast
                return checked(RestrictedUnpickler(whole, policy=policy, budget=budget).load())
        file.seek(start)  # not plain: stream it through the restricted unpickler, as before
        with gzip.GzipFile(fileobj=file, mode="rb") as gz:
            bounded = io.BufferedReader(BoundedReader(gz, budget, "a gzip-compressed artifact"), 1 << 20)
            return checked(RestrictedUnpickler(bounded, policy=policy, budget=budget).load())
