"""Copy-paste fixes for a refused load: who signed the version, and the two ways to trust it.

A colleague's model with a custom class (``mytransformers.ClipScaler``) is refused by
the safe-loading policy until the reader trusts either the author's key (the globals a
version records are then trusted) or the class itself. :func:`with_remedy` turns the
format's :class:`UnsafeModelError` into one that says which, as lines to paste, in the
library's spelling and (through ``cli=``) the command line's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UnsafeModelError

if TYPE_CHECKING:
    from .signing import Verdict


def _key_file(name: str | None) -> str:
    """``alice@laptop`` -> ``alice.pub``: the file name the author exports their key to."""
    user = (name or "author").split("@", 1)[0].strip() or "author"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in user) + ".pub"


def with_remedy(exc: UnsafeModelError, where: str, verdict: Verdict) -> UnsafeModelError:
    """``exc`` with the signer of the version and the fixes to paste; ``exc`` itself when it
    refused nothing a user could trust (a malicious pickle, say)."""
    if not exc.refused:
        return exc
    names = list(exc.refused)
    api_types = "trusted_types=[" + ", ".join(f'"{n}"' for n in names) + "]"
    cli_types = " ".join(f"--trust {n}" for n in names)
    from .formats._restricted import HOW_TO_TRUST
    from .formats.skops_format import HOW_TO_TRUST as SKOPS_HOW_TO_TRUST

    head = str(exc)
    for generic in (f" {HOW_TO_TRUST}.", f" {SKOPS_HOW_TO_TRUST}"):  # the general advice gives way to the exact one
        head = head.replace(generic, "")
    lines = [head]
    key_fix = verdict.fingerprint is not None and not verdict.trusted
    if key_fix:
        label = f"{verdict.name} " if verdict.name else ""
        lines.append(
            f"{where} is signed by {label}(fingerprint {verdict.fingerprint}), a key you do not trust. To load it:"
        )
        pub = _key_file(verdict.name)
        lines.append(
            f"  trust the author's key: they run `modelkeep keys export-public --out {pub}` and send it; "
            f"you run `modelkeep keys trust {pub}`"
        )
    elif verdict.signer is None:
        lines.append(f"{where} is not signed. To load it:")
    elif verdict.trusted:
        lines.append(f"{where} is signed by {verdict.signer}, a key you trust, but did not record these. To load it:")
    else:
        lines.append(f"{where} is signed with a {verdict.signer} you do not hold ({verdict.reason}). To load it:")
    lines.append(f"  {'or ' if key_fix else ''}trust the class itself: ModelPersistence(..., {api_types})")
    cli = dict(exc.cli_spelling)
    cli[f"ModelPersistence(..., {api_types})"] = f"{cli_types} (modelkeep {cli_types} load ...)"
    error = UnsafeModelError("\n".join(lines), cli=cli)
    error.refused = exc.refused
    return error
