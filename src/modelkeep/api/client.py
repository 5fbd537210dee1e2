"""The client of ``modelkeep server``: :class:`HttpRegistry`.

``ModelPersistence("https://models.example", token=...)`` (or ``MODELKEEP_REGISTRY_URL=https://...``
with ``MODELKEEP_TOKEN``) returns an :class:`HttpRegistry`: the same public methods as a local
registry, carried out by the server, which alone holds the index URL and the store's credentials.
Errors come back as the same :mod:`modelkeep.errors` classes (:mod:`.wire`). Signing keys and
trusted keys stay here: a save is signed before it leaves, and a load checks the signature and the
digests with this client's keys, so a compromised server cannot hand out a model readers trust.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import functools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..config_sources import insecure_server_url
from ..errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigError,
    ModelKeepError,
    ServerOnlyError,
)
from ..identity import Identity
from .client_admin import AdminMixin
from .client_bundles import BundleMixin
from .client_signing import SigningMixin
from .client_transfers import TransferMixin
from .client_webhooks import WebhooksMixin
from .wire import (
    API_PREFIX,
    PROTOCOL,
    PROTOCOL_HEADER,
    error_from_body,
    history_from_wire,
    is_api_error,
    is_transport_error,
    move_check_from_wire,
    path_text,
    policy_from_wire,
    record_from_wire,
    resending_transport,
    summary_from_wire,
    transport_error,
    verify_report_from_wire,
    version_path,
)
from .wire import (
    path_segment as segment,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..index.users import TokenRow, UserRow
    from ..input_signature import InputCheck
    from ..lifecycle import Age
    from ..maintenance import VerifyReport
    from ..metadata import HistoryEntry, ModelMetadata, ModelSummary
    from ..policies import MoveCheck, Policy
    from ..search.api import SearchPage
    from ..search.grammar import Node
    from ..signing import Keyring, Verdict

#: Seconds to wait for the server to accept a connection, and for each read.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - the [client] extra is part of every install we test
        raise BackendUnavailableError(
            "a registry server URL needs the HTTP client: pip install 'modelkeep[client]'"
        ) from exc
    return httpx


#: What a local registry has that a registry server's client does not (its methods and the
#: attributes ``ModelPersistence.__init__`` sets): asked of an :class:`HttpRegistry`, each is a
#: :class:`ServerOnlyError`. Listed here, not read off ``ModelPersistence``, which imports this
#: module; a test keeps the list exact.
LOCAL_ONLY = frozenset(
    {
        "access",
        "cache",
        "claim_upload",
        "commit_claimed_upload",
        "commit_staged",
        "commit_uploaded",
        "compress",
        "compression",
        "delete_signed",
        "format",
        "from_settings",
        "max_load_memory",
        "models_dir",
        "plan_alias_move",
        "plan_removal",
        "quarantine",
        "quarantine_memory_mb",
        "quarantine_timeout",
        "save_many",
        "serve",
        "set_alias_signed",
        "signing_key",
        "store",
        "store_signature",
    }
)


class HttpRegistry(SigningMixin, TransferMixin, BundleMixin, AdminMixin, WebhooksMixin):
    """A registry served by ``modelkeep server`` at ``url``, used with an API ``token``."""

    #: Always true: the registry is behind a server (a local :class:`ModelPersistence` has no such attribute).
    is_remote = True

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        **options: Any,
    ) -> None:
        self.url = url.rstrip("/")
        if insecure_server_url(self.url):
            # Tokens in clear text over a network: refuse unless asked for explicitly.
            raise ConfigError(
                f"{self.url} is plain http on a network address: use https, or set "
                "MODELKEEP_ALLOW_INSECURE_HTTP=1 if a trusted network carries it"
            )
        self.token = token if token is not None else (os.environ.get("MODELKEEP_TOKEN") or None)
        self.options = options
        self._connect_timeout = connect_timeout if connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT
        self._read_timeout = read_timeout if read_timeout is not None else DEFAULT_READ_TIMEOUT
        self._headers = {PROTOCOL_HEADER: str(PROTOCOL)}
        if self.token:
            self._headers["Authorization"] = f"Bearer {self.token}"
        from .quick import QuickHttp

        # Every request with a whole body and a whole answer (the JSON calls, one-request saves
        # and loads) goes through .quick; ``_http`` (httpx, made at the first stream) streams.
        self._quick = QuickHttp(
            self.url + API_PREFIX, self._headers, connect_timeout=self._connect_timeout, read_timeout=self._read_timeout
        )
        self._streaming: tuple[int, Any] | None = None  # (the process it was made in, the httpx client)

    @property
    def _http(self) -> Any:
        """The ``httpx.Client`` of streamed transfers, made when the first one starts (importing
        httpx and building its client costs a command more than the rest of its start-up). It
        sends the same headers and calls the same :attr:`event_hooks`. A child forked after its
        parent streamed makes a client of its own: the parent's kept connections stay the parent's
        (a TLS connection written by both breaks for both), and are not closed by the child."""
        made = self._streaming
        if made is None or made[0] != os.getpid():
            made = self._streaming = (os.getpid(), self._make_http())
        return made[1]

    def _make_http(self) -> Any:
        httpx = _httpx()
        hooks = self._quick.event_hooks
        return httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=self._headers,
            timeout=httpx.Timeout(self._read_timeout, connect=self._connect_timeout),
            transport=resending_transport(),
            event_hooks={
                "request": [lambda request: [hook(request) for hook in list(hooks["request"])]],
                "response": [lambda response: [hook(response) for hook in list(hooks["response"])]],
            },
        )

    @property
    def event_hooks(self) -> dict[str, list[Any]]:
        """Functions called with each request before it is sent (``"request"``) and each
        response (``"response"``), streamed or not, as ``httpx.Client.event_hooks``."""
        return self._quick.event_hooks

    # -- plumbing -------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one API request and return its decoded JSON; a JSON error raises its library error."""
        return self.decode(self._exchange(method, path, **kwargs))

    def _exchange(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request and its whole response: through :mod:`.quick` unless its body is a stream;
        a request that got no answer (timeouts included) raises :class:`StorageError`."""
        content = kwargs.get("content")
        try:
            if content is None or isinstance(content, bytes):
                return self._quick.request(method, path, **kwargs)
            return self._http.request(method, path, **kwargs)
        except Exception as exc:
            if is_transport_error(exc):
                raise transport_error(self.url, exc) from None
            raise

    def decode(self, response: Any) -> Any:
        """The JSON of a successful ``response``, else the error it carries, raised."""
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            if response.status_code in (404, 405) and not is_api_error(body):
                # every route of the API answers its errors in JSON: this is not the API
                raise ConfigError(
                    f"{self.url} did not answer like a modelkeep registry server (HTTP {response.status_code} "
                    f"for {response.request.url.path}): the registry URL is the server's root, such as "
                    "https://models.example:8766 (MODELKEEP_REGISTRY_URL, or registry_url)"
                )
            if response.status_code == 401 and not self.token:  # the server's message is for curl users
                raise AuthenticationError(
                    f"{self.url} needs an API token: set MODELKEEP_TOKEN (or pass token=); "
                    "an admin makes one with 'modelkeep users token NAME'"
                )
            raise error_from_body(response.status_code, body)
        if response.status_code >= 300:  # not followed (a token must not go where it points): nothing was done
            raise ConfigError(
                f"{self.url} redirected {response.request.method} {response.request.url.path} to "
                f"{response.headers.get('location', 'elsewhere')}: the registry URL is the server's own address "
                "(MODELKEEP_REGISTRY_URL, or registry_url)"
            )
        return body

    def close(self) -> None:
        """Close the connections to the server."""
        self._quick.close()
        if self._streaming is not None and self._streaming[0] == os.getpid():
            self._streaming[1].close()

    def __enter__(self) -> HttpRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpRegistry({self.url!r})"

    # -- who ----------------------------------------------------------------------------------
    def server_info(self) -> dict[str, Any]:
        """The server's name, version and protocol, and who this client is signed in as."""
        info = self.request("GET", "/")
        if not isinstance(info, dict):
            raise ModelKeepError(f"{self.url} did not answer like a modelkeep server")
        return info

    @property
    def identity(self) -> Identity | None:
        """Who the server knows this client as (``None``: a sign-in free server)."""
        user = self.server_info().get("user")
        return None if not isinstance(user, dict) else Identity(str(user["name"]), str(user["role"]))

    def sign_in(self, token: str, *, name: str | None = None) -> Identity:
        """Act as the owner of API ``token`` from now on (checked by the server); ``name``, when
        given, must be that owner. Raises :class:`~modelkeep.errors.AuthenticationError`."""
        previous = self._headers.get("Authorization")
        self._set_authorization(f"Bearer {token}")
        try:
            who = self.identity
            if who is None or (name is not None and who.name != name):
                raise AuthenticationError(f"the token does not belong to {name!r}" if name else "the token is unknown")
        except BaseException:
            self._set_authorization(previous)
            raise
        self.token = token
        return who

    def _set_authorization(self, value: str | None) -> None:
        """The ``Authorization`` header of every later request (``None``: none), streamed or not."""
        targets: list[Any] = [self._headers]
        if self._streaming is not None:
            targets.append(self._streaming[1].headers)
        for headers in targets:
            if value is not None:
                headers["Authorization"] = value
            elif "Authorization" in headers:
                del headers["Authorization"]

    @functools.cached_property
    def users(self) -> RemoteUsers:
        """The server's users and API tokens (admins only), as :class:`modelkeep.users.UserStore`."""
        return RemoteUsers(self)

    @functools.cached_property
    def keyring(self) -> Keyring:
        """This client's keys: what it signs saves with and which signatures it trusts."""
        from ..signing import resolve_keyring

        o = self.options
        return resolve_keyring(
            signing_key=o.get("signing_key"),
            signing_key_file=o.get("signing_key_file"),
            trusted_keys=o.get("trusted_keys"),
            require_signatures=o.get("require_signatures"),
        )

    # -- reading ------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """Names of the models this client may see."""
        return list(self.request("GET", "/models")["models"])

    def list_versions(self, model_name: str) -> list[str]:
        """A model's live versions, oldest first."""
        return list(self.request("GET", f"/models/{segment(model_name, 'model name')}/versions")["versions"])

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:
        """Every version's record, ascending; :class:`ModelNotFoundError` if none."""
        found = self.request("GET", f"/models/{segment(model_name, 'model name')}/records")["records"]
        return [record_from_wire(r) for r in found]

    def model_summaries(self) -> list[ModelSummary]:
        """Each model with its version count, latest version and last update."""
        return [summary_from_wire(s) for s in self.request("GET", "/summaries")["models"]]

    def get_version(self, model_name: str, version: str | None = None, *, alias: str | None = None) -> ModelMetadata:
        """One version's record (the latest by default; ``"churn@production"`` and ``alias=`` work)."""
        path = version_path(model_name, version)
        return record_from_wire(self.request("GET", path, params=_params(alias=alias))["record"])

    def get_metadata(
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> ModelMetadata | None:
        """The record of a version (latest when ``None``), or ``None`` if there is none."""
        try:
            return self.get_version(model_name, version, alias=alias)
        except KeyError:
            return None

    def resolve_version(self, model_name: str, version: str | None = None, *, alias: str | None = None) -> str:
        """The concrete version string ``version`` (or "latest", or an alias) refers to."""
        return self.get_version(model_name, version, alias=alias).version

    def signature_status(self, model_name: str, version: str | None = None) -> Verdict:
        """Who signed a version, and whether THIS client's keys trust that signature (the
        server's keys play no part: it could lie about them)."""
        return self.keyring.verdict(self.get_version(model_name, version))

    def check_input(self, model_name: str, version: str | None, X: Any) -> InputCheck:
        """Check data ``X`` against a version's input signature (here, with the record's signature)."""
        from ..input_signature import check

        return check(self.get_version(model_name, version).input_signature, X)

    def compare_versions(
        self,
        model_name: str,
        versions: list[str] | None = None,
        *,
        filter: str | Node | None = None,
        params: str = "differing",
    ) -> pd.DataFrame:
        """A DataFrame with one row per version (as :meth:`ModelPersistence.compare_versions`)."""
        from ..compare import comparison_frame

        body = {"versions": versions, "filter": _filter_text(filter)}
        found = self.request("POST", f"/models/{segment(model_name, 'model name')}/compare", json=body)["records"]
        return comparison_frame([record_from_wire(r) for r in found], params)

    def search_versions(
        self,
        filter: str | Node | None = None,
        *,
        model_name: str | None = None,
        order_by: str | list[str] | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> SearchPage[ModelMetadata]:
        """Live versions matching ``filter``, a page at a time (see ``ModelPersistence.search_versions``)."""
        from ..search.api import SearchPage

        body = {
            "filter": _filter_text(filter),
            "model_name": model_name,
            "order_by": order_by,
            "limit": limit,
            "page_token": page_token,
        }
        page = self.request("POST", "/search/versions", json=body)
        return SearchPage([record_from_wire(r) for r in page["items"]], page.get("next_page_token"))

    def search_models(
        self, filter: str | Node | None = None, *, limit: int = 100, page_token: str | None = None
    ) -> SearchPage[ModelSummary]:
        """Models with at least one live version matching ``filter``, by name, a page at a time."""
        from ..search.api import SearchPage

        body = {"filter": _filter_text(filter), "limit": limit, "page_token": page_token}
        page = self.request("POST", "/search/models", json=body)
        return SearchPage([summary_from_wire(s) for s in page["items"]], page.get("next_page_token"))

    def metric_history(self, model_name: str, metric: str, *, limit: int = 2000) -> list[tuple[str, float | None]]:
        """``(version, value)`` of the newest ``limit`` live versions of a model, oldest first."""
        path = f"/models/{segment(model_name, 'model name')}/metrics/{path_text(metric, 'metric')}"
        return [(str(v), value) for v, value in self.request("GET", path, params={"limit": limit})["points"]]

    def best_version(
        self, model_name: str, metric: str, mode: str = "max", filter: str | Node | None = None
    ) -> ModelMetadata:
        """The live version with the highest (``"max"``) or lowest (``"min"``) ``metric``."""
        params = _params(metric=metric, mode=mode, filter=_filter_text(filter))
        return record_from_wire(
            self.request("GET", f"/models/{segment(model_name, 'model name')}/best", params=params)["record"]
        )

    def verify(self, model_name: str | None = None) -> VerifyReport:
        """Re-hash every artifact on the server; report entries that are missing, corrupt or orphaned."""
        return verify_report_from_wire(self.request("POST", "/verify", json={"model_name": model_name})["report"])

    # -- aliases, tags, descriptions, history ----------------------------------------------------
    def delete_alias(self, model_name: str, alias: str, *, expected: str | None = None) -> str:
        """Remove ``alias``; returns the version it pointed at."""
        path = f"/models/{segment(model_name, 'model name')}/aliases/{segment(alias, 'alias')}"
        return str(self.request("DELETE", path, params=_params(expected=expected))["version"])

    def get_aliases(self, model_name: str) -> dict[str, str]:
        """A model's aliases: alias -> version."""
        return dict(self.request("GET", f"/models/{segment(model_name, 'model name')}/aliases")["aliases"])

    def all_aliases(self) -> dict[str, dict[str, str]]:
        """Every model's aliases: model -> alias -> version."""
        return {str(k): dict(v) for k, v in self.request("GET", "/aliases")["aliases"].items()}

    def alias_history(self, model_name: str, alias: str) -> list[HistoryEntry]:
        """Every move of ``alias``, oldest first."""
        found = self.request(
            "GET", f"/models/{segment(model_name, 'model name')}/aliases/{segment(alias, 'alias')}/history"
        )["history"]
        return [history_from_wire(e) for e in found]

    def alias_at(self, model_name: str, alias: str, when: _dt.datetime | str) -> str | None:
        """The version ``alias`` pointed at, at time ``when`` (``None``: it did not exist)."""
        at = when.isoformat() if isinstance(when, _dt.datetime) else when
        path = f"/models/{segment(model_name, 'model name')}/aliases/{segment(alias, 'alias')}/at"
        found = self.request("GET", path, params={"when": at})["version"]
        return None if found is None else str(found)

    def set_tag(self, model_name: str, key: str, value: str, *, version: str | None = None) -> None:
        """Set tag ``key`` of a model (or of one ``version``)."""
        body = {"value": value, "version": version}
        self.request("PUT", f"/models/{segment(model_name, 'model name')}/tags/{path_text(key, 'tag key')}", json=body)

    def delete_tag(self, model_name: str, key: str, *, version: str | None = None) -> None:
        """Remove tag ``key`` of a model (or of one ``version``)."""
        path = f"/models/{segment(model_name, 'model name')}/tags/{path_text(key, 'tag key')}"
        self.request("DELETE", path, params=_params(version=version))

    def get_tags(self, model_name: str, *, version: str | None = None) -> dict[str, str]:
        """Tags of a model (or of one ``version``)."""
        path = f"/models/{segment(model_name, 'model name')}/tags"
        return dict(self.request("GET", path, params=_params(version=version))["tags"])

    def set_description(self, model_name: str, text: str | None, *, version: str | None = None) -> None:
        """Set (``None``: clear) the description of a model or of one ``version``."""
        body = {"text": text, "version": version}
        self.request("PUT", f"/models/{segment(model_name, 'model name')}/description", json=body)

    def get_description(self, model_name: str, *, version: str | None = None) -> str | None:
        """The description of a model (or of one ``version``), or ``None``."""
        path = f"/models/{segment(model_name, 'model name')}/description"
        found = self.request("GET", path, params=_params(version=version))["description"]
        return None if found is None else str(found)

    def history(
        self,
        model_name: str | None = None,
        *,
        alias: str | None = None,
        since: _dt.datetime | str | None = None,
        until: _dt.datetime | str | None = None,
        limit: int | None = None,
        actions: tuple[str, ...] | None = None,
    ) -> list[HistoryEntry]:
        """The audit log, oldest first (see :meth:`ModelPersistence.history`)."""
        params = _params(
            model=model_name,
            alias=alias,
            since=since.isoformat() if isinstance(since, _dt.datetime) else since,
            until=until.isoformat() if isinstance(until, _dt.datetime) else until,
            limit=limit,
            actions=None if actions is None else ",".join(actions),
        )
        return [history_from_wire(e) for e in self.request("GET", "/history", params=params)["history"]]

    # -- the trash ---------------------------------------------------------------------------------
    def restore(self, model_name: str, version: str) -> None:
        """Bring a version back from the trash."""
        self.request(
            "POST", f"/models/{segment(model_name, 'model name')}/versions/{segment(version, 'version')}/restore"
        )

    def list_trash(self, model_name: str | None = None) -> list[tuple[str, str, str]]:
        """``(model, version, deleted_at)`` of every trashed version (of one model)."""
        found = self.request("GET", "/trash", params=_params(model=model_name))["trash"]
        return [(str(m), str(v), str(at)) for m, v, at in found]

    def purge(
        self, model_name: str | None = None, version: str | None = None, *, older_than: Age | None = None
    ) -> list[tuple[str, str]]:
        """Delete trashed versions for good; returns ``(model, version)`` of each."""
        age = older_than.total_seconds() if isinstance(older_than, _dt.timedelta) else older_than
        body = {"model_name": model_name, "version": version, "older_than": age}
        return [(str(m), str(v)) for m, v in self.request("POST", "/purge", json=body)["purged"]]

    def prune(self, model_name: str, keep_last: int, *, dry_run: bool = False) -> list[str]:
        """Trash all but the newest ``keep_last`` versions (not those an alias points at)."""
        body = {"keep_last": keep_last, "dry_run": bool(dry_run)}  # the server takes JSON booleans only
        return [
            str(v)
            for v in self.request("POST", f"/models/{segment(model_name, 'model name')}/prune", json=body)["versions"]
        ]

    # -- promotion policies and approvals --------------------------------------------------------
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
        """Set the policy for moving ``alias`` of the models ``model`` names (admin)."""
        signers = None
        if require_signature is not None:  # key files are read here; only public PEM text travels
            signers = [_public_pem(k) for k in require_signature]
        body = {
            "model": model,
            "alias": alias,
            "filter": filter,
            "require_signature": signers,
            "require_input_signature": bool(require_input_signature),
            "approvals": approvals,
            "allowed": None if allowed is None else list(allowed),
        }
        return policy_from_wire(self.request("PUT", "/policies", json=body)["policy"])

    def policies(self, model_name: str | None = None) -> list[Policy]:
        """Every policy, or those that govern ``model_name``."""
        return [
            policy_from_wire(p) for p in self.request("GET", "/policies", params=_params(model=model_name))["policies"]
        ]

    def remove_policy(self, model: str, alias: str) -> Policy:
        """Remove the policy for ``model`` (the glob as set) and ``alias``; returns it."""
        alias_part = segment(alias, "alias")  # first, as a local registry checks the alias first
        return policy_from_wire(
            self.request("DELETE", f"/policies/{path_text(model, 'policy model')}/{alias_part}")["policy"]
        )

    def approve(self, model_name: str, version: str, alias: str) -> dict[str, str]:
        """Approve ``version`` for ``alias`` as this client's user; returns the approval."""
        path = f"/models/{segment(model_name, 'model name')}/versions/{segment(version, 'version')}/approvals"
        return dict(self.request("POST", path, json={"alias": alias})["approval"])

    def approvals(
        self, model_name: str, version: str | None = None, *, alias: str | None = None
    ) -> list[dict[str, str]]:
        """Approvals of a model (one version, one alias), oldest first."""
        params = _params(version=version, alias=alias)
        return [
            dict(a)
            for a in self.request("GET", f"/models/{segment(model_name, 'model name')}/approvals", params=params)[
                "approvals"
            ]
        ]

    def check_alias_move(self, model_name: str, alias: str, version: str) -> MoveCheck:
        """Whether moving ``alias`` to ``version`` would pass its policies now, and why."""
        path = f"/models/{segment(model_name, 'model name')}/aliases/{segment(alias, 'alias')}/check"
        return move_check_from_wire(self.request("GET", path, params={"version": version})["check"])

    # -- what only the server's host can do -------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: a local registry's parts (store, webhooks,
        # access...) are on the server's host. ServerOnlyError is an AttributeError: hasattr works.
        # A name no local registry has either (a typo) is Python's own error, with its suggestion.
        # (A property of this class that raised ServerOnlyError, such as index, lands here too.)
        if name not in LOCAL_ONLY and not hasattr(type(self), name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)
        raise server_only(f"'{name}'")

    def ensure_registry(self) -> None:
        """Nothing to do: the server's registry exists (its first save creates it)."""

    @property
    def index(self) -> Any:
        """A registry server's index is on the server: the client never touches it."""
        raise server_only("direct index access")


class RemoteUsers:
    """The server's users and tokens (admin only), with :class:`modelkeep.users.UserStore`'s methods."""

    def __init__(self, registry: HttpRegistry) -> None:
        self._r = registry

    def add(self, name: str, password: str | None, role: str = "viewer") -> None:
        """Add a user."""
        self._r.request("POST", "/users", json={"name": name, "password": password, "role": role})

    def set_password(self, name: str, password: str) -> None:
        """Set a user's password."""
        self._r.request("PUT", f"/users/{segment(name, 'user name')}/password", json={"password": password})

    def set_role(self, name: str, role: str) -> None:
        """Change a user's role."""
        self._r.request("PUT", f"/users/{segment(name, 'user name')}/role", json={"role": role})

    def remove(self, name: str) -> None:
        """Remove a user and their tokens."""
        self._r.request("DELETE", f"/users/{segment(name, 'user name')}")

    def list(self) -> builtins.list[UserRow]:
        """Every user (a password shows as ``"(set)"``: hashes never leave the server)."""
        from ..index.users import UserRow

        return [
            UserRow(u["name"], u["role"], "(set)" if u["password"] else None, u["created_at"], u["updated_at"])
            for u in self._r.request("GET", "/users")["users"]
        ]

    def get(self, name: str) -> UserRow | None:
        """One user, or ``None``."""
        return next((u for u in self.list() if u.name == name), None)

    def count(self) -> int:
        """How many users there are."""
        return len(self.list())

    def new_token(self, name: str, label: str = "", *, expires_in: float | _dt.timedelta | None = None) -> str:
        """A new API token for ``name`` (shown once); ``expires_in`` seconds (or a timedelta) bound its life."""
        if isinstance(expires_in, _dt.timedelta):
            expires_in = expires_in.total_seconds()
        body = {"label": label, "expires_in": expires_in}
        return str(self._r.request("POST", f"/users/{segment(name, 'user name')}/tokens", json=body)["token"])

    def tokens(self, name: str) -> builtins.list[TokenRow]:
        """Each of ``name``'s tokens: id, label, creation and expiry."""
        from ..index.users import TokenRow

        found = self._r.request("GET", f"/users/{segment(name, 'user name')}/tokens")["tokens"]
        return [TokenRow(t["token_id"], t["label"], t["created_at"], t["expires_at"]) for t in found]

    def revoke_tokens(self, name: str) -> int:
        """Revoke every token of ``name``; returns how many."""
        return int(self._r.request("DELETE", f"/users/{segment(name, 'user name')}/tokens")["revoked"])

    def revoke_token(self, name: str, token_id: str) -> None:
        """Revoke one of ``name``'s tokens by its id (see :meth:`tokens`)."""
        self._r.request("DELETE", f"/users/{segment(name, 'user name')}/tokens/{path_text(token_id, 'token id')}")

    def grant(self, name: str, glob: str, role: str) -> None:
        """Give ``name`` ``role`` on the models ``glob`` matches."""
        self._r.request("PUT", f"/users/{segment(name, 'user name')}/grants", json={"glob": glob, "role": role})

    def revoke_grant(self, name: str, glob: str) -> None:
        """Take back ``name``'s grant on ``glob``."""
        self._r.request("DELETE", f"/users/{segment(name, 'user name')}/grants", params={"glob": glob})

    def grants(self, name: str) -> builtins.list[tuple[str, str]]:
        """``(glob, role)`` of each of ``name``'s grants."""
        found = self._r.request("GET", f"/users/{segment(name, 'user name')}/grants")["grants"]
        return [(str(g["glob"]), str(g["role"])) for g in found]


def server_only(what: str) -> ServerOnlyError:
    """The error for something a registry server's client cannot do."""
    return ServerOnlyError(
        f"{what} is not available through a registry server: run it on the server's host, "
        "against the registry itself (its models_dir and registry_url)"
    )


def _public_pem(spec: Any) -> str:
    """A ``require_signature`` entry (a key file, PEM text or a PublicKey) as PEM text."""
    from ..keys import PublicKey, load_public_key

    if isinstance(spec, PublicKey):
        return spec.pem().decode()
    if isinstance(spec, bytes):
        return spec.decode("ascii", "replace")
    if isinstance(spec, str) and "-----BEGIN" in spec:
        return spec
    return load_public_key(spec).pem().decode()


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters, without those left at ``None``."""
    return {k: v for k, v in values.items() if v is not None}


def _filter_text(value: Any) -> str | None:
    """A search filter as text (a parsed :class:`~modelkeep.search.grammar.Node` is written back)."""
    if value is None or isinstance(value, str):
        return value
    from ..search.grammar import unparse

    return unparse(value)
