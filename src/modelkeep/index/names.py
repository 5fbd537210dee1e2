"""Table names and the current schema number, without SQLAlchemy.

:mod:`.schema` defines the tables under these names and :mod:`.migrations` ends at
:data:`SCHEMA_VERSION` (both check it on import); the search compiler and the
command line's read-only SQLite reader (:mod:`modelkeep.index.readonly`) use them
to write SQL text without importing SQLAlchemy.
"""

from __future__ import annotations

VERSIONS = "modelkeep_versions"
INFO = "modelkeep_info"
ALIASES = "modelkeep_aliases"
TAGS = "modelkeep_tags"
FIELDS = "modelkeep_fields"
MODELS = "modelkeep_models"

#: The index schema this code reads and writes (the last step of :mod:`.migrations`).
SCHEMA_VERSION = 11
