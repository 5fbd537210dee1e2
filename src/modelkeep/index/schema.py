"""The registry index tables, as SQLAlchemy Core metadata (SQLite and PostgreSQL).

These definitions are the *current* schema: a new registry is created from them
and stamped with :data:`SCHEMA_VERSION`. An older registry is brought up to the
same shape by the ordered steps in :mod:`modelkeep.index.migrations`, so every
change here needs a migration step there (a test compares the two).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
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

from .names import ALIASES, FIELDS, INFO, MODELS, TAGS, VERSIONS

metadata_obj = MetaData()

versions = Table(
    VERSIONS,
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
    # Lifecycle (schema 2): NULL while live, the ISO-8601 time it was trashed otherwise.
    Column("deleted_at", String(40), nullable=True),
    Column("description", Text, nullable=True),
    UniqueConstraint("model_name", "version", name="uq_modelkeep_versions_model_version"),
    Index("ix_modelkeep_versions_order", "model_name", "parsed", "sort_key"),
    Index("ix_modelkeep_versions_sha256", "sha256"),
    Index("ix_modelkeep_versions_artifact_key", "artifact_key"),
    # Schema 10: a model's live versions counted, and its last update found, off the index alone
    # (the models page asks both of every model it shows; see SqlIndex.summaries).
    Index("ix_modelkeep_versions_live", "model_name", "deleted_at", "updated_at"),
)

info = Table(
    INFO,
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


# -- lifecycle (schema 2) --------------------------------------------------------

# One row per model that has (or had) versions: the model's own description.
models = Table(
    MODELS,
    metadata_obj,
    Column("model_name", String(128), primary_key=True),
    Column("description", Text, nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

# Named pointers at versions (``production``, ``champion``); their moves are in history.
aliases = Table(
    ALIASES,
    metadata_obj,
    Column("model_name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("updated_at", String(40), nullable=False),
    # Signed moves (schema 6): a number that grows with every move of this alias, and the
    # mover's signature over (model, alias, version, its SHA-256, seq); NULL when unsigned.
    Column("seq", BigInteger, nullable=True),
    Column("signature", Text, nullable=True),
    # Schema 7: the version the alias pointed at before this move (signed with it), NULL if none.
    Column("previous", String(64), nullable=True),
    Index("ix_modelkeep_aliases_version", "model_name", "version"),
)

# Key/value tags on a model (version = '') or on one version.
tags = Table(
    TAGS,
    metadata_obj,
    Column("model_name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", Text, nullable=False),
    Index("ix_modelkeep_tags_key", "key"),
)

# Append-only audit log: one row per change, written in the change's own transaction.
history = Table(
    "modelkeep_history",
    metadata_obj,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(32), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("version", String(64), nullable=True),
    Column("alias", String(64), nullable=True),
    Column("key", String(256), nullable=True),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    # Schema 5: the signature of a signed event (an alias move, a version's removal), or NULL.
    Column("signature", Text, nullable=True),
    # Schema 7: the move number of a signed alias move (what its signature covers), else NULL.
    Column("seq", BigInteger, nullable=True),
    # Schema 9: the random id of the row's event file in the store (see modelkeep.eventlog),
    # NULL for rows written before it and not yet written out.
    Column("event_id", String(32), nullable=True),
    Index("ix_modelkeep_history_model", "model_name", "id"),
    Index("ix_modelkeep_history_alias", "model_name", "alias", "id"),
)


# -- search (schema 3) -----------------------------------------------------------

# Every scalar custom field of every version, one row each, so that search filters and
# orders on metrics and parameters with indexes instead of parsing each row's JSON.
# Keys: ``accuracy`` (top-level field), ``metrics.auc`` (nested dicts, dotted),
# ``params.max_depth`` (model_params). A number (or bool, as 1/0) is in ``num``, a
# string in ``str``; JSON nulls, lists and non-finite numbers get no row.
fields = Table(
    FIELDS,
    metadata_obj,
    Column("version_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("num", Double, nullable=True),
    Column("str", Text, nullable=True),
    # Covering: a range filter on one key yields version ids without touching the rows.
    Index("ix_modelkeep_fields_key_num", "key", "num", "version_id"),
    sqlite_with_rowid=False,  # rows live in the primary-key tree: one lookup per (version, key)
)


# -- write claims (schema 4) -----------------------------------------------------

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


# -- users (schema 5) ------------------------------------------------------------

# People who sign in to ``modelkeep ui`` (and whose API tokens the library accepts), with
# their role. Only an argon2 hash of a password is kept; a proxy-only user has none.
users = Table(
    "modelkeep_users",
    metadata_obj,
    Column("name", String(128), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

# Personal API tokens: only the SHA-256 of each token is kept (tokens are 256-bit random,
# so a fast hash is enough); ``Authorization: Bearer <token>`` acts as ``user_name``.
tokens = Table(
    "modelkeep_tokens",
    metadata_obj,
    Column("token_hash", String(64), primary_key=True),
    Column("user_name", String(128), nullable=False),
    Column("label", String(128), nullable=False),
    Column("created_at", String(40), nullable=False),
    # Schema 10: a short public id to list and revoke one token by, and an optional expiry.
    Column("token_id", String(32), nullable=True),
    Column("expires_at", String(40), nullable=True),
    Index("ix_modelkeep_tokens_user", "user_name"),
)

# -- grants (schema 10) ----------------------------------------------------------

# A role on the models a glob names, on top of the user's registry role (which may be
# ``none``: then the grants are all the user may see). See modelkeep.identity.
grants = Table(
    "modelkeep_grants",
    metadata_obj,
    Column("user_name", String(128), primary_key=True),
    Column("model_glob", String(128), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
)


# -- promotion policies (schema 7) -----------------------------------------------

# Rules for moving an alias: a glob of model names, an alias, and the conditions as JSON
# (see modelkeep.policies). Changes are recorded in the history (policy_set, policy_delete).
policies = Table(
    "modelkeep_policies",
    metadata_obj,
    Column("model_glob", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("conditions", Text, nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("updated_by", String(256), nullable=False),
)

# Approvals of one version (with the SHA-256 approved) for one alias, one row per user.
approvals = Table(
    "modelkeep_approvals",
    metadata_obj,
    Column("model_name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("user_name", String(256), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("at", String(40), nullable=False),
)


# -- webhooks (schema 8) ---------------------------------------------------------

# Subscribers to the history: where to POST which events. ``cursor`` is the last history id
# whose matching events were queued in ``modelkeep_deliveries`` (the outbox). Only the *path*
# of the HMAC secret is kept here, never the secret (see docs/events.md). ``lease_owner`` and
# ``lease_until`` let one dispatcher at a time deliver for the webhook.
webhooks = Table(
    "modelkeep_webhooks",
    metadata_obj,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),  # comma-separated patterns: alias.*,version.created
    Column("model_glob", String(256), nullable=True),
    Column("secret_file", Text, nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("lease_owner", String(256), nullable=True),
    Column("lease_until", String(40), nullable=True),
)

# The outbox: one row per (webhook, history event) to deliver, with its delivery id (the same
# on every retry, for de-duplication) and its state: pending, delivered or failed (given up).
deliveries = Table(
    "modelkeep_deliveries",
    metadata_obj,
    Column("delivery_id", String(64), primary_key=True),
    Column("webhook_id", BigInteger, nullable=False),
    Column("history_id", BigInteger, nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("event", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", String(40), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    UniqueConstraint("webhook_id", "history_id", name="uq_modelkeep_deliveries_event"),
    Index("ix_modelkeep_deliveries_pending", "webhook_id", "status", "history_id"),
)

# Every attempt at a delivery: when, how it ended (sending, ok, error, interrupted), the
# receiver's status code, and the error text.
delivery_attempts = Table(
    "modelkeep_delivery_attempts",
    metadata_obj,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", String(40), nullable=False),
    Column("status", String(16), nullable=False),
    Column("response_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Double, nullable=True),
    Index("ix_modelkeep_delivery_attempts_delivery", "delivery_id", "attempt"),
)
