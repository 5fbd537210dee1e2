"""joblib: the default format, efficient for objects full of numpy arrays."""

from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Format, Writable

if TYPE_CHECKING:
    from ..blobs import BlobStore
from .codecs import STREAM_CODECS, compressing, decompressing
from .state_checks import checked

#: ``compress=True``: zstd level 1 is several times faster than joblib's zlib-3 at about
#: the same size (bench/README.md). joblib's own codecs stay selectable by name.
DEFAULT_CODEC = ("zstd", 1)
JOBLIB_CODECS = ("zlib", "gzip", "bz2", "lzma", "xz", "lz4")
CODECS = ("zstd", *JOBLIB_CODECS)
LEVELS = {"zstd": range(1, 20)}

logger = logging.getLogger("modelkeep")


def parse_codec(compress: Any, default: tuple[str, int]) -> tuple[str, int] | None:
    """Normalize joblib-style ``compress`` values into ``(codec, level)`` or ``None``."""
    if compress is None or compress is False or compress == 0:
        return None
    if compress is True:
        return default
    if isinstance(compress, int) and not isinstance(compress, bool):
        return (default[0], compress)
    if isinstance(compress, str):
        codec, _, level = compress.partition(":")
        return (codec, int(level) if level else default[1])
    if isinstance(compress, (tuple, list)) and len(compress) == 2:
        return (str(compress[0]), int(compress[1]))
    raise ConfigError(f"compress must be a bool, a level, a codec name or (codec, level); got {compress!r}")


class JoblibFormat(Format):
    """``joblib.dump`` / ``joblib.load``; compressed with any joblib codec."""

    name = "joblib"

    def extension(self, compression: str | None) -> str:
        return ".joblib"

    def normalize_compression(self, compress: Any) -> str | None:
        spec = parse_codec(compress, DEFAULT_CODEC)
        if spec is None:
            return None
        codec, level = spec
        if codec not in CODECS:
            raise ConfigError(f"unknown joblib codec {codec!r}; allowed values: {', '.join(CODECS)}")
        levels = LEVELS.get(codec, range(1, 10))
        if level not in levels:
            raise ConfigError(f"{codec} compression level must be {levels.start} to {levels.stop - 1}, got {level}")
        return f"{codec}:{level}"

    def dump(
        self, obj: Any, file: Writable, compression: str | None, *, blobs: BlobStore | None = None
    ) -> dict[str, Any] | None:
        """``joblib.dump``; returns ``{"globals": [...]}``, every global the pickle references."""
        from ._restricted import GLOBALS_KEY, joblib_dump, recording_joblib_globals

        with recording_joblib_globals() as found:
            if compression is None:
                joblib_dump(obj, file)
            else:
                codec, level = compression.split(":")
                if codec in STREAM_CODECS:
                    with compressing(file, codec, int(level)) as zfile:
                        joblib_dump(obj, zfile)
                else:
                    joblib_dump(obj, file, (codec, int(level)))
        return {GLOBALS_KEY: sorted(found)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        """``joblib.load`` under the allow-list policy (``trusted``, and ``extra["globals"]`` when ``signed``)."""
        from ._restricted import TrustPolicy, joblib_load, source_size
        from .budget import LoadBudget

        policy = TrustPolicy.for_load(options)
        budget = LoadBudget.for_load(options, source_size(file))
        codec = compression.split(":")[0] if compression else None
        if codec in STREAM_CODECS:
            with decompressing(file, codec, budget) as plain:
                return checked(joblib_load(plain, policy, budget=budget))
        verified = options.get("verified")
        if verified is None or verified.mapped is None:
            return checked(joblib_load(file, policy, verified=verified, budget=budget))
        mode = options.get("mmap_mode") or "r"
        try:
            return checked(joblib_load(file, policy, verified=verified, map_mode=mode, budget=budget))
        except ValueError as exc:
            if mode != "r" or "read-only" not in str(exc):
                raise
            logger.warning("cannot map %s read-only (%s); mapping it copy-on-write (mmap_mode='c')", file, exc)
            file.seek(0)
            budget = LoadBudget.for_load(options, source_size(file))
            return checked(joblib_load(file, policy, verified=verified, map_mode="c", budget=budget))

    def supports_mmap(self, compression: str | None) -> bool:
        return compression is None
