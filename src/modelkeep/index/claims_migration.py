"""Index schema migration step 4: team-mode write claims (the ``modelkeep_claims`` table).

Registered by :mod:`modelkeep.index.migrations` as step 4. Existing registries have no
save in progress that used claims, so there is nothing to backfill: the table starts empty.
"""

from __future__ import annotations

from sqlalchemy import Connection

from .schema import claims

VERSION = 4
SUMMARY = "team-mode write claims (modelkeep_claims)"


def upgrade(conn: Connection, dialect: str) -> None:
    """Create ``modelkeep_claims`` (and its token index) if missing; same DDL on SQLite and PostgreSQL."""
    del dialect  # one code path: SQLAlchemy emits the right DDL for both
    claims.create(conn, checkfirst=True)
