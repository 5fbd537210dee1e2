"""Server routes that move artifact bytes: uploads for saves, downloads for loads.

(Filled in by the transfer work: see :mod:`modelkeep.api.client_transfers` for the client side.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .routes import Api, Endpoint


def transfer_endpoints(api: Api) -> list[Endpoint]:
    """The routes that upload and download artifacts (none yet)."""
    return []
