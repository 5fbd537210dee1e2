"""Who is acting, and what they may do: roles, per-model grants, protected aliases, the acting identity.

An :class:`Identity` is a user name, a registry-wide role and the user's grants (a role on
the models a glob names). Roles are ordered, each one doing what the one before it does and more:

==============  ==================================================================================
role            may
==============  ==================================================================================
``none``        nothing in the registry (only a user's registry role may be ``none``): the user
                sees and changes only the models their grants name
``viewer``      read: list, search, history, compare, load, export, verify a version
``writer``      save *new* versions (never replace one), set and remove tags, change descriptions
``maintainer``  overwrite a version, move and remove aliases that are not protected, approve a
                version for an alias, trash and restore versions (``editor``, the name of this
                role before 0.3, is still accepted and means ``maintainer``)
``admin``       move and remove protected aliases, purge the trash, prune, manage users, their
                grants and tokens, promotion policies, webhooks, ``gc``, ``reindex``, re-signing,
                ``backfill_params``, and ``verify`` the whole registry
==============  ==================================================================================

A grant (``UserStore.grant("ann", "churn-*", "writer")``) gives a role on the models whose names
match a glob. The role for model *M* (:meth:`Identity.role_for`) is the strongest of the registry
role and every grant whose glob matches *M*. A model the identity may not view is invisible to it:
the library lists, searches and reports it as if it did not exist, and reading it raises the same
not-found error a missing model raises (see :meth:`Identity.may`, and ``SqlIndex.may_view``).

A protected alias (``production`` by default, see :class:`AccessPolicy`) is moved
or removed only by an admin (of that model) or by a user the policy names.

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
from fnmatch import fnmatchcase

from .errors import InvalidNameError, PermissionDeniedError

#: Roles, weakest first.
ROLES = ("viewer", "writer", "maintainer", "admin")
#: The registry role of a user who has no access beyond their grants.
NO_ROLE = "none"
#: What a user's registry role may be: :data:`ROLES` or :data:`NO_ROLE`.
REGISTRY_ROLES = (NO_ROLE, *ROLES)
#: Old role names still accepted, and what they mean now.
OLD_ROLE_NAMES = {"editor": "maintainer"}
#: Aliases only admins (or named users) may move when nothing else is configured.
DEFAULT_PROTECTED = ("production",)


def validate_role(role: str, *, allow_none: bool = False) -> str:
    """``role`` as one of :data:`ROLES` (``editor`` becomes ``maintainer``; ``none`` too with
    ``allow_none``, for a user's registry role), else a :class:`~modelkeep.errors.InvalidNameError`."""
    allowed = REGISTRY_ROLES if allow_none else ROLES
    if isinstance(role, str):
        role = OLD_ROLE_NAMES.get(role.strip().lower(), role.strip().lower())
    if role not in allowed:
        raise InvalidNameError(f"role {role!r} is not one of {', '.join(allowed)} (or editor, the old maintainer)")
    return role


def _rank(role: str | None) -> int:
    """``-1`` for no role, else the position in :data:`ROLES`."""
    if role is None or role == NO_ROLE:
        return -1
    return ROLES.index(OLD_ROLE_NAMES.get(role, role))


def strongest(*roles: str | None) -> str | None:
    """The strongest of ``roles`` (``None`` when none of them is a role)."""
    best = max(roles, key=_rank, default=None)
    return None if _rank(best) < 0 else OLD_ROLE_NAMES.get(best or "", best)


@dataclass(frozen=True)
class Identity:
    """A signed-in user: ``name`` is what the history records, ``role`` what they may do across the
    registry (``none``: only what ``grants`` give), ``grants`` ``(glob, role)`` pairs giving a
    role on the models a glob names."""

    name: str
    role: str
    grants: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Old names (``editor``) are read as what they mean now, so rows and callers from
        # before 0.3 compare and check as the new role.
        object.__setattr__(self, "role", validate_role(self.role, allow_none=True))
        object.__setattr__(self, "grants", tuple((g, validate_role(r)) for g, r in self.grants))

    def role_for(self, model: str | None = None) -> str | None:
        """The role on ``model``: the strongest of the registry role and each matching grant
        (``model=None``: the registry role). ``None`` when the identity has no access to it."""
        if not isinstance(model, str):
            return strongest(self.role)
        matching = (r for g, r in self.grants if fnmatchcase(model, g))
        return strongest(self.role, *matching)

    def may(self, model: str | None, role: str) -> bool:
        """Whether the role on ``model`` (``None``: registry-wide) is ``role`` or stronger."""
        return _rank(self.role_for(model)) >= _rank(validate_role(role))

    def at_least(self, role: str) -> bool:
        """Whether the registry role is ``role`` or stronger (grants aside)."""
        return self.may(None, role)

    def may_somewhere(self, role: str) -> bool:
        """Whether the registry role or any grant is ``role`` or stronger (what a UI offers forms for)."""
        return _rank(strongest(self.role, *(r for _, r in self.grants))) >= _rank(validate_role(role))

    def sees_everything(self) -> bool:
        """Whether every model is visible (a registry role of viewer or stronger)."""
        return self.role != NO_ROLE


def may_view(who: Identity | None, model: str) -> bool:
    """Whether ``who`` (``None``: nobody in particular, no checks) may see ``model``."""
    return who is None or who.sees_everything() or who.may(model, "viewer")


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

    def may_move(self, who: Identity, alias: str, model: str | None = None) -> bool:
        """Whether ``who`` may move or remove ``alias`` (of ``model``; ``None``: registry-wide)."""
        if not who.may(model, "maintainer"):
            return False
        return not self.is_protected(alias) or who.may(model, "admin") or who.name in self.alias_movers

    def require(self, who: Identity | None, role: str, what: str, model: str | None = None) -> None:
        """Refuse ``what`` unless ``who`` (when set) has ``role`` or stronger on ``model``
        (``None``: registry-wide). The refusal is the same whether ``model`` exists or not."""
        if who is None or who.may(model, role):
            return
        held = who.role_for(model) or "no role"
        on = f" on model '{model}'" if model is not None else ""
        raise PermissionDeniedError(f"{who.name} ({held}{on}) may not {what}: it needs the {role} role")

    def require_alias(self, who: Identity | None, alias: str, what: str, model: str | None = None) -> None:
        """Refuse moving/removing ``alias`` unless ``who`` (when set) may (see :meth:`may_move`)."""
        if who is None or self.may_move(who, alias, model):
            return
        self.require(who, "maintainer", what, model)
        names = f" or {', '.join(sorted(self.alias_movers))}" if self.alias_movers else ""
        held = who.role_for(model) or "no role"
        raise PermissionDeniedError(
            f"alias '{alias}' is protected: only an admin{names} may {what}; "
            f"{who.name} is {'an' if held[0] in 'aeiou' else 'a'} {held}"
        )
