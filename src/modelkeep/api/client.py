"""The client of ``modelkeep server``: :class:`HttpRegistry`.

``ModelPersistence("https://models.example", token=...)`` (or ``MODELKEEP_REGISTRY_URL=https://...``
with ``MODELKEEP_TOKEN``) returns an :class:`HttpRegistry`: the same public methods as a local
registry, carried out by the server, which alone holds the index URL and the store's credentials.
Errors come back as the same :mod:`modelkeep.errors` classes (:mod:`.wire`). Signing keys and
trusted keys stay here: a save is signed before it leaves, and a load checks the signature and the
digests with this client's keys, so a compromised server cannot hand out a model readers trust.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from ..errors import BackendUnavailableError, ConfigError, ModelKeepError, StorageError
from ..metadata import ModelMetadata
from .client_transfers import TransferMixin
from .wire import API_PREFIX, PROTOCOL, PROTOCOL_HEADER, error_from_body

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


def segment(value: str) -> str:
    """``value`` as one URL path segment (a model name never turns into two)."""
    return quote(value, safe="")


class HttpRegistry(TransferMixin):
    """A registry served by ``modelkeep server`` at ``url``, used with an API ``token``."""

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
        insecure_ok = os.environ.get("MODELKEEP_ALLOW_INSECURE_HTTP", "").strip() in ("1", "true", "yes")
        if self.url.lower().startswith("http://") and not _is_loopback_url(self.url) and not insecure_ok:
            # Tokens in clear text over a network: refuse unless asked for explicitly.
            raise ConfigError(
                f"{self.url} is plain http on a network address: use https, or set "
                "MODELKEEP_ALLOW_INSECURE_HTTP=1 if a trusted network carries it"
            )
        self.token = token if token is not None else (os.environ.get("MODELKEEP_TOKEN") or None)
        self.options = options
        httpx = _httpx()
        timeout = httpx.Timeout(
            read_timeout if read_timeout is not None else DEFAULT_READ_TIMEOUT,
            connect=connect_timeout if connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT,
        )
        headers = {PROTOCOL_HEADER: str(PROTOCOL)}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout)

    # -- plumbing -------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one API request and return its decoded JSON; a JSON error raises its library error."""
        httpx = _httpx()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StorageError(f"the registry server {self.url} did not answer in time ({exc})") from None
        except httpx.TransportError as exc:
            raise StorageError(f"cannot reach the registry server {self.url}: {exc}") from None
        return self.decode(response)

    def decode(self, response: Any) -> Any:
        """The JSON of a successful ``response``, else the error it carries, raised."""
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise error_from_body(response.status_code, body)
        return body

    def close(self) -> None:
        """Close the connections to the server."""
        self._http.close()

    def __enter__(self) -> HttpRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpRegistry({self.url!r})"

    # -- reading --------------------------------------------------------------
    def server_info(self) -> dict[str, Any]:
        """The server's name, version and protocol, and who this client is signed in as."""
        info = self.request("GET", "/")
        if not isinstance(info, dict):
            raise ModelKeepError(f"{self.url} did not answer like a modelkeep server")
        return info

    def list_models(self) -> list[str]:
        """Names of the models this client may see."""
        return list(self.request("GET", "/models")["models"])

    def list_versions(self, model_name: str) -> list[str]:
        """A model's live versions, oldest first."""
        return list(self.request("GET", f"/models/{segment(model_name)}/versions")["versions"])

    def get_version(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """One version's record (the latest by default)."""
        path = f"/models/{segment(model_name)}/versions/{segment(version or 'latest')}"
        return ModelMetadata.from_dict(self.request("GET", path)["record"])


def _is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
