"""Which compression a version exported to a file gets (``export_file``, ``modelkeep load --output``).

The exported file follows the stored version's compression where the file's kind allows
it, so a 68 KiB version does not come back as a 355 KB file; and it stays readable by
plain ``joblib.load`` / ``pickle.load`` outside modelkeep. :func:`export_compression`
says which codec, and why when it is not the stored one.
"""

from __future__ import annotations

from .formats.joblib_format import JOBLIB_CODECS

#: A compressed suffix -> the joblib codec it names (``joblib.load`` reads these itself).
_JOBLIB_SUFFIXES = {".joblib.gz": "gzip:3", ".joblib.z": "zlib:3", ".joblib.zst": "zstd:3"}
#: What replaces a stored codec that plain ``joblib.load`` cannot read (modelkeep's zstd stream).
PORTABLE_JOBLIB_CODEC = "zlib:3"


def export_compression(
    filename: str, target_format: str, compressed_suffix: bool, stored_format: str, stored: str | None
) -> tuple[str | None, str]:
    """``(compression, note)`` for writing a version stored as ``stored_format``/``stored`` to
    ``filename`` in ``target_format``; ``note`` says what was chosen and why, for people."""
    lower = filename.lower()
    if target_format == "pickle":
        if compressed_suffix:
            return "gzip:6", "compressed with gzip:6 (.pkl.gz)"
        note = "uncompressed: a .pkl file is a plain pickle"
        return None, note + ("; use a .pkl.gz name to compress it" if stored else "")
    for suffix, codec in _JOBLIB_SUFFIXES.items():
        if compressed_suffix and lower.endswith(suffix):
            return codec, f"compressed with {codec} ({suffix})"
    if stored is None:
        return None, "uncompressed, as stored"
    codec = stored.split(":", 1)[0]
    if stored_format == "joblib" and codec in JOBLIB_CODECS:
        return stored, f"compressed with {stored}, as stored"
    return PORTABLE_JOBLIB_CODEC, (
        f"compressed with {PORTABLE_JOBLIB_CODEC}: the stored {stored} is not a codec plain joblib.load reads"
        if stored_format == "joblib"
        else f"compressed with {PORTABLE_JOBLIB_CODEC} (stored as {stored_format}, {stored})"
    )
