"""The client half of :mod:`modelkeep.api.admin_routes`: ``gc``, ``reindex`` and ``backfill_params`` on
:class:`~modelkeep.api.client.HttpRegistry`, run by the server on its own store (admins only),
answering the same reports as a local registry's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..lifecycle import Age
    from ..maintenance import GcReport
    from ..metadata import ModelMetadata
    from ..params_backfill import BackfillReport


class AdminMixin:
    """Garbage collection and reindexing of a registry server's store, run by the server, and the
    backfill of old versions' parameters, loaded here and recorded by the server."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def gc(
        self,
        *,
        dry_run: bool = False,
        min_age_seconds: float = 3600.0,
        purge_deleted_older_than: Age | None = None,
    ) -> GcReport:
        """Have the server remove its crash leftovers (see :meth:`ModelPersistence.gc`); admins only."""
        import datetime as _dt

        older = purge_deleted_older_than
        if isinstance(older, _dt.timedelta):
            older = older.total_seconds()
        body = {"dry_run": bool(dry_run), "min_age_seconds": min_age_seconds, "purge_deleted_older_than": older}
        return gc_report_from_wire(self.request("POST", "/admin/gc", json=body)["report"])

    def reindex(self) -> int:
        """Have the server rebuild its index from the sidecar files; the number of versions. Admins only."""
        return int(self.request("POST", "/admin/reindex")["versions"])

    def backfill_params(
        self, model_name: str | None = None, version: str | None = None, *, dry_run: bool = False
    ) -> BackfillReport:
        """Record the deep parameters of versions saved before modelkeep 0.2 (see
        :meth:`ModelPersistence.backfill_params`). Admins only. The server never unpickles: each
        old version is loaded here, with this client's keys and allow-list, and what it captured
        is sent to the server, which takes only what a backfill could have produced."""
        from ..params_backfill import backfill_params

        self.request("POST", "/admin/backfill-params", json={})  # an admin? before loading anything

        def rewrite(record: ModelMetadata, fields: dict[str, Any]) -> None:
            body = {
                "model_name": record.model_name,
                "version": record.version,
                "fields": fields,
                "expect": record.to_dict(),
            }
            self.request("POST", "/admin/backfill-params", json=body)

        return backfill_params(self, model_name, version, dry_run=dry_run, rewrite=rewrite)


def gc_report_from_wire(data: dict[str, Any]) -> GcReport:
    """A :class:`~modelkeep.maintenance.GcReport` from its ``to_dict()``."""
    from ..maintenance import GcReport, Leftover

    return GcReport(
        dry_run=bool(data["dry_run"]),
        min_age_seconds=float(data["min_age_seconds"]),
        removed=[Leftover(**item) for item in data["removed"]],
        kept=[Leftover(**item) for item in data["kept"]],
        repaired=[str(k) for k in data["repaired"]],
        errors=[str(e) for e in data["errors"]],
        purged=[(str(m), str(v)) for m, v in data["purged"]],
        released_claims=[str(c) for c in data["released_claims"]],
    )
