"""The promotion half of :class:`~modelkeep.ModelPersistence`: alias policies, approvals,
the dry run of a move, and the signed-move check a reader (or ``serve``) can require.

Policies are stored in the index (:mod:`modelkeep.index.policies`) and judged by
:mod:`modelkeep.policies`; ``set_alias`` checks them itself, in the transaction that moves
the alias, so every interface obeys them. Changing a policy needs the admin role and
approving a version the maintainer role on its model, when an identity acts; with no identity (no token, no
UI sign-in) the library behaves as it does for protected aliases: whoever can write the
index may change them. Either way the history records who did (``policy_set``,
``policy_delete``, ``approve``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import ModelNotFoundError
from .identity import acting_as
from .lifecycle import LifecycleMixin
from .policies import MoveCheck, Policy, make_policy
from .versions import validate_alias, validate_model_name, validate_version

if TYPE_CHECKING:
    from .index.policies import PolicyStore
    from .signing import Verdict


class PromotionMixin(LifecycleMixin):
    """Policies, approvals and signed-alias checks on :class:`ModelPersistence`."""

    #: Fingerprints (or 16+ hex digit prefixes) of the keys whose alias moves are trusted;
    #: when set, every load through an alias requires a move signed by one of them.
    trusted_releasers: tuple[str, ...] = ()

    @property
    def _policies(self) -> PolicyStore:
        from .index.policies import PolicyStore

        return PolicyStore(self.index)

    def _mover_fingerprint(self) -> str | None:
        """The fingerprint of the key this registry signs alias moves with (``None``: HMAC or none)."""
        from .keys import PrivateKey

        key = self.keyring.signer()
        return key.fingerprint if isinstance(key, PrivateKey) else None

    # -- policies ------------------------------------------------------------------
    def set_policy(
        self,
        model: str,
        alias: str,
        *,
        filter: str | None = None,
        require_signature: Iterable[Any] | None = None,
        require_input_signature: bool = False,
        approvals: int = 0,
        allowed: Iterable[str] | None = None,
    ) -> Policy:
        """Set the policy for moving ``alias`` of the models ``model`` names (a name or a glob
        such as ``churn*``), replacing any policy for the same pair; returns it as stored.

        ``filter``: a search expression the version must match; ``require_signature``: public
        key files (or PEM text) of which one must have signed the version;
        ``require_input_signature``: the version must record one; ``approvals``: approvals
        needed from users other than the version's author; ``allowed``: users or key
        fingerprints that may move the alias. Needs the admin role when an identity acts.
        """
        policy = make_policy(
            model,
            alias,
            filter=filter,
            require_signature=require_signature,
            require_input_signature=require_input_signature,
            approvals=approvals,
            allowed=allowed,
        )
        with self._as("admin", "change promotion policies"):
            return self._policies.set(policy)

    def policies(self, model_name: str | None = None) -> list[Policy]:
        """Every policy, or those that govern ``model_name``. An identity with grants only sees
        the policies of the models it may see (none for a model it may not)."""
        found = self._policies.all()
        if model_name is not None:
            return [p for p in found if p.matches(model_name)] if self.index.may_view(model_name) else []
        who = self.index.viewer()
        if who is None or who.sees_everything():
            return found
        seen = self.index.list_models()  # only those it may see
        return [p for p in found if any(p.matches(m) for m in seen)]

    def remove_policy(self, model: str, alias: str) -> Policy:
        """Remove the policy for ``model`` (the glob as set) and ``alias``; returns it.
        :class:`ModelNotFoundError` if there is none. Needs the admin role when an identity acts."""
        alias = validate_alias(alias)
        with self._as("admin", "change promotion policies"):
            removed = self._policies.remove(model, alias)
        if removed is None:
            raise ModelNotFoundError(f"no policy for alias '{alias}' of models '{model}'")
        return removed

    # -- approvals -----------------------------------------------------------------
    def approve(self, model_name: str, version: str, alias: str) -> dict[str, str]:
        """Approve ``version`` (its current bytes) for ``alias`` as the acting user; returns the
        approval. An approval by the version's author is recorded but never counts. Needs the
        maintainer role on the model when an identity acts."""
        model_name, version = validate_model_name(model_name), validate_version(version)
        alias = validate_alias(alias)
        with self._as("maintainer", "approve versions", model_name):
            who = self._policies.approve(model_name, version, alias)
        return next(a for a in self._policies.approvals(model_name, version, alias) if a["user"] == who)

    def approvals(
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> list[dict[str, str]]:
        """Approvals of a model (one version, one alias): ``model_name``, ``version``, ``alias``,
        ``user``, ``sha256`` (the bytes approved) and ``at``, oldest first."""
        model_name = validate_model_name(model_name)
        return self._policies.approvals(
            model_name,
            None if version is None else validate_version(version),
            None if alias is None else validate_alias(alias),
        )

    # -- moves ---------------------------------------------------------------------
    def check_alias_move(self, model_name: str, alias: str, version: str) -> MoveCheck:
        """Whether moving ``alias`` to ``version`` would pass its policies now, and why (the same
        judgement ``set_alias`` makes, without moving anything)."""
        with acting_as(self._who()):
            found, failures = self.index.lifecycle.check_alias_move(
                model_name, alias, version, fingerprint=self._mover_fingerprint()
            )
        return MoveCheck(model_name, alias, version, found, failures)

    def verify_alias(self, model_name: str, alias: str, *, version: str | None = None) -> Verdict:
        """Check that ``alias`` points where it does by a trusted signed move (as
        ``load(..., require_signed_alias=True)`` does, without loading); with ``version``, also
        that it points there. Raises :class:`SignatureError` or :class:`RollbackError`."""
        from .errors import InvalidNameError

        record, reference = self._resolve_reference(model_name, None, alias)
        assert reference.state is not None and reference.alias is not None
        if version is not None and record.version != version:
            where = f"alias '{alias}' of model '{model_name}'"
            raise InvalidNameError(f"{where} points at '{record.version}', not '{version}'")
        return self._freshness().check_alias(
            record, reference.alias, reference.state, require=True, releasers=self.trusted_releasers
        )

    def _freshness(self) -> Any:  # ModelPersistence._freshness
        raise NotImplementedError
