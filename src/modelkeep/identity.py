"""Who is acting, and what they may change: roles, protected aliases, the acting identity.

An :class:`Identity` is a user name and a role. Roles are ordered:

* ``viewer`` reads;
* ``editor`` also sets tags and descriptions, moves aliases that are not
  protected, trashes and restores versions;
* ``admin`` also moves protected aliases, purges the trash and manages users.

A protected alias (``production`` by default, see :class:`AccessPolicy`) is moved
or removed only by an admin or by a user the policy names.

The library applies these rules when an identity is configured (a
``ModelPersistence(token=...)`` or ``identity=``, or the UI's signed-in user,
who acts through :func:`acting_as` for one request). With no identity the
library behaves as before: whoever can write the index can change it. These
checks keep people honest who use modelkeep's tools; someone holding the
database credentials can still write the tables directly.

This module imports nothing from the rest of modelkeep but the errors, so that
the index's audit log can ask it who is acting.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import PermissionDeniedError

#: Roles, weakest first.
ROLES = ("viewer", "editor", "admin")
#: Aliases only admins (or named users) may move when nothing else is configured.
DEFAULT_PROTECTED = ("production",)


def validate_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else a :class:`~modelkeep.errors.InvalidNameError`."""
    from .errors import InvalidNameError

    if role not in ROLES:
        raise InvalidNameError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Identity:
    """A signed-in user: ``name`` is what the history records, ``role`` what they may do."""

    name: str
    role: str

    def at_least(self, role: str) -> bool:
        """Whether this identity's role is ``role`` or stronger."""
        return ROLES.index(self.role) >= ROLES.index(role)


_ACTING: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("modelkeep_acting", default=None)


@contextlib.contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """Run the block as ``identity`` (``None``: leave the current one): its checks and its history rows."""
    if identity is None:
        yield
        return
    token = _ACTING.set(identity)
    try:
        yield
    finally:
        _ACTING.reset(token)


def acting() -> Identity | None:
    """The identity the current block acts as (:func:`acting_as`), if any."""
    return _ACTING.get()


@dataclass(frozen=True)
class AccessPolicy:
    """Which aliases are protected, and who besides admins may move them."""

    protected_aliases: frozenset[str] = frozenset(DEFAULT_PROTECTED)
    #: Users who may move protected aliases without being admins.
    alias_movers: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, protected: Iterable[str] | None = None, movers: Iterable[str] | None = None) -> AccessPolicy:
        """A policy from plain lists (``None``: the default protected set, no named movers)."""
        return cls(
            frozenset(DEFAULT_PROTECTED if protected is None else (a.strip() for a in protected if a.strip())),
            frozenset(m.strip() for m in movers or () if m.strip()),
        )

    def is_protected(self, alias: str) -> bool:
        return alias in self.protected_aliases

    def may_move(self, who: Identity, alias: str) -> bool:
        """Whether ``who`` may move or remove ``alias``."""
        if not who.at_least("editor"):
            return False
        return not self.is_protected(alias) or who.at_least("admin") or who.name in self.alias_movers

    def require(self, who: Identity | None, role: str, what: str) -> None:
        """Refuse ``what`` unless ``who`` (when set) has ``role`` or stronger."""
        if who is not None and not who.at_least(role):
            raise PermissionDeniedError(f"{who.name} ({who.role}) may not {what}: it needs the {role} role")

    def require_alias(self, who: Identity | None, alias: str, what: str) -> None:
        """Refuse moving/removing ``alias`` unless ``who`` (when set) may (see :meth:`may_move`)."""
        if who is None or self.may_move(who, alias):
            return
        if not who.at_least("editor"):
            self.require(who, "editor", what)
        names = f" or {', '.join(sorted(self.alias_movers))}" if self.alias_movers else ""
        raise PermissionDeniedError(
            f"alias '{alias}' is protected: only an admin{names} may {what}; "
            f"{who.name} is {'an' if who.role == 'editor' else 'a'} {who.role}"
        )
