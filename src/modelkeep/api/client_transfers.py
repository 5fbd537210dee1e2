"""The client side of artifact transfers: save and load through a registry server.

(Filled in by the transfer work: see :mod:`modelkeep.api.transfers` for the server side.)
"""

from __future__ import annotations


class TransferMixin:
    """Save, load and export for :class:`~modelkeep.api.client.HttpRegistry`."""
