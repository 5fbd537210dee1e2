"""Export a version with a signature that OpenSSF's ``model-signing`` verifier accepts.

``export_signed`` writes a folder holding the version's artifact exactly as
stored (re-hashed on the way out), its ``*_metadata.json`` record and, for the
``native`` format, its blobs under ``blobs/``; then it signs the folder with
``model-signing``'s bring-your-own-key signer and the same ECDSA P-256 key that
signs the version in modelkeep. Anyone with the public key checks it with::

    model_signing verify key DIR --signature DIR.sig --public_key modelkeep.pub

Needs ``pip install modelkeep[signing-interop]`` (``model-signing`` and the
``pyopenssl`` that it imports without declaring).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BackendUnavailableError, SignatureError, VersionExistsError

if TYPE_CHECKING:
    from .keys import PrivateKey
    from .registry import ModelPersistence
    from .storage import ArtifactStore


def _copy_verified(store: ArtifactStore, key: str, sha256: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with store.open_verified(key, sha256, lambda _n: None) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def export_signed(
    p: ModelPersistence,
    model_name: str,
    version: str | None,
    out_dir: str | os.PathLike[str],
    *,
    signature: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write the version to ``out_dir`` and its OpenSSF signature to ``signature``
    (default: ``<out_dir>.sig``); returns both paths.

    Through a registry server the files stream from the server and are checked here, and the
    keys are this client's. Only a version that carries a signature this registry trusts is exported: the
    export vouches for it with the same key. The signing key must be an ECDSA key
    (``signing_key_file`` or the per-user key): an HMAC secret cannot make a
    public-key signature.
    """
    try:
        import model_signing.signing as ms_signing
    except ImportError as exc:
        raise BackendUnavailableError(
            f"exporting an OpenSSF-signed model needs model-signing: {exc} (pip install modelkeep[signing-interop])"
        ) from exc

    record = p.get_version(model_name, version)
    verdict = p.keyring.check(record)
    where = f"model '{record.model_name}' version '{record.version}'"
    if not verdict.trusted:
        raise SignatureError(
            f"{where} is {verdict.status} ({verdict.reason}): "
            "sign it first ('modelkeep sign') before exporting it signed"
        )
    key = p.keyring.private or (p.keyring.signer() if not p.keyring.hmac_key else None)
    if key is None or isinstance(key, (str, bytes)) or key.path is None:
        raise SignatureError(
            "exporting with an OpenSSF signature needs an ECDSA private key file: set signing_key_file, "
            "or use the per-user key (no signing_key)"
        )
    out = Path(out_dir)
    sig = Path(signature) if signature is not None else out.with_name(out.name + ".sig")
    for path in (out, sig):
        if path.exists() and not force:
            raise VersionExistsError(f"{str(path)!r} already exists; use force to replace it")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    art = record.artifact
    assert art is not None
    # through a registry server: the version's files as the server streams them (checked here)
    from .api.client_transfers import VersionFiles
    from .bundle import is_remote

    store = VersionFiles(p, record) if is_remote(p) else p.store
    _copy_verified(store, art.key, art.sha256, out / art.key.rsplit("/", 1)[-1])
    for sha, _size in art.extra.get("blobs") or []:
        from .layout import blob_key

        _copy_verified(store, blob_key(str(sha)), str(sha), out / "blobs" / str(sha))
    meta = out / f"{record.model_name}_v{record.version}_metadata.json"
    meta.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    _sign_folder(ms_signing, out, sig, key)
    return out, sig


def _sign_folder(ms_signing: object, folder: Path, signature: Path, key: PrivateKey) -> None:
    signature.parent.mkdir(parents=True, exist_ok=True)
    config = ms_signing.Config().use_elliptic_key_signer(private_key=key.path)  # type: ignore[attr-defined]
    config.sign(folder, signature)
