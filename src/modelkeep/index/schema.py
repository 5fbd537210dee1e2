"""The registry index tables, as SQLAlchemy Core metadata (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

#: Bumped when the tables change in a way older code cannot read.
SCHEMA_VERSION = 1

metadata_obj = MetaData()

versions = Table(
    "modelkeep_versions",
    metadata_obj,
    # Autoincrement id doubles as the creation order ("most recently created").
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    # parsed/sort_key let SQL order versions: bytewise order of sort_key == version order.
    Column("parsed", Boolean, nullable=False),
    Column("sort_key", LargeBinary(512), nullable=True),
    Column("model_type", String(256), nullable=False),
    Column("artifact_key", String(1024), nullable=False),
    Column("format", String(32), nullable=False),
    Column("compression", String(32), nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    # The whole ModelMetadata.to_dict() as JSON text: metadata, environment, signature.
    Column("record", Text, nullable=False),
    UniqueConstraint("model_name", "version", name="uq_modelkeep_versions_model_version"),
    Index("ix_modelkeep_versions_order", "model_name", "parsed", "sort_key"),
    Index("ix_modelkeep_versions_sha256", "sha256"),
    Index("ix_modelkeep_versions_artifact_key", "artifact_key"),
)

info = Table(
    "modelkeep_info",
    metadata_obj,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# Which versions use which content-addressed blobs (native format), so that
# deletion and gc never remove a blob another version still needs.
blob_refs = Table(
    "modelkeep_blob_refs",
    metadata_obj,
    Column("model_name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    UniqueConstraint("model_name", "version", "sha256", name="uq_modelkeep_blob_refs"),
    Index("ix_modelkeep_blob_refs_sha256", "sha256"),
)

# Write claims (team mode): a version is claimed here, in a committed row, before any byte is
# written under its folder, and the claim is checked again when the version row is committed.
# Unlike a lock, a claim survives a dropped connection. See modelkeep.index.claims.
claims = Table(
    "modelkeep_claims",
    metadata_obj,
    Column("model_name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    # A random token per save attempt: only the attempt that holds it may write or delete.
    Column("token", String(64), nullable=False),
    # host/pid-namespace/pid/start-time of the claiming process (to spot dead writers).
    Column("owner", String(256), nullable=False),
    Column("claimed_at", String(40), nullable=False),
    # "save" or "delete": what the claimer is doing to the version's files.
    Column("purpose", String(16), nullable=False),
    PrimaryKeyConstraint("model_name", "version", name="pk_modelkeep_claims"),
    Index("ix_modelkeep_claims_token", "token", unique=True),
)
