"""``native``: pickle protocol 5 with large buffers stored out of band as blobs.

The artifact file holds only the pickle opcodes (small: the object's
structure, never the array data). Every buffer of at least ``MIN_BLOB``
bytes (numpy arrays, bytes) goes to the content-addressed blob store, so:

* versions that share arrays share storage (a forest with ten more trees
  stores only the new trees' arrays), and saving an identical model writes no
  new blob bytes;
* blobs are hashed in parallel, and can be memory-mapped at load.

The list of ``[sha256, size]`` blobs, in pickle order, is returned from
:meth:`NativeFormat.dump` and kept in ``ArtifactInfo.extra["blobs"]`` (and so
in the signed manifest and the sidecar JSON). The pickle stream is always
hashed before loading; blobs are raw array bytes (they cannot run code) and are
re-hashed on every load except with ``mmap_mode``, where only their sizes are
checked so that mapping stays instant (``verify()`` re-hashes them).

Loading without modelkeep, from the files alone::

    import json, pickle
    meta = json.load(open("models/m/1.0.0/m_v1.0.0_metadata.json"))
    blobs = [open(f"models/.blobs/{sha[:2]}/{sha}", "rb").read()
             for sha, _size in meta["artifact"]["extra"]["blobs"]]
    model = pickle.loads(open("models/m/1.0.0/m_v1.0.0.mkpkl", "rb").read(), buffers=blobs)
"""

from __future__ import annotations

import pickle
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Format, Writable
from .state_checks import checked

if TYPE_CHECKING:
    from ..blobs import BlobStore

#: Buffers smaller than this stay inside the pickle stream.
MIN_BLOB = 16 * 1024


class NativeFormat(Format):
    """Pickle protocol 5 + content-addressed out-of-band buffers."""

    name = "native"
    uses_blobs = True

    def extension(self, compression: str | None) -> str:
        return ".mkpkl"

    def normalize_compression(self, compress: Any) -> str | None:
        if compress is None or compress is False or compress is True or compress == 0:
            return None  # blobs stay raw so they can be shared and memory-mapped
        raise ConfigError("the native format stores arrays uncompressed (for dedup and mmap); use compress=False")

    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        from ._restricted import GLOBALS_KEY, ScanningWriter

        if blobs is None:
            raise ValueError("the native format needs blobs= (a BlobStore)")
        views: list[memoryview] = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            try:
                view = buf.raw()
            except BufferError:  # not contiguous: let pickle copy it in-band
                return True
            if view.nbytes < MIN_BLOB:
                return True
            views.append(view)
            return False

        out = ScanningWriter(file)  # records the globals the stream references
        pickle.dump(obj, out, protocol=5, buffer_callback=out_of_band)
        digests = blobs.hash_all(views)
        sizes = [v.nbytes for v in views]
        todo = set(blobs.missing(zip(digests, sizes, strict=True)))
        written = blobs.put_many({d: v for d, v in zip(digests, views, strict=True) if d in todo})
        extra: dict[str, Any] = {
            "blobs": [[d, s] for d, s in zip(digests, sizes, strict=True)],
            "blob_bytes_written": written,
        }
        if out.scanner.globals is not None:
            extra[GLOBALS_KEY] = out.scanner.globals
        return extra

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        from ._fastpath import MISS, load_plain
        from ._restricted import RestrictedUnpickler, TrustPolicy, source_size
        from .budget import LoadBudget

        blobs = options["blobs"]
        extra = options.get("extra") or {}
        digests = [(sha, int(size)) for sha, size in extra.get("blobs", [])]
        mmap = options.get("mmap_mode") is not None
        buffers = blobs.read_many(digests, verify=not mmap, mmap=mmap)
        # the blobs are the arrays' bytes: they count toward the size the budget scales with
        size = (options.get("artifact_size") or source_size(file) or 0) + sum(n for _sha, n in digests)
        budget = LoadBudget.for_artifact(size, options.get("max_load_memory"))
        fast = load_plain(file, budget, buffers)  # plain data: the C unpickler (formats/_fastpath.py)
        if fast is not MISS:
            return fast
        return checked(
            RestrictedUnpickler(file, buffers=buffers, policy=TrustPolicy.for_load(options), budget=budget).load()
        )

    def supports_mmap(self, compression: str | None) -> bool:
        return False  # mapping happens per blob in load(); the stream itself is tiny
