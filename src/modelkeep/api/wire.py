"""How records and errors cross the wire between ``modelkeep server`` and its clients.

An error response is ``{"error": {"class": "VersionNotFoundError", "message": "...", "cli": {...}}}``
with an HTTP status chosen by :func:`status_for`. :func:`error_from_body` turns it back into an
instance of the same :mod:`modelkeep.errors` class (never any other class: an unknown or
non-modelkeep name becomes a plain :class:`~modelkeep.errors.ModelKeepError`), so a client
raises exactly what a local registry would.
"""

from __future__ import annotations

from typing import Any

from .. import errors

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
    if isinstance(exc, (errors.VersionExistsError, errors.AliasConflictError, errors.VersionInUseError)):
        return 409
    if isinstance(exc, (errors.IntegrityError,)):
        return 422
    if isinstance(exc, (errors.StorageError, errors.BackendUnavailableError)):
        return 503
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
        text = str(body)[:500] if body else ""
        if status == 401:
            return errors.AuthenticationError(f"the server refused the credentials (HTTP 401) {text}".strip())
        if status == 403:
            return errors.PermissionDeniedError(f"the server refused the request (HTTP 403) {text}".strip())
        if status == 404:
            return errors.ModelNotFoundError(f"not found on the server (HTTP 404) {text}".strip())
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


def is_http_url(value: Any) -> bool:
    """Whether ``value`` names a registry server (``http://`` or ``https://``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))
