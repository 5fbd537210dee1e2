"""Local accounts for ``modelkeep ui`` and the library: users, passwords, API tokens.

Users live in the registry's index (``modelkeep_users``), so a team that shares
an index shares its users. Passwords are hashed with argon2id by
`argon2-cffi <https://argon2-cffi.readthedocs.io>`_ (its default, RFC 9106 low-memory
parameters) and only the hash is stored. A personal API token is 32 random bytes
shown once; only its SHA-256 is stored (a random 256-bit secret needs no slow hash),
with a short public id to list and revoke it by, and an optional expiry. A user's
grants (a role on the models a glob names, :mod:`modelkeep.identity`) are kept here too.

Needs the ``[ui]`` extra for argon2 (password checks); tokens work without it.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import AuthenticationError, BackendUnavailableError, InvalidNameError, UserNotFoundError
from .identity import AccessPolicy, Identity, acting, validate_role
from .index.users import TokenOwner, TokenRow, UserRow, UserRows

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from .index import SqlIndex

__all__ = ["TOKEN_PREFIX", "TokenRow", "UserNotFoundError", "UserStore", "validate_user_name"]

#: API tokens start with this, so a leaked one is easy to recognise (and to grep for).
TOKEN_PREFIX = "mkt_"
#: Shortest password accepted.
MIN_PASSWORD = 8
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def validate_user_name(name: str) -> str:
    """Letters, digits and ``. _ @ + -``, up to 128 characters (an e-mail address fits)."""
    if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"user name {name!r} is not valid: use letters, digits and . _ @ + - (up to 128 characters)"
        )
    return name


def _hasher() -> PasswordHasher:
    try:
        from argon2 import PasswordHasher
    except ImportError as exc:
        raise BackendUnavailableError(f"passwords need argon2-cffi: pip install 'modelkeep[ui]' ({exc})") from exc
    return PasswordHasher()


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def hash_token(token: str) -> str:
    """What the index keeps of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    """Add, change, remove and authenticate the users of one registry's index.

    When an identity acts (:func:`~modelkeep.identity.acting_as`, or ``who`` here: the registry's
    own), every change (users, roles, passwords, grants, tokens) needs the admin role; reading and
    checking passwords and tokens need nothing."""

    def __init__(self, index: SqlIndex, who: Callable[[], Identity | None] | None = None) -> None:
        self._rows = UserRows(index, who)
        self._who = who
        # Verifying an unknown user still costs one argon2 check, so timing does not tell
        # which names exist.
        self._dummy_hash: str | None = None

    def _admin(self, what: str) -> None:
        """Refuse ``what`` unless no identity acts or the acting one is an admin."""
        who = acting() or (self._who() if self._who is not None else None)
        AccessPolicy().require(who, "admin", what)

    # -- accounts -------------------------------------------------------------------
    def add(self, name: str, password: str | None, role: str = "viewer") -> None:
        """A new user; ``password=None`` makes one who signs in only through an SSO proxy or a token.
        ``role`` is their registry role (:data:`~modelkeep.identity.REGISTRY_ROLES`; ``editor`` is
        stored as ``maintainer``, ``none`` gives access only through :meth:`grant`)."""
        name = validate_user_name(name)
        role = validate_role(role, allow_none=True)
        self._admin("manage users")
        self._rows.add(name, role, None if password is None else self._hash(password))

    def set_password(self, name: str, password: str) -> None:
        """Change a password (signs the user out of running UIs: their sessions hold the old hash)."""
        self._admin("manage users")
        self._rows.update(validate_user_name(name), password_hash=self._hash(password))

    def set_role(self, name: str, role: str) -> None:
        """Change the registry role of ``name`` (``none``: only their grants)."""
        self._admin("manage users")
        self._rows.update(validate_user_name(name), role=validate_role(role, allow_none=True))

    def remove(self, name: str) -> None:
        """Remove a user, their tokens and their grants."""
        self._admin("manage users")
        self._rows.remove(validate_user_name(name))

    def list(self) -> builtins.list[UserRow]:
        """Every user, by name (hashes included: do not print them)."""
        return self._rows.all()

    def get(self, name: str) -> UserRow | None:
        return self._rows.get(name)

    def count(self) -> int:
        return self._rows.count()

    def identity(self, name: str) -> Identity | None:
        """The current role and grants of ``name`` as an :class:`Identity`, or ``None`` if there
        is no such user."""
        row = self._rows.get(name)
        return None if row is None else self.identity_of(row)

    def identity_of(self, row: UserRow) -> Identity:
        """The :class:`Identity` of a user row: its role and its grants as stored now."""
        return Identity(row.name, row.role, tuple(self._rows.grants_of(row.name)))

    # -- grants ---------------------------------------------------------------------
    def grant(self, name: str, glob: str, role: str) -> None:
        """Give ``name`` ``role`` on the models ``glob`` names (``churn-*``), replacing their grant
        on that glob. The role on a model is the strongest of the registry role and every
        matching grant, so a grant only ever adds."""
        from .policies import validate_model_glob

        glob, role = validate_model_glob(glob), validate_role(role)
        self._admin("grant roles")
        self._rows.grant(validate_user_name(name), glob, role)

    def revoke_grant(self, name: str, glob: str) -> None:
        """Remove ``name``'s grant on ``glob`` (as granted); :class:`UserNotFoundError` if there is none."""
        self._admin("grant roles")
        if self._rows.revoke_grant(validate_user_name(name), glob) == 0:
            raise UserNotFoundError(f"user '{name}' has no grant on '{glob}': see 'modelkeep users list'")

    def grants(self, name: str) -> builtins.list[tuple[str, str]]:
        """``(glob, role)`` of each of ``name``'s grants, by glob."""
        return self._rows.grants_of(validate_user_name(name))

    # -- tokens ---------------------------------------------------------------------
    def new_token(self, name: str, label: str = "", *, expires_in: float | _dt.timedelta | None = None) -> str:
        """A new personal API token for ``name``; shown once, only its hash is kept.
        ``expires_in`` (seconds or a timedelta): :meth:`check_token` refuses it after that long."""
        expires_at = None
        if expires_in is not None:
            seconds = expires_in.total_seconds() if isinstance(expires_in, _dt.timedelta) else expires_in
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                number = not isinstance(seconds, bool) and isinstance(seconds, (int, float))
                shown = f"{seconds:g} seconds" if number else repr(expires_in)  # not "datetime.timedelta(0)"
                raise InvalidNameError(f"a token's expiry must be a positive number of seconds, got {shown}")
            try:
                expires_at = (_utc_now() + _dt.timedelta(seconds=seconds)).isoformat()
            except OverflowError:  # past year 9999
                raise InvalidNameError(f"a token's expiry of {expires_in!r} seconds is too far away") from None
        self._admin("make API tokens")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._rows.add_token(
            validate_user_name(name), hash_token(token), label[:128] or "token", secrets.token_hex(6), expires_at
        )
        return token

    def tokens(self, name: str) -> builtins.list[TokenRow]:
        """Each of ``name``'s tokens: id, label, created and expires (``None``: never), oldest first."""
        return self._rows.tokens_of(name)

    def revoke_tokens(self, name: str) -> int:
        """Remove every token of ``name``; returns how many there were."""
        self._admin("revoke API tokens")
        return self._rows.revoke_tokens(name)

    def revoke_token(self, name: str, token_id: str) -> None:
        """Remove one token of ``name``, by the id :meth:`tokens` lists; :class:`UserNotFoundError`
        if they have no token with that id."""
        self._admin("revoke API tokens")
        if self._rows.revoke_token(validate_user_name(name), str(token_id).strip()) == 0:
            raise UserNotFoundError(f"user '{name}' has no token '{token_id}': see 'modelkeep users tokens {name}'")

    # -- checks ---------------------------------------------------------------------
    def check_password(self, name: str, password: str) -> UserRow:
        """The user, if ``password`` is theirs; else :class:`AuthenticationError` (same text either way)."""
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        hasher = _hasher()
        row = self._rows.get(name) if USER_NAME_RE.fullmatch(name or "") else None
        stored = row.password_hash if row is not None else None
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = hasher.hash(secrets.token_hex(16))
            stored, row = self._dummy_hash, None
        try:
            hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            row = None
        if row is None:
            raise AuthenticationError("wrong user name or password")
        if hasher.check_needs_rehash(stored):
            self._rows.update(row.name, password_hash=hasher.hash(password))
            row = self._rows.get(row.name) or row
        return row

    def check_token(self, token: str, *, name: str | None = None) -> UserRow:
        """The user ``token`` belongs to; :class:`AuthenticationError` if it is unknown (forged,
        revoked, or its user removed), expired, or when ``name`` is given and the token belongs to
        someone else. :meth:`token_identity` gives their :class:`Identity` with grants."""
        return self._token_owner(token, name, with_grants=False).user

    def token_identity(self, token: str, *, name: str | None = None) -> Identity:
        """The :class:`Identity` (role and grants) of the owner of ``token``, checked as
        :meth:`check_token` checks it (in one query with the grants)."""
        owner = self._token_owner(token, name, with_grants=True)
        return Identity(owner.user.name, owner.user.role, owner.grants)

    def _token_owner(self, token: str, name: str | None, *, with_grants: bool) -> TokenOwner:
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            raise AuthenticationError("not a modelkeep API token (they start with 'mkt_')")
        owner = self._rows.token_owner(hash_token(token), with_grants=with_grants)
        if owner is None:
            raise AuthenticationError("unknown or revoked API token: make one with 'modelkeep users token NAME'")
        if owner.expires_at is not None and _dt.datetime.fromisoformat(owner.expires_at) <= _utc_now():
            raise AuthenticationError(
                f"this API token ({owner.token_id}) expired at {owner.expires_at[:19]} UTC: "
                f"make a new one with 'modelkeep users token {owner.user.name}'"
            )
        if name is not None and not hmac.compare_digest(owner.user.name, name):
            raise AuthenticationError(f"this API token belongs to another user, not to {name!r}")
        return owner

    @staticmethod
    def _hash(password: str) -> str:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise InvalidNameError(f"a password needs at least {MIN_PASSWORD} characters")
        return _hasher().hash(password)
