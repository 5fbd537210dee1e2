"""Read an MLflow SQLAlchemy store (SQLite, PostgreSQL) with SQLAlchemy Core, MLflow not needed.

Tables read: ``registered_models``, ``model_versions``, ``registered_model_tags``,
``model_version_tags``, ``registered_model_aliases``, ``runs``, ``latest_metrics`` (or
``metrics``), ``params`` and, on MLflow 3, ``logged_models``. Tables are reflected, so columns
added or missing across MLflow versions (``storage_location``, ``workspace``, aliases before
2.3) are handled by name.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, select
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError
from ..index.sql import normalize_url
from .source import SourceModel, SourceRun, SourceVersion


class SqlStore:
    """An MLflow store behind a SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(normalize_url(url))
        self.base = _sqlite_folder(url)
        #: MLflow keeps a SQLite store's artifacts beside the database file; a server's
        #: (PostgreSQL, MySQL) artifacts can be anywhere, so they need ``--artifacts-dir``.
        self.artifact_root = self.base
        self.meta = MetaData()
        with self.engine.connect() as conn:
            from sqlalchemy import inspect

            names = set(inspect(conn).get_table_names())
            if "registered_models" not in names or "model_versions" not in names:
                raise ConfigError(
                    f"{self.engine.url.render_as_string(hide_password=True)} is not an MLflow registry: "
                    "it has no registered_models/model_versions tables"
                )
            self.tables: dict[str, Table] = {
                name: Table(name, self.meta, autoload_with=conn)
                for name in (
                    "registered_models",
                    "model_versions",
                    "registered_model_tags",
                    "model_version_tags",
                    "registered_model_aliases",
                    "runs",
                    "latest_metrics",
                    "metrics",
                    "params",
                    "logged_models",
                )
                if name in names
            }

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, conn: Connection, name: str) -> list[dict[str, Any]]:
        table = self.tables.get(name)
        if table is None:
            return []
        return [dict(row._mapping) for row in conn.execute(select(table))]

    def models(self) -> list[SourceModel]:
        with self.engine.connect() as conn:
            model_tags: dict[str, dict[str, str]] = defaultdict(dict)
            for row in self._rows(conn, "registered_model_tags"):
                model_tags[row["name"]][row["key"]] = row["value"] or ""
            version_tags: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
            for row in self._rows(conn, "model_version_tags"):
                version_tags[(row["name"], int(row["version"]))][row["key"]] = row["value"] or ""
            aliases: dict[str, dict[str, int]] = defaultdict(dict)
            for row in self._rows(conn, "registered_model_aliases"):
                aliases[row["name"]][row["alias"]] = int(row["version"])
            versions: dict[str, list[SourceVersion]] = defaultdict(list)
            for row in self._rows(conn, "model_versions"):
                number = int(row["version"])
                versions[row["name"]].append(
                    SourceVersion(
                        model_name=row["name"],
                        version=number,
                        created_ms=row.get("creation_time"),
                        description=row.get("description") or None,
                        source=row.get("source"),
                        storage_location=row.get("storage_location"),
                        run_id=row.get("run_id") or None,
                        stage=row.get("current_stage") or "None",
                        tags=version_tags.get((row["name"], number), {}),
                    )
                )
            models = [
                SourceModel(
                    name=row["name"],
                    description=row.get("description") or None,
                    tags=model_tags.get(row["name"], {}),
                    aliases=aliases.get(row["name"], {}),
                    versions=sorted(versions.get(row["name"], []), key=lambda v: v.version),
                )
                for row in self._rows(conn, "registered_models")
            ]
        return sorted(models, key=lambda m: m.name)

    def run(self, run_id: str) -> SourceRun | None:
        runs = self.tables.get("runs")
        if runs is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_uuid == run_id)).mappings().first()
            if row is None:
                return None
            return SourceRun(run_id, row.get("artifact_uri"), self._metrics(conn, run_id), self._params(conn, run_id))

    def _metrics(self, conn: Connection, run_id: str) -> dict[str, float]:
        """Latest value per key: MLflow's rule is the highest step, then the latest timestamp."""
        table = self.tables.get("latest_metrics")
        if table is None:
            table = self.tables.get("metrics")
        if table is None:
            return {}
        best: dict[str, tuple[int, int, float]] = {}
        for row in conn.execute(select(table).where(table.c.run_uuid == run_id)).mappings():
            value = math.nan if row.get("is_nan") else float(row["value"])
            rank = (int(row.get("step") or 0), int(row.get("timestamp") or 0), value)
            if row["key"] not in best or rank[:2] >= best[row["key"]][:2]:
                best[row["key"]] = rank
        return {key: rank[2] for key, rank in sorted(best.items())}

    def _params(self, conn: Connection, run_id: str) -> dict[str, str]:
        table = self.tables.get("params")
        if table is None:
            return {}
        rows = conn.execute(select(table.c.key, table.c.value).where(table.c.run_uuid == run_id))
        return {str(k): str(v) for k, v in sorted(rows)}

    def logged_model_location(self, model_id: str) -> str | None:
        table = self.tables.get("logged_models")
        if table is None:
            return None
        with self.engine.connect() as conn:
            found = conn.execute(select(table.c.artifact_location).where(table.c.model_id == model_id)).scalar()
        return None if found is None else str(found)


def _sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database file (where its relative artifact folders live)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or ":memory:" in url:
        return None
    return Path(url[len(prefix) :].split("?", 1)[0]).resolve().parent
