"""The ``modelkeep_users`` and ``modelkeep_tokens`` rows: who may sign in, with what role.

Plain storage, no hashing: :mod:`modelkeep.users` hashes passwords (argon2) and
tokens (SHA-256) before they reach this module, and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update

from ..errors import InvalidNameError, UserNotFoundError
from .audit import now
from .common import retry_on_disconnect as _retry_on_disconnect
from .schema import tokens, users

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
            if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")

    @_retry_on_disconnect
    def add_token(self, name: str, token_hash: str, label: str) -> None:
        with self._index._write() as conn:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first() is None:
                raise UserNotFoundError(f"no user '{name}': see 'modelkeep users list'")
            conn.execute(insert(tokens).values(token_hash=token_hash, user_name=name, label=label, created_at=now()))

    @_retry_on_disconnect
    def token_owner(self, token_hash: str) -> UserRow | None:
        """The user a token hash belongs to, joined in one query."""
        with self._index._read() as conn:
            row = conn.execute(
                select(users).join(tokens, tokens.c.user_name == users.c.name).where(tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else UserRow(*row)

    @_retry_on_disconnect
    def tokens_of(self, name: str) -> list[tuple[str, str]]:
        """``(label, created_at)`` of each of ``name``'s tokens."""
        with self._index._read() as conn:
            rows = conn.execute(
                select(tokens.c.label, tokens.c.created_at)
                .where(tokens.c.user_name == name)
                .order_by(tokens.c.created_at)
            )
            return [(r[0], r[1]) for r in rows]

    @_retry_on_disconnect
    def revoke_tokens(self, name: str) -> int:
        with self._index._write() as conn:
            return int(conn.execute(delete(tokens).where(tokens.c.user_name == name)).rowcount)
