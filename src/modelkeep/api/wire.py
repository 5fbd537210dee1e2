"""How records and errors cross the wire between ``modelkeep server`` and its clients.

An error response is ``{"error": {"class": "VersionNotFoundError", "message": "...", "cli": {...}}}``
with an HTTP status chosen by :func:`status_for`. :func:`error_from_body` turns it back into an
instance of the same :mod:`modelkeep.errors` class (never any other class: an unknown or
non-modelkeep name becomes a plain :class:`~modelkeep.errors.ModelKeepError`), so a client
raises exactly what a local registry would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import errors
from ..versions import validate_alias, validate_model_name, validate_version
from .quick import KEEPALIVE_SECONDS, RESENDABLE, Timeout, TransportError

if TYPE_CHECKING:
    from ..maintenance import VerifyReport
    from ..metadata import HistoryEntry, ModelMetadata, ModelSummary
    from ..policies import MoveCheck, Policy

#: The API's version, the path prefix of every route: ``/api/v1/...``.
API_PREFIX = "/api/v1"
#: Header carrying the client's protocol version; a server refuses clients newer than it knows.
PROTOCOL_HEADER = "X-Modelkeep-Protocol"
PROTOCOL = 1


def status_for(exc: BaseException) -> int:
    """The HTTP status a library error is answered with."""
    if isinstance(exc, errors.AuthenticationError):
        return 401
    if isinstance(exc, errors.PermissionDeniedError):
        return 403
    if isinstance(exc, (errors.RegistryNotFoundError, errors.ArtifactNotFoundError, KeyError)):
        return 404
    if isinstance(exc, errors.UploadTooLargeError):
        return 413
    if isinstance(exc, (errors.VersionExistsError, errors.AliasConflictError, errors.VersionInUseError)):
        return 409
    if isinstance(exc, (errors.IntegrityError,)):
        return 422
    if isinstance(exc, (errors.StorageError, errors.BackendUnavailableError)):
        return 503
    if isinstance(exc, errors.ServerError):
        return 500
    return 400


def error_body(exc: errors.ModelKeepError) -> dict[str, Any]:
    """The JSON body describing ``exc``."""
    body: dict[str, Any] = {
        "class": type(exc).__name__,
        "message": str(exc),
        "cli": dict(getattr(exc, "cli_spelling", {}) or {}),
    }
    for attr in ("position", "refused", "failures"):
        value = getattr(exc, attr, None)
        if value not in (None, (), []):
            body[attr] = list(value) if isinstance(value, (tuple, list)) else value
    return {"error": body}


def _error_class(name: Any) -> type[errors.ModelKeepError]:
    found = getattr(errors, name, None) if isinstance(name, str) else None
    if isinstance(found, type) and issubclass(found, errors.ModelKeepError):
        return found
    return errors.ModelKeepError


def error_from_body(status: int, body: Any) -> errors.ModelKeepError:
    """The error a server's response describes (``body`` is the decoded JSON, or anything else)."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        text = _one_line(body)
        if status == 401:
            return errors.AuthenticationError(f"the server refused the credentials (HTTP 401) {text}".strip())
        if status == 403:
            return errors.PermissionDeniedError(f"the server refused the request (HTTP 403) {text}".strip())
        if status == 404:
            return errors.ModelNotFoundError(f"not found on the server (HTTP 404) {text}".strip())
        if status == 500:  # a server that failed before it could say how (a proxy passes 502-504)
            return errors.ServerError(f"the server failed on this request (HTTP 500) {text}".strip())
        return errors.StorageError(f"the server answered HTTP {status} {text}".strip())
    cls = _error_class(detail.get("class"))
    message = str(detail.get("message", ""))
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    cli = detail.get("cli")
    exc.cli_spelling = {str(k): str(v) for k, v in cli.items()} if isinstance(cli, dict) else {}
    if "position" in detail and isinstance(detail["position"], int):
        exc.position = detail["position"]  # type: ignore[attr-defined]
    if "refused" in detail and isinstance(detail["refused"], list):
        exc.refused = tuple(str(r) for r in detail["refused"])  # type: ignore[attr-defined]
    if "failures" in detail and isinstance(detail["failures"], list):
        exc.failures = [tuple(f) for f in detail["failures"] if isinstance(f, list)]  # type: ignore[attr-defined]
    return exc


#: The version segment that names a model's latest version (``GET .../versions/latest``).
LATEST = "latest"


def version_path(model_name: str, version: str | None) -> str:
    """``/models/{name}/versions/{version}`` for a version, or for the latest when ``None``
    (``""`` is no version: it is refused, as locally)."""
    wanted = LATEST if version is None else version
    return f"/models/{path_segment(model_name, 'model name')}/versions/{path_segment(wanted, 'version')}"


#: Longer values are checked by the library's validator of their kind (if it has one) before they
#: are sent: every kind with a validator has a shorter limit, which the server would apply.
MAX_NAME_CHECKED = 256
#: The longest path parameter a client sends, percent-encoded: proxies commonly refuse request
#: lines over 8 KiB, and httpx refuses URLs over 64 KiB with its own error.
MAX_ENCODED = 8000


def path_segment(value: str, what: str = "") -> str:
    """``value`` as exactly one URL path segment, or the error a local registry raises for it.

    For the names that cannot hold ``/`` (models, versions, aliases, users; :func:`path_text` is
    for the rest). Percent-encoding keeps a ``/`` from splitting a name in two for the client,
    but the server decodes the path before routing, so ``a/b`` and an empty value reach no route
    (or another one); such a value is refused here, by the library's own validator when ``what``
    names one ("model name", "version", "alias", "user name"), as is a value too long for its
    kind. ``.`` and ``..`` are sent percent-encoded: a URL normalizer removes them as dot
    segments (``versions/..`` would become the model's own path), but the server's router takes
    them as the value they are."""
    if len(value) > MAX_NAME_CHECKED:
        _check_as(what, value)
    if not value or "/" in value:
        _check_as(what, value)
        shown = repr(value) if len(value) <= 80 else repr(value[:77] + "...")
        raise errors.InvalidNameError(
            f"{what or 'value'} {shown} cannot be sent to a registry server: "
            + ("it is empty" if not value else "it contains '/'")
        )
    return _encoded(value, what)


def path_text(value: str, what: str = "") -> str:
    """``value`` for a path parameter the server routes as ``{...:path}`` (a tag key, a metric, a
    token id, a policy's model glob, a delivery id): any text the library takes there, ``/`` and
    the empty text included. Every character but letters, digits and ``-_.~`` is percent-encoded
    (``/`` as ``%2F``, so no ``..`` inside it is a dot segment to a URL normalizer); a value of dots
    alone is sent as ``%2E``s, as in :func:`path_segment`. The server decodes the path before
    routing, and such a route takes whatever stands in its place. ``what`` names the kind for
    the library's validator, which a value too long for its kind meets before it is sent."""
    if len(value) > MAX_NAME_CHECKED:
        _check_as(what, value)
    return _encoded(value, what)


def _encoded(value: str, what: str) -> str:
    """``value`` percent-encoded as one path segment (see :func:`path_segment`); an
    :class:`~modelkeep.errors.InvalidNameError` if that is longer than :data:`MAX_ENCODED`."""
    encoded = value.replace(".", "%2E") if value and not value.strip(".") else quote(value, safe="")
    if len(encoded) > MAX_ENCODED:
        raise errors.InvalidNameError(
            f"{what or 'value'} {value[:40]!r}... ({len(value)} characters) is too long to send to a registry "
            f"server: encoded for a URL it is {len(encoded)} characters, over {MAX_ENCODED}"
        )
    return encoded


def _check_as(what: str, value: str) -> None:
    """Validate ``value`` as the local registry validates a ``what`` (nothing for other kinds)."""
    if what == "model name":
        validate_model_name(value)
    elif what == "version":
        validate_version(value)
    elif what == "alias":
        validate_alias(value)
    elif what == "tag key":
        from ..index.lifecycle import validate_tag_key

        validate_tag_key(value)
    elif what == "user name":
        from ..users import validate_user_name

        validate_user_name(value)


def is_api_error(body: Any) -> bool:
    """Whether ``body`` (decoded JSON, or text) is this API's error, ``{"error": {...}}``."""
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def no_such_route(response: Any) -> bool:
    """Whether an httpx ``response`` says the server has no such route (an older server): a 404 or
    405 that is not JSON (a server before they were JSON), or a ``RequestError`` (a route's own
    404 names what is missing: a model, a version, an upload)."""
    if response.status_code not in (404, 405):
        return False
    if "json" not in response.headers.get("content-type", ""):
        return True
    try:
        body = response.json()
    except ValueError:
        return True
    return is_api_error(body) and body["error"].get("class") == "RequestError"


def _one_line(body: Any) -> str:
    """A body that is no API error, for one line of a message: an HTML page is named, not quoted."""
    if not body:
        return ""
    text = " ".join(str(body).split())
    return "(an HTML page)" if text[:15].lower().startswith(("<!doctype", "<html")) else text[:300]


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a request that got no answer (refused, dropped, timed out), from
    :mod:`.quick` or from ``httpx`` (checked without importing it when no stream imported it)."""
    import sys

    httpx = sys.modules.get("httpx")
    return isinstance(exc, TransportError) or (httpx is not None and isinstance(exc, httpx.TransportError))


def transport_error(url: str, exc: Exception, *, downloading: bool = False) -> errors.StorageError:
    """A client's failed exchange with the registry server at ``url`` (:func:`is_transport_error`:
    timeout, refused or dropped connection) as the :class:`StorageError` the client raises."""
    import sys

    httpx = sys.modules.get("httpx")
    if isinstance(exc, Timeout) or (httpx is not None and isinstance(exc, httpx.TimeoutException)):
        return errors.StorageError(f"the registry server {url} did not answer in time ({exc})")
    if downloading:
        return errors.StorageError(f"lost the registry server {url} while downloading: {exc}")
    return errors.StorageError(
        f"cannot reach the registry server {url}: {exc} (is it running, and is that its URL? "
        "MODELKEEP_REGISTRY_URL or registry_url names it)"
    )


def resending_transport() -> Any:
    """The ``httpx`` transport of a client of the registry server: it lets idle connections go
    after :data:`KEEPALIVE_SECONDS`, and sends a request in :data:`RESENDABLE` once more, on a new
    connection, when the server dropped its connection without answering. Every request of the
    client goes through it, streamed downloads included; a write is never sent twice."""
    import httpx

    class ResendingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            try:
                return super().handle_request(request)
            except httpx.RemoteProtocolError:
                if request.method not in RESENDABLE:
                    raise
            return super().handle_request(request)

    return ResendingTransport(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_SECONDS)
    )


# -- records ---------------------------------------------------------------------------------------
def record_to_wire(record: ModelMetadata) -> dict[str, Any]:
    """A version's record with its lifecycle state (aliases, tags, description) beside it."""
    return {**record.to_dict(), "lifecycle": record.lifecycle_dict()}


def record_from_wire(data: Any) -> ModelMetadata:
    """Inverse of :func:`record_to_wire` (a malformed record raises :class:`~modelkeep.errors.MetadataError`)."""
    from ..metadata import ModelMetadata

    if not isinstance(data, dict):
        raise errors.MetadataError(f"the server sent a record that is not an object: {str(data)[:200]}")
    record = ModelMetadata.from_dict(data)
    life = data.get("lifecycle")
    if isinstance(life, dict):
        record.aliases = [str(a) for a in life.get("aliases") or []]
        record.tags = {str(k): str(v) for k, v in (life.get("tags") or {}).items()}
        description = life.get("description")
        record.description = None if description is None else str(description)
        damaged = life.get("damaged")
        record.damaged = None if damaged is None else str(damaged)
    return record


def summary_from_wire(data: dict[str, Any]) -> ModelSummary:
    """A :class:`~modelkeep.metadata.ModelSummary` from its ``to_dict``."""
    from ..metadata import ModelSummary

    return ModelSummary(
        name=str(data["name"]),
        version_count=int(data["version_count"]),
        latest_version=str(data["latest_version"]),
        updated_at=str(data["updated_at"]),
    )


def history_from_wire(data: dict[str, Any]) -> HistoryEntry:
    """A :class:`~modelkeep.metadata.HistoryEntry` from its ``to_dict``."""
    from ..metadata import HistoryEntry

    optional = ("version", "alias", "key", "before", "after", "damaged")
    extra: dict[str, Any] = {name: data.get(name) for name in optional}
    return HistoryEntry(
        id=int(data["id"]),
        at=str(data["at"]),
        actor=str(data["actor"]),
        action=str(data["action"]),
        model_name=str(data["model_name"]),
        **extra,
    )


def policy_to_wire(policy: Policy) -> dict[str, Any]:
    """A promotion policy with its conditions as stored (public keys included: they are public)."""
    return {
        "model": policy.model,
        "alias": policy.alias,
        "conditions": policy.conditions(),
        "updated_at": policy.updated_at,
        "updated_by": policy.updated_by,
    }


def policy_from_wire(data: dict[str, Any]) -> Policy:
    """Inverse of :func:`policy_to_wire`."""
    from ..policies import Policy

    c = data.get("conditions") or {}
    return Policy(
        model=str(data["model"]),
        alias=str(data["alias"]),
        filter=c.get("filter"),
        require_signature=dict(c.get("require_signature") or {}),
        require_input_signature=bool(c.get("require_input_signature", False)),
        approvals=int(c.get("approvals", 0)),
        allowed=tuple(c.get("allowed") or ()),
        updated_at=data.get("updated_at"),
        updated_by=data.get("updated_by"),
    )


def move_check_to_wire(check: MoveCheck) -> dict[str, Any]:
    """A :class:`~modelkeep.policies.MoveCheck` (policies in full, so the client can rebuild it)."""
    return {
        "model_name": check.model_name,
        "alias": check.alias,
        "version": check.version,
        "policies": [policy_to_wire(p) for p in check.policies],
        "failures": [list(f) for f in check.failures],
    }


def move_check_from_wire(data: dict[str, Any]) -> MoveCheck:
    """Inverse of :func:`move_check_to_wire`."""
    from ..policies import MoveCheck

    return MoveCheck(
        model_name=str(data["model_name"]),
        alias=str(data["alias"]),
        version=str(data["version"]),
        policies=[policy_from_wire(p) for p in data.get("policies") or []],
        failures=[(str(c), str(s)) for c, s in data.get("failures") or []],
    )


def verify_report_from_wire(data: dict[str, Any]) -> VerifyReport:
    """A :class:`~modelkeep.maintenance.VerifyReport` from its ``to_dict``."""
    from ..maintenance import Problem, VerifyReport

    return VerifyReport(
        versions_checked=int(data.get("versions_checked", 0)),
        blobs_checked=int(data.get("blobs_checked", 0)),
        bytes_checked=int(data.get("bytes_checked", 0)),
        problems=[
            Problem(
                kind=str(p["kind"]),
                key=str(p["key"]),
                detail=str(p["detail"]),
                model_name=p.get("model_name"),
                version=p.get("version"),
            )
            for p in data.get("problems") or []
        ],
        signatures={str(k): int(v) for k, v in (data.get("signatures") or {}).items()},
    )


def too_large(limit: int) -> errors.UploadTooLargeError:
    """The refusal of a request body over a server's upload cap (HTTP 413), saying how to raise it."""
    shown = f"{limit} bytes"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= size:
            shown = f"{limit / size:.1f} {unit} ({limit} bytes)"
            break
    return errors.UploadTooLargeError(
        f"the upload is larger than this server's limit of {shown}; an admin raises it with "
        "server.max_upload_bytes in the server's config, or modelkeep server --max-upload-size"
    )
