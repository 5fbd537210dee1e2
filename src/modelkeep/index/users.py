"""The ``modelkeep_users``, ``modelkeep_tokens`` and ``modelkeep_grants`` rows: who may sign in,
with what role, and what role on which models.

Plain storage, no hashing: :mod:`modelkeep.users` hashes passwords (argon2) and
tokens (SHA-256) before they reach this module, and checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from ..errors import InvalidNameError, UserNotFoundError
from ..identity import Identity, acting, acting_as
from .audit import USERS_LOG, now, write_history
from .common import retry_on_disconnect as _retry_on_disconnect
from .schema import grants, tokens, users

#: The owner of a token hash, with the token's id and expiry; and the same with the owner's grants.
_OWNER = (
    select(users, tokens.c.token_id, tokens.c.expires_at)
    .join(tokens, tokens.c.user_name == users.c.name)
    .where(tokens.c.token_hash == bindparam("token_hash"))
)
_OWNER_WITH_GRANTS = (
    _OWNER.add_columns(grants.c.model_glob, grants.c.role)
    .outerjoin(grants, grants.c.user_name == users.c.name)
    .order_by(grants.c.model_glob)
)

if TYPE_CHECKING:
    from .sql import SqlIndex


@dataclass(frozen=True)
class UserRow:
    """One user as stored: the password hash is argon2's encoded string, or ``None``."""

    name: str
    role: str
    password_hash: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class TokenRow:
    """One API token as listed: its public id (to revoke it by), label, creation and expiry
    (``None``: never expires), as ISO-8601 UTC strings."""

    token_id: str
    label: str
    created_at: str
    expires_at: str | None


@dataclass(frozen=True)
class TokenOwner:
    """Who a token belongs to, and when the token expires (``None``: never); with the user's
    grants, ``(glob, role)`` by glob, when :meth:`UserRows.token_owner` is asked for them."""

    user: UserRow
    token_id: str
    expires_at: str | None
    grants: tuple[tuple[str, str], ...] = ()


class UserRows:
    """Users and tokens of one :class:`SqlIndex`."""

    def __init__(self, index: SqlIndex, who: Callable[[], Identity | None] | None = None) -> None:
        self._index = index
        #: Who acts when no :func:`~modelkeep.identity.acting_as` block says (the registry's own
        #: identity): the actor of the history rows of changes.
        self._who = who

    @_retry_on_disconnect
    def add(self, name: str, role: str, password_hash: str | None) -> None:
        at = now()
        with self._index._write() as conn:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first() is not None:
                raise InvalidNameError(f"user '{name}' exists already: use 'modelkeep users passwd' or 'role'")
            conn.execute(
                insert(users).values(name=name, role=role, password_hash=password_hash, created_at=at, updated_at=at)
            )
            self._log(conn, "user_add", name, after={"role": role, "password": password_hash is not None})

    @_retry_on_disconnect
    def get(self, name: str) -> UserRow | None:
        with self._index._read() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        return None if row is None else UserRow(*row)

    @_retry_on_disconnect
    def all(self) -> list[UserRow]:
        with self._index._read() as conn:
            return [UserRow(*r) for r in conn.execute(select(users).order_by(users.c.name))]

    @_retry_on_disconnect
    def count(self) -> int:
        with self._index._read() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    @_retry_on_disconnect
    def update(self, name: str, *, role: str | None = None, password_hash: str | None = None) -> None:
        values: dict[str, str] = {"updated_at": now()}
        if role is not None:
            values["role"] = role
        if password_hash is not None:
            values["password_hash"] = password_hash
        with self._index._write() as conn:
            before = conn.execute(select(users.c.role).where(users.c.name == name)).scalar()
            if conn.execute(update(users).where(users.c.name == name).values(**values)).rowcount == 0:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")
            if role is not None:
                self._log(conn, "user_role", name, before=before, after=role)
            if password_hash is not None:
                self._log(conn, "user_password", name)  # that it changed: never the password or its hash

    @_retry_on_disconnect
    def remove(self, name: str) -> None:
        """Remove a user and every token of theirs."""
        with self._index._write() as conn:
            role = conn.execute(select(users.c.role).where(users.c.name == name)).scalar()
            revoked = conn.execute(delete(tokens).where(tokens.c.user_name == name)).rowcount
            dropped = conn.execute(delete(grants).where(grants.c.user_name == name)).rowcount
            if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")
            self._log(conn, "user_remove", name, before={"role": role, "tokens": revoked, "grants": dropped})

    @_retry_on_disconnect
    def add_token(self, name: str, token_hash: str, label: str, token_id: str, expires_at: str | None) -> None:
        with self._index._write() as conn:
            self._require_user(conn, name)
            conn.execute(
                insert(tokens).values(
                    token_hash=token_hash,
                    user_name=name,
                    label=label,
                    created_at=now(),
                    token_id=token_id,
                    expires_at=expires_at,
                )
            )
            self._log(conn, "token_new", name, after={"token_id": token_id, "label": label, "expires_at": expires_at})

    def _log(self, conn: Connection, action: str, user: str, *, before: Any = None, after: Any = None) -> None:
        """One history row about ``user`` (see :data:`~.audit.USERS_LOG`), in the change's
        transaction, by the identity acting (else the registry's own)."""
        who = acting() or (self._who() if self._who is not None else None)
        with acting_as(who):
            write_history(conn, action, USERS_LOG, key=user, before=before, after=after)

    @staticmethod
    def _require_user(conn: Connection, name: str) -> None:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first() is None:
            raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")

    @_retry_on_disconnect
    def token_owner(self, token_hash: str, *, with_grants: bool = False) -> TokenOwner | None:
        """The user a token hash belongs to, with the token's id and expiry (and ``with_grants``,
        the user's grants), joined in one query: a request signed in by token costs one round trip."""
        # every API request asks: a statement built once, sent as is
        rows = self._index.fixed_rows(_OWNER_WITH_GRANTS if with_grants else _OWNER, {"token_hash": token_hash})
        if not rows:
            return None
        row = rows[0]
        granted = tuple((r[7], r[8]) for r in rows if r[7] is not None) if with_grants else ()
        return TokenOwner(UserRow(*row[:5]), row[5] or "", row[6], granted)

    @_retry_on_disconnect
    def tokens_of(self, name: str) -> list[TokenRow]:
        """Each of ``name``'s tokens, oldest first."""
        with self._index._read() as conn:
            self._require_user(conn, name)  # an unknown name is a typo, not a user without tokens
            rows = conn.execute(
                select(tokens.c.token_id, tokens.c.label, tokens.c.created_at, tokens.c.expires_at)
                .where(tokens.c.user_name == name)
                .order_by(tokens.c.created_at)
            )
            return [TokenRow(r[0] or "", r[1], r[2], r[3]) for r in rows]

    @_retry_on_disconnect
    def revoke_tokens(self, name: str) -> int:
        with self._index._write() as conn:
            self._require_user(conn, name)  # "revoked 0 tokens" of a mistyped name would reassure wrongly
            ids = conn.execute(select(tokens.c.token_id).where(tokens.c.user_name == name)).scalars().all()
            revoked = int(conn.execute(delete(tokens).where(tokens.c.user_name == name)).rowcount)
            if revoked:
                self._log(conn, "token_revoke", name, before={"token_ids": sorted(str(i) for i in ids)})
            return revoked

    @_retry_on_disconnect
    def revoke_token(self, name: str, token_id: str) -> int:
        """Remove ``name``'s token ``token_id``; returns 1, or 0 when they have no such token."""
        with self._index._write() as conn:
            found = delete(tokens).where(tokens.c.user_name == name, tokens.c.token_id == token_id)
            revoked = int(conn.execute(found).rowcount)
            if revoked:
                self._log(conn, "token_revoke", name, before={"token_ids": [token_id]})
            return revoked

    # -- grants -------------------------------------------------------------------------
    @_retry_on_disconnect
    def grant(self, name: str, glob: str, role: str) -> None:
        """Give ``name`` ``role`` on the models ``glob`` names (replacing a grant on the same glob)."""
        with self._index._write() as conn:
            self._require_user(conn, name)
            where = (grants.c.user_name == name, grants.c.model_glob == glob)
            before = conn.execute(select(grants.c.role).where(*where)).scalar()
            if conn.execute(update(grants).where(*where).values(role=role)).rowcount == 0:
                conn.execute(insert(grants).values(user_name=name, model_glob=glob, role=role, created_at=now()))
            self._log(
                conn,
                "grant",
                name,
                before=None if before is None else {"glob": glob, "role": before},
                after={"glob": glob, "role": role},
            )

    @_retry_on_disconnect
    def revoke_grant(self, name: str, glob: str) -> int:
        """Remove ``name``'s grant on ``glob``; returns 1, or 0 when there was none."""
        with self._index._write() as conn:
            where = (grants.c.user_name == name, grants.c.model_glob == glob)
            role = conn.execute(select(grants.c.role).where(*where)).scalar()
            removed = int(conn.execute(delete(grants).where(*where)).rowcount)
            if removed:
                self._log(conn, "grant_revoke", name, before={"glob": glob, "role": role})
            return removed

    @_retry_on_disconnect
    def grants_of(self, name: str) -> list[tuple[str, str]]:
        """``(glob, role)`` of each of ``name``'s grants, by glob."""
        with self._index._read() as conn:
            rows = conn.execute(
                select(grants.c.model_glob, grants.c.role)
                .where(grants.c.user_name == name)
                .order_by(grants.c.model_glob)
            )
            return [(r[0], r[1]) for r in rows]
