"""``modelkeep doctor``: check in a few seconds that a registry's settings work.

One check per line: the index is reachable and at the schema this modelkeep
reads; the store is reachable, writable and readable (a small probe object
under ``.tmp/`` is written, read back and removed); where the signing key and
the trusted types come from; any write claims left by writers that died.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
        key = f"{TMP_DIR}/doctor-{uuid.uuid4().hex}.probe"
        probe = b"modelkeep doctor probe\n"
        try:
            store.write_bytes(key, probe)
            try:
                if store.read_bytes(key) != probe:
                    raise ModelKeepError("the probe read back differs from what was written")
            finally:
                store.delete(key, missing_ok=True)
            report.checks.append(
                Check("store", True, f"{store.url}: writable and readable (probe written and removed)")
            )
        except (ModelKeepError, OSError) as exc:
            report.checks.append(Check("store", False, f"{store.url}: {exc}"))

    key_from = _source("MODELKEEP_SIGNING_KEY", p.signing_key is not None)
    report.checks.append(Check("signing key", True, f"from {key_from}" if key_from != "not set" else "not set"))
    types_from = _source("MODELKEEP_TRUSTED_TYPES", bool(p.trusted_types))
    detail = f"{len(p.trusted_types)} from {types_from}" if p.trusted_types else "none (built-in allow-list only)"
    report.checks.append(Check("trusted types", True, detail))
    return report


def _check_index(sql_index: Any, url: str, connect_timeout: float, read_timeout: float) -> Check:
    from .index.claims import count_claims
    from .index.migrations import SCHEMA_VERSION

    try:
        index = sql_index(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
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
