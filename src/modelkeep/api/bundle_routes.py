"""Server routes for portable bundles (:mod:`modelkeep.bundle`); the client half is
:mod:`modelkeep.api.client_bundles`.

* ``GET /models/{name}/bundle?versions=a,b`` builds a bundle of the versions the caller may see
  (the viewer role is enough) into a temporary file on the server (the bundle writer streams
  each artifact from the store, so memory stays bounded), sends it, and removes it. The bundle
  is left unsigned: the client checks every digest and each version's signature with its own
  keys, then signs the manifest with its own key.
* ``POST /bundles?models=a,b&with_aliases=&max_bundle_bytes=`` receives a bundle as the request
  body. The writer role on every model the client declares is checked before a byte is read;
  the body is streamed to a temporary file under the server's upload cap; then the import runs
  every check a local import runs (member names and types, sizes, digests, the manifest's
  signature with the server's keys) and refuses a manifest naming a model that was not
  declared, before it registers anything. The import runs as the signed-in user, so the
  history records who imported what, and moving aliases (``with_aliases``) needs their role.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import RequestError
from ..versions import validate_model_name, validate_version
from .transfers import spool

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .routes import Api

#: Media type of a bundle on the wire (an uncompressed POSIX tar).
BUNDLE_MEDIA_TYPE = "application/x-tar"


def _names(text: str | None, validate: Any, what: str) -> list[str]:
    """``a,b`` as a list of validated names (``[]`` for nothing)."""
    try:
        return [validate(part.strip()) for part in (text or "").split(",") if part.strip()]
    except ValueError as exc:
        raise RequestError(f"bad {what}: {exc}") from None


class Bundles:
    """The bundle handlers of one :class:`~modelkeep.api.routes.Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def export(self, request: Request) -> Response:
        """An unsigned bundle of a model's versions (all live ones by default)."""
        from ..bundle import write_bundle

        name = validate_model_name(request.path_params["name"])
        versions = _names(request.query_params.get("versions"), validate_version, "versions") or None
        folder = tempfile.mkdtemp(prefix="modelkeep-export-")
        path = Path(folder) / f"{name}.mkb"
        try:
            # As the caller: only versions it may see (a model it may not see is "not found").
            await self.api.call(request, write_bundle, self.api.p, name, path, versions=versions, signer=None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(
            path,
            media_type=BUNDLE_MEDIA_TYPE,
            filename=path.name,
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    async def import_(self, request: Request) -> Response:
        """Import the bundle in the request body; answers the import's report."""
        from ..bundle import BundleError, import_checked

        q = request.query_params
        declared = _names(q.get("models"), validate_model_name, "models")
        if not declared:
            raise RequestError("say which models the bundle carries: ?models=NAME[,NAME...]")
        who = getattr(request.state, "user", None)
        for model in declared:  # before a byte of the body is read
            self.api.p.access.require(who, "writer", "import bundles", model)
        limit = q.get("max_bundle_bytes")
        if limit is not None and not limit.isdigit():
            raise RequestError(f"max_bundle_bytes must be a number of bytes, got {limit[:40]!r}")
        with_aliases = (q.get("with_aliases") or "").lower() in ("1", "true", "yes")

        def allow(models: list[str]) -> None:
            extra = sorted(set(models) - set(declared))
            if extra:
                raise BundleError(
                    f"the bundle carries model(s) {', '.join(extra)} it did not declare; nothing was imported"
                )

        fd, tmp = tempfile.mkstemp(prefix="modelkeep-import-", suffix=".mkb")
        try:
            with os.fdopen(fd, "wb") as f:
                await spool(request, self.api.max_upload_bytes, f.writelines)  # bounded memory per import
            await run_in_threadpool(self.api.p.ensure_registry)
            report = await self.api.call(
                request,
                import_checked,
                self.api.p,
                tmp,
                with_aliases=with_aliases,
                max_bundle_bytes=None if limit is None else int(limit),
                allow_models=allow,
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        from .endpoint import json_response

        return json_response({"report": report.to_dict()}, status=201)


def bundle_endpoints(api: Api) -> list[Endpoint]:
    """The routes that export and import bundles."""
    from .endpoint import Endpoint

    b = Bundles(api)
    return [
        Endpoint(
            "GET",
            "/models/{name}/bundle",
            b.export,
            "A bundle of a model's versions (?versions=a,b), unsigned",
            query=("versions",),
            returns=(BUNDLE_MEDIA_TYPE,),
        ),
        Endpoint(
            "POST",
            "/bundles",
            b.import_,
            "Import the bundle in the body (?models=a,b, with_aliases)",
            query=("models!", "with_aliases:boolean", "max_bundle_bytes:integer"),
            stream=BUNDLE_MEDIA_TYPE,
            success=(201,),
        ),
    ]
