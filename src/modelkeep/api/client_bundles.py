"""The client side of bundles over HTTP: :meth:`~BundleMixin.export_bundle` and
:meth:`~BundleMixin.import_bundle` of :class:`~modelkeep.api.client.HttpRegistry`, with the
arguments of :class:`~modelkeep.ModelPersistence`'s (the server half is :mod:`.bundle_routes`).

Keys stay here. An export streams the server's unsigned bundle to a file beside ``output``,
checks every member's digest and each version's signature with this client's keys (as a local
export does), signs the manifest with this client's key, and renames it into place. An import
checks the manifest's signature with this client's keys, then streams the file up; the server
runs every other check of a local import before it registers anything.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..versions import validate_model_name, validate_version
from .wire import path_segment as _segment
from .wire import transport_error

if TYPE_CHECKING:
    from ..bundle import BundleReport
    from ..signing import Keyring

#: Bytes read from a bundle file per chunk sent.
SEND_CHUNK = 1 << 20


class BundleMixin:
    """Bundles through a registry server (mixed into :class:`~modelkeep.api.client.HttpRegistry`)."""

    url: str
    _http: Any

    @property
    def keyring(self) -> Keyring:  # pragma: no cover - HttpRegistry's (a cached property)
        raise NotImplementedError

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def decode(self, response: Any) -> Any:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def server_info(self) -> dict[str, Any]:  # pragma: no cover - HttpRegistry's
        raise NotImplementedError

    def export_bundle(
        self,
        model_name: str,
        output: str | os.PathLike[str],
        *,
        versions: list[str] | None = None,
        force: bool = False,
    ) -> Path:
        """Write ``model_name``'s versions (all by default) to the bundle file ``output``, as
        :meth:`ModelPersistence.export_bundle <modelkeep.ModelPersistence.export_bundle>` does:
        the server builds it; this client checks each artifact's digest and each version's
        signature with its own keys, and signs the manifest with its own key. The file appears
        only when complete."""
        from ..bundle import append_signature, check_received, refuse_existing

        out = refuse_existing(output, force)
        name = validate_model_name(model_name)
        params = {}
        if versions is not None:
            params["versions"] = ",".join(validate_version(v) for v in versions)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            self._download(f"/models/{_segment(name)}/bundle", params, tmp)
            manifest = check_received(tmp, self.keyring)
            signer = self.keyring.signer()
            if signer is not None:
                append_signature(tmp, manifest, signer)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out

    def import_bundle(
        self,
        path: str | os.PathLike[str],
        *,
        with_aliases: bool = False,
        max_bundle_bytes: int | None = None,
    ) -> BundleReport:
        """Register the bundle at ``path`` on the server, as
        :meth:`ModelPersistence.import_bundle <modelkeep.ModelPersistence.import_bundle>` does.

        The manifest's signature is judged here with this client's keys (an invalid one is
        refused; so is an unsigned or untrusted one when signatures are required), and the
        report's ``signature`` is that verdict. The server then checks everything else (member
        names and types, sizes, digests; the writer role on every model the bundle carries)
        before it registers anything; a bundle over the server's upload cap is refused with
        :class:`~modelkeep.errors.UploadTooLargeError`."""
        from ..bundle import BundleReport, check_manifest, read_manifest

        source = Path(path)
        manifest, data, signature = read_manifest(source)
        verdict = check_manifest(data, signature, self.keyring)
        names = sorted({str(v["model_name"]) for v in manifest["versions"]})
        size = source.stat().st_size
        limit = self.server_info().get("max_upload_bytes")
        if isinstance(limit, int) and size > limit:
            from .wire import too_large

            raise too_large(limit)
        params: dict[str, str] = {"models": ",".join(names)}
        if with_aliases:
            params["with_aliases"] = "1"
        if max_bundle_bytes is not None:
            params["max_bundle_bytes"] = str(int(max_bundle_bytes))
        with open(source, "rb") as f:
            answer = self.request(
                "POST",
                "/bundles",
                params=params,
                content=iter(lambda: f.read(SEND_CHUNK), b""),
                headers={"Content-Length": str(size), "Content-Type": "application/x-tar"},
            )
        report = BundleReport.from_dict(answer["report"])
        report.signature = {**verdict.to_dict(), "signer": verdict.signer}
        report.signature_checked = verdict.trusted
        return report

    def _download(self, path: str, params: dict[str, str], target: Path) -> None:
        """Stream a GET's body to ``target`` (an error answer raises its library error)."""
        import httpx

        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    self.decode(response)
                with open(target, "wb") as f:
                    for chunk in response.iter_bytes(SEND_CHUNK):
                        f.write(chunk)
        except httpx.TransportError as exc:  # timeouts included
            with contextlib.suppress(OSError):
                target.unlink()
            raise transport_error(self.url, exc, downloading=True) from None
