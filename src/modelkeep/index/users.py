"""The ``modelkeep_users``, ``modelkeep_tokens`` and ``modelkeep_grants`` rows: who may sign in,
with what role, and what role on which models.

Plain storage, no hashing: :mod:`modelkeep.users` hashes passwords (argon2) and
tokens (SHA-256) before they reach this module, and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, func, insert, select, update

from ..errors import InvalidNameError, UserNotFoundError
from .audit import now
from .common import retry_on_disconnect as _retry_on_disconnect
from .schema import grants, tokens, users

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
    """Who a token belongs to, and when the token expires (``None``: never)."""

    user: UserRow
    token_id: str
    expires_at: str | None


class UserRows:
    """Users and tokens of one :class:`SqlIndex`."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index

    @_retry_on_disconnect
    def add(self, name: str, role: str, password_hash: str | None) -> None:
        at = now()
        with self._index._write() as conn:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first() is not None:
                raise InvalidNameError(f"user '{name}' exists already: use 'modelkeep users passwd' or 'role'")
            conn.execute(
                insert(users).values(name=name, role=role, password_hash=password_hash, created_at=at, updated_at=at)
            )

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
            if conn.execute(update(users).where(users.c.name == name).values(**values)).rowcount == 0:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")

    @_retry_on_disconnect
    def remove(self, name: str) -> None:
        """Remove a user and every token of theirs."""
        with self._index._write() as conn:
            conn.execute(delete(tokens).where(tokens.c.user_name == name))
            conn.execute(delete(grants).where(grants.c.user_name == name))
            if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")

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

    @staticmethod
    def _require_user(conn: Connection, name: str) -> None:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first() is None:
            raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")

    @_retry_on_disconnect
    def token_owner(self, token_hash: str) -> TokenOwner | None:
        """The user a token hash belongs to (joined in one query), with the token's id and expiry."""
        with self._index._read() as conn:
            row = conn.execute(
                select(users, tokens.c.token_id, tokens.c.expires_at)
                .join(tokens, tokens.c.user_name == users.c.name)
                .where(tokens.c.token_hash == token_hash)
            ).first()
        if row is None:
            return None
        return TokenOwner(UserRow(*row[:5]), row[5] or "", row[6])

    @_retry_on_disconnect
    def tokens_of(self, name: str) -> list[TokenRow]:
        """Each of ``name``'s tokens, oldest first."""
        with self._index._read() as conn:
            rows = conn.execute(
                select(tokens.c.token_id, tokens.c.label, tokens.c.created_at, tokens.c.expires_at)
                .where(tokens.c.user_name == name)
                .order_by(tokens.c.created_at)
            )
            return [TokenRow(r[0] or "", r[1], r[2], r[3]) for r in rows]

    @_retry_on_disconnect
    def revoke_tokens(self, name: str) -> int:
        with self._index._write() as conn:
            return int(conn.execute(delete(tokens).where(tokens.c.user_name == name)).rowcount)

    @_retry_on_disconnect
    def revoke_token(self, name: str, token_id: str) -> int:
        """Remove ``name``'s token ``token_id``; returns 1, or 0 when they have no such token."""
        with self._index._write() as conn:
            found = delete(tokens).where(tokens.c.user_name == name, tokens.c.token_id == token_id)
            return int(conn.execute(found).rowcount)

    # -- grants -------------------------------------------------------------------------
    @_retry_on_disconnect
    def grant(self, name: str, glob: str, role: str) -> None:
        """Give ``name`` ``role`` on the models ``glob`` names (replacing a grant on the same glob)."""
        with self._index._write() as conn:
            self._require_user(conn, name)
            where = (grants.c.user_name == name, grants.c.model_glob == glob)
            if conn.execute(update(grants).where(*where).values(role=role)).rowcount == 0:
                conn.execute(insert(grants).values(user_name=name, model_glob=glob, role=role, created_at=now()))

    @_retry_on_disconnect
    def revoke_grant(self, name: str, glob: str) -> int:
        """Remove ``name``'s grant on ``glob``; returns 1, or 0 when there was none."""
        with self._index._write() as conn:
            found = delete(grants).where(grants.c.user_name == name, grants.c.model_glob == glob)
            return int(conn.execute(found).rowcount)

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
