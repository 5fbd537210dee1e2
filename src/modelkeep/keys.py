"""Signing keys: ECDSA P-256 key pairs, the per-user key, and trusted public keys.

Key files are PEM (PKCS#8 private keys, SubjectPublicKeyInfo public keys), so
OpenSSL, ``cryptography`` and OpenSSF's ``model-signing`` read them as they are.
A file may start with one ``# modelkeep key name: NAME`` line; PEM readers skip it.

The per-user folder (:func:`config_dir`) holds:

* ``signing_key.pem``: the user's own private key, created on first save
  (mode 0600, folder 0700), never written to a registry;
* ``trusted/*.pub``: public keys this user trusts (a retired per-user key's
  public half goes there on rotation, so old versions keep verifying);
* ``retired/*.pem``: private keys replaced by ``modelkeep keys generate --rotate``.

``cryptography`` is imported only when a key is actually used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .storage.local import fsync_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

USER_KEY_FILE = "signing_key.pem"
TRUSTED_DIR = "trusted"
RETIRED_DIR = "retired"
NAME_LINE = "# modelkeep key name: "
#: A key name: what signatures record and ``keys list`` shows.
NAME_PATTERN = re.compile(r"[\w.@+-][\w .@+-]{0,63}")


def config_dir() -> Path:
    """The per-user folder: ``MODELKEEP_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/modelkeep``,
    else ``~/.config/modelkeep``."""
    explicit = os.environ.get("MODELKEEP_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "modelkeep"


def checked_files_dir() -> Path:
    """Where this user's record of already-checked local artifacts lives (memory-mapped loads
    skip hashing an unchanged file again: :class:`modelkeep.storage.verified.CheckedFiles`)."""
    return config_dir() / "checked"


def user_key_path() -> Path:
    """Where the per-user private key lives (it may not exist yet)."""
    return config_dir() / USER_KEY_FILE


def default_key_name() -> str:
    """``user@host``, the name a new per-user key records in its signatures."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers): the name is only a label
        user = "user"
    name = f"{user}@{socket.gethostname()}"
    cleaned = re.sub(r"[^\w.@+-]", "-", name)[:64]
    return cleaned or "modelkeep"


def check_name(name: str | None) -> str | None:
    """``name`` if it is a valid key name (letters, digits, ``. _ @ + -``, spaces; up to 64)."""
    if name is None:
        return None
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"invalid key name {name!r}: use up to 64 letters, digits, spaces and . _ @ + -, not starting with a space"
        )
    return name


def _reading() -> Any:
    """What reading a key needs of ``cryptography.hazmat.primitives.serialization``: its PEM
    loaders and encodings, without importing that package, whose ``__init__`` imports its SSH
    key support (ciphers, bcrypt): about 10 ms of ``modelkeep info``'s 150 (issue 29), which
    only reads the per-user key to check a signature. They are the same objects: the package
    re-exports the Rust binding's loaders (``serialization.base``) and the encodings of
    ``primitives._serialization`` (``tests/test_signing_keys.py`` checks it); any other layout
    of a future ``cryptography`` takes the package itself."""
    if _READING:
        return _READING[0]
    try:
        from cryptography.hazmat.bindings._rust import openssl
        from cryptography.hazmat.primitives import _serialization

        reading: Any = SimpleNamespace(
            load_pem_private_key=openssl.keys.load_pem_private_key,
            load_pem_public_key=openssl.keys.load_pem_public_key,
            Encoding=_serialization.Encoding,
            PublicFormat=_serialization.PublicFormat,
        )
    except (ImportError, AttributeError):
        from cryptography.hazmat.primitives import serialization

        reading = serialization
    _READING.append(reading)
    return reading


_READING: list[Any] = []


def _der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    serialization = _reading()
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_curve(key: Any, where: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        kind = getattr(getattr(pub, "curve", None), "name", type(pub).__name__)
        raise ConfigError(f"{where} is not an ECDSA P-256 key ({kind}); create one with 'modelkeep keys generate'")


@dataclass(frozen=True)
class PublicKey:
    """A public key that verifies signatures. ``fingerprint`` is the SHA-256 of its DER
    SubjectPublicKeyInfo, in hex; ``name`` is a label, ``source`` where it was read from."""

    key: ec.EllipticCurvePublicKey
    name: str | None = None
    source: str | None = None
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", hashlib.sha256(_der(self.key)).hexdigest())

    @property
    def label(self) -> str:
        """``name (fingerprint prefix)``, for people."""
        short = self.fingerprint[:16]
        return f"{self.name} ({short})" if self.name else short

    def verify(self, signature: bytes, payload: bytes) -> bool:
        """Whether ``signature`` is this key's ECDSA-SHA256 signature of ``payload``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        """The PEM text, with the name line when there is a name."""
        from cryptography.hazmat.primitives import serialization

        body = self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return _with_name(body, self.name)


@dataclass(frozen=True)
class PrivateKey:
    """A private key that signs. Keep it out of the registry."""

    key: ec.EllipticCurvePrivateKey
    name: str | None = None
    path: Path | None = None

    @functools.cached_property
    def public(self) -> PublicKey:
        """The public half (computed once: each signature names its fingerprint, twice)."""
        return PublicKey(self.key.public_key(), self.name, str(self.path) if self.path else None)

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, payload: bytes) -> bytes:
        """An ECDSA-SHA256 signature of ``payload`` (DER-encoded)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self.key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, with the name line when there is a name."""
        from cryptography.hazmat.primitives import serialization

        body = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return _with_name(body, self.name)


def _with_name(body: bytes, name: str | None) -> bytes:
    return (f"{NAME_LINE}{name}\n".encode() + body) if name else body


def _read_name(text: bytes) -> str | None:
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if first.startswith(NAME_LINE.strip()):
        name = first[len(NAME_LINE.strip()) :].strip()
        return name if NAME_PATTERN.fullmatch(name) else None
    return None


def generate(name: str | None = None) -> PrivateKey:
    """A new ECDSA P-256 key pair (in memory)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return PrivateKey(ec.generate_private_key(ec.SECP256R1()), check_name(name))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read an unencrypted PEM P-256 private key; :class:`ConfigError` names a bad file."""
    serialization = _reading()

    where = Path(path)
    text = _read(where, "signing key file")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key file {str(where)!r} is not an unencrypted PEM private key: {exc}") from None
    _check_curve(key, f"signing key file {str(where)!r}")
    return PrivateKey(key, _read_name(text), where)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a PEM P-256 public key (a trusted key); :class:`ConfigError` names a bad file."""
    where = Path(path)
    return public_key_from_pem(_read(where, "trusted key file"), f"trusted key file {str(where)!r}", str(where))


def public_key_from_pem(text: bytes, what: str = "public key", source: str | None = None) -> PublicKey:
    """A P-256 public key from PEM text; :class:`ConfigError` (starting with ``what``) otherwise."""
    serialization = _reading()
    if b"PRIVATE KEY-----" in text:
        raise ConfigError(f"{what} holds a private key; give its public key instead ('modelkeep keys export-public')")
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} is not a PEM public key: {exc}") from None
    _check_curve(key, what)
    return PublicKey(key, _read_name(text), source)


def names_key(entry: str, fingerprint: str | None) -> bool:
    """Whether ``entry`` (a fingerprint, or a prefix of at least 16 hex digits) names ``fingerprint``."""
    entry = entry.strip().lower()
    return fingerprint is not None and len(entry) >= 16 and fingerprint.startswith(entry)


def _make_private_dir(folder: Path) -> None:
    """Create ``folder`` (mode 0700 when this call creates it)."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)


def write_key_file(path: Path, data: bytes, *, replace: bool = False, mode: int = 0o600) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``; readers never see a partial file.

    Without ``replace``, an existing file wins: returns ``False`` and leaves it as it is,
    so processes racing to create the same key end with one key. Returns ``True`` when
    this call wrote the file.
    """
    _make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                return False
        fsync_dir(str(path.parent))
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def user_key(*, create: bool) -> PrivateKey | None:
    """The per-user private key; with ``create``, made on first use (``None`` if absent)."""
    path = user_key_path()
    if not path.exists():
        if not create:
            return None
        write_key_file(path, generate(default_key_name()).pem())  # a racing process may win: read back
    return load_private_key(path)


def trusted_dir_keys() -> list[PublicKey]:
    """The public keys in the per-user ``trusted/`` folder."""
    folder = config_dir() / TRUSTED_DIR
    if not folder.is_dir():
        return []
    return [load_public_key(p) for p in sorted(folder.glob("*.pub"))]


def trust_public_key(key: PublicKey) -> Path:
    """Copy ``key`` into the per-user ``trusted/`` folder (idempotent); returns its path."""
    path = config_dir() / TRUSTED_DIR / f"{key.fingerprint[:16]}.pub"
    write_key_file(path, key.pem(), replace=True, mode=0o644)
    return path


def rotate_user_key(name: str | None = None) -> tuple[PrivateKey, PrivateKey | None]:
    """Replace the per-user key with a new one; returns ``(new, old)``.

    The old private key moves to ``retired/`` and its public key to ``trusted/``,
    so versions it signed keep verifying until they are re-signed (``modelkeep sign --all``).
    """
    path = user_key_path()
    old = load_private_key(path) if path.exists() else None
    new = generate(check_name(name) or default_key_name())
    if old is not None:
        trust_public_key(old.public)
        write_key_file(config_dir() / RETIRED_DIR / f"{old.fingerprint[:16]}.pem", old.pem(), replace=True)
    write_key_file(path, new.pem(), replace=True)
    return PrivateKey(new.key, new.name, path), old
