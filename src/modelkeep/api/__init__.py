"""The registry over HTTP: ``modelkeep server``'s JSON API under ``/api/v1`` and its client.

* :mod:`.wire` is the shared vocabulary: how records, errors and identities cross the wire.
  An error response names the :mod:`modelkeep.errors` class, so a client raises exactly what a
  local registry would raise.
* :mod:`.routes` is the server side: Starlette routes mounted into the UI's app, behind the UI's
  identity check (API tokens, sessions, the SSO header); each handler calls the library inside
  :func:`modelkeep.identity.acting_as`, so the library's role checks and history apply.
* :mod:`.client` is :class:`~.client.HttpRegistry`, what ``ModelPersistence("https://host")``
  returns: the same public methods, over HTTP. Keys and signatures stay on the client.

Imports flow one way: ``client`` and ``routes`` import ``wire``; nothing here is imported by the
library's core modules (``registry.py`` imports :mod:`.client` lazily, for the URL dispatch).
"""
