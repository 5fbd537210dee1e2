"""``modelkeep doctor``: check in a few seconds that a registry's settings work.

One check per line: the index is reachable and at the schema this modelkeep
reads; the store is reachable, writable and readable (a small probe object
under ``.tmp/`` is written, read back and removed; a local folder that does not
exist is not created); which key signs a save (the per-user ECDSA key is reported,
never created) and where the trusted types come from; any write claims left by
writers that died; and whether the optional C extensions (pickle pre-scan, tree check, git check) were built.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_sources import is_server_url
from .errors import ModelKeepError

if TYPE_CHECKING:
    from .config import Settings


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def _source(env_var: str, configured: bool) -> str:
    if os.environ.get(env_var):
        return f"the environment ({env_var})"
    return "the config file" if configured else "not set"


def run_doctor(settings: Settings) -> DoctorReport:
    """Run every check against ``settings``; never raises for a failing check."""
    from .index.sql import SqlIndex
    from .storage import TMP_DIR, open_store

    report = DoctorReport()
    p = settings.persistence
    server = next((u for u in (p.registry_url, p.models_dir) if is_server_url(u)), None)
    if server is not None:  # a registry server: the store and the index are its business
        report.checks.append(_check_server(server, p.token.get_secret_value() if p.token else None))
        _key_checks(report, p)
        report.checks.append(_scanner_check())
        return report
    store = None
    try:
        store = open_store(
            p.models_dir, p.storage_options or None, connect_timeout=p.connect_timeout, read_timeout=p.read_timeout
        )
    except ModelKeepError as exc:
        report.checks.append(Check("store", False, str(exc)))

    index_url = p.registry_url
    if index_url is None and store is not None and not store.shared:
        folder = p.registry_path or store.root
        index_url = f"sqlite:///{os.path.abspath(os.path.join(folder, 'registry.db'))}"
        if not os.path.isfile(os.path.join(folder, "registry.db")):
            index_url = None
            report.checks.append(Check("index", False, f"no registry.db in {folder!r} (save a model first)"))
    elif index_url is None and p.registry_path is not None:
        index_url = f"sqlite:///{os.path.abspath(os.path.join(p.registry_path, 'registry.db'))}"
    elif index_url is None:
        report.checks.append(Check("index", False, "models_dir is remote and no registry_url is set"))
    if index_url is not None:
        report.checks.append(_check_index(SqlIndex, index_url, p.connect_timeout, p.read_timeout))

    if store is not None:
        report.checks.append(_check_store(store, TMP_DIR))
    _key_checks(report, p)
    report.checks.append(_scanner_check())
    return report


def _scanner_check() -> Check:
    """Which of the optional C extensions were built (setup.py): never a failure, each has a
    pure-Python fallback that gives the same answers, only slower."""
    from .formats._fastpath import SCANNER
    from .formats.tree_links import TREE_SCANNER
    from .lineage import STAT_CHECK

    built = {
        "formats/_plainscan.c": (SCANNER, "pickles of many small objects load a few times slower"),
        "formats/_treelinks.c": (TREE_SCANNER, "large tree ensembles load slower"),
        "_statscan.c": (STAT_CHECK, "the lineage's git check of a small save is slower"),
    }
    missing = [f"{name} ({cost})" for name, (which, cost) in built.items() if which != "c"]
    if not missing:
        return Check("compiled extensions", True, "compiled (" + ", ".join(built) + ")")
    return Check(
        "compiled extensions",
        True,
        "pure Python for "
        + "; ".join(missing)
        + ": the C extensions were not built (reinstall with a C compiler and the Python headers)",
    )


def _key_checks(report: DoctorReport, p: Any) -> None:
    """What signs a save, and where the trusted types come from (local settings, server or not)."""
    report.checks.append(_signing_check(p))
    types_from = _source("MODELKEEP_TRUSTED_TYPES", bool(p.trusted_types))
    detail = f"{len(p.trusted_types)} from {types_from}" if p.trusted_types else "none (built-in allow-list only)"
    report.checks.append(Check("trusted types", True, detail))


def _check_server(url: str, token: str | None) -> Check:
    """The registry server answers, and who this client is signed in as there."""
    from .api.client import HttpRegistry

    try:
        with HttpRegistry(url, token=token) as client:
            info = client.server_info()
    except ModelKeepError as exc:
        return Check("server", False, f"{url}: {exc}")
    user = info.get("user")
    who = f"signed in as {user.get('name')} ({user.get('role')})" if isinstance(user, dict) else "no sign-in"
    return Check("server", True, f"{url}: modelkeep {info.get('version')}, protocol {info.get('protocol')}, {who}")


def _check_store(store: Any, tmp_dir: str) -> Check:
    """Write, read back and remove a probe; a local folder that does not exist is not created
    (only a save creates it): the check then says whether a save could create it."""
    where = store.location()
    root = str(where) if isinstance(where, Path) else None
    if root is not None and not os.path.isdir(root):
        parent = os.path.dirname(os.path.abspath(root))
        while not os.path.exists(parent) and parent != os.path.dirname(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return Check("store", False, f"{root} cannot be created: cannot write into {parent}, a file, not a folder")
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("store", True, f"{root} does not exist yet; the first save creates it (under {parent})")
        return Check("store", False, f"{root} cannot be created: cannot write into {parent} (permission denied)")
    tmp_existed = root is not None and os.path.isdir(os.path.join(root, tmp_dir))
    key = f"{tmp_dir}/doctor-{uuid.uuid4().hex}.probe"
    probe = b"modelkeep doctor probe\n"
    try:
        store.write_bytes(key, probe)
        try:
            if store.read_bytes(key) != probe:
                raise ModelKeepError("the probe read back differs from what was written")
        finally:
            store.delete(key, missing_ok=True)
            if root is not None and not tmp_existed:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, tmp_dir))
        return Check("store", True, f"{store.url}: writable and readable (probe written and removed)")
    except (ModelKeepError, OSError) as exc:
        return Check("store", False, f"{store.url}: {exc}")


def _signing_check(p: Any) -> Check:
    """What signs a save, as ``ModelPersistence`` resolves it; the per-user key is only read, never made."""
    from . import keys

    if p.signing_key is not None:
        return Check("signing key", True, f"shared HMAC key from {_source('MODELKEEP_SIGNING_KEY', True)}")
    if p.signing_key_file:
        where = _source("MODELKEEP_SIGNING_KEY_FILE", True)
        try:
            key = keys.load_private_key(p.signing_key_file)
        except ModelKeepError as exc:
            return Check("signing key", False, f"{p.signing_key_file} (from {where}): {exc}")
        return Check("signing key", True, f"ECDSA key {p.signing_key_file} from {where}: {key.public.label}")
    path = keys.user_key_path()
    try:
        user = keys.user_key(create=False)
    except ModelKeepError as exc:
        return Check("signing key", False, f"per-user ECDSA key {path}: {exc}")
    if user is None:
        return Check("signing key", True, f"per-user ECDSA key {path}: not created yet (the first save creates it)")
    return Check("signing key", True, f"per-user ECDSA key {path}: {user.public.label}")


def _check_index(sql_index: Any, url: str, connect_timeout: float, read_timeout: float) -> Check:
    from .index.claims import count_claims
    from .index.migrations import SCHEMA_VERSION

    try:
        index = sql_index(url, connect_timeout=connect_timeout, read_timeout=read_timeout, create=False)
    except ModelKeepError as exc:
        return Check("index", False, str(exc))
    try:
        claims = count_claims(index)
        held = f"; {claims} write claim(s) held" if claims else ""
        return Check("index", True, f"{index.safe_url}: reachable, schema {SCHEMA_VERSION}{held}")
    except ModelKeepError as exc:
        return Check("index", False, f"{index.safe_url}: {exc}")
    finally:
        index.close()
