"""The read-only path of ``modelkeep list``, ``info`` and ``search``: answers at once.

Opening :class:`~modelkeep.ModelPersistence` imports SQLAlchemy and pydantic, which
costs several times what these commands need. So these commands first read the settings
without pydantic (:func:`~modelkeep.plain_settings.read_settings`: the config file,
``MODELKEEP_*`` variables and the global options, accepted only where they certainly read
as the library reads them), and read the index directly
(:class:`~modelkeep.index.readonly.ReadOnlyIndex`): a local ``registry.db`` read-only with
the standard ``sqlite3`` module, or PostgreSQL through libpq itself
(:mod:`~modelkeep.index.libpq`), without SQLAlchemy or even psycopg.

Behind a registry server (its URL in the settings) they open the server's client
(:class:`~modelkeep.api.client.HttpRegistry`) themselves, with the token, timeouts and keys the
library would give it, and ask the server as the library would; ``tests/test_cli_readonly_http.py``
compares both paths.

They go to the library instead, which gives its usual answer or error, for: ``--verbose``;
settings that ``read_settings`` leaves to it (a value it cannot vouch for, a log file, a
token, a remote models folder, another database); an index it does not serve (missing, of
another schema, unreachable); keys that do not load; and, once open, anything it does not
answer (a missing model, version or alias; a statement that fails, or a value it does not
read: :class:`~modelkeep.index.readonly.Unanswerable`). So does every other command.
``tests/test_cli_readonly.py`` runs the same commands through both paths and compares
their output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .cli_context import cli_state, log_to_stderr, open_registry
from .errors import no_versions
from .lifecycle import split_reference
from .metadata import ModelMetadata, ModelSummary
from .plain_settings import ReadSettings, read_settings, sqlite_file
from .signing import Keyring
from .storage import LocalStore, local_root
from .versions import validate_model_name

if TYPE_CHECKING:
    from .api.client import HttpRegistry
    from .index.readonly import ReadOnlyIndex
    from .registry import ModelPersistence
    from .search.api import SearchPage
    from .search.grammar import Node

_T = TypeVar("_T")
#: Set to "0" to send every command through the library (the conformance tests do).
ENV_SWITCH = "MODELKEEP_CLI_FAST_PATH"


class ReadOnlyRegistry:
    """What ``list``, ``info`` and ``search`` ask of :class:`~modelkeep.ModelPersistence`,
    with the same names and answers, served from a read-only index; whatever it cannot
    answer is asked of the library (opened then, once)."""

    def __init__(self, ctx: click.Context, index: ReadOnlyIndex, store: LocalStore, keyring: Keyring) -> None:
        self._ctx = ctx
        self.index = index
        self.store = store
        self.keyring = keyring

    def _library(self) -> ModelPersistence:
        return open_registry(self._ctx)

    def _answer(self, read: Callable[[], _T], ask: Callable[[ModelPersistence], _T]) -> _T:
        """``read()`` from the index, or the library's ``ask`` when the index cannot answer it exactly."""
        from .index.readonly import Unanswerable

        try:
            return read()
        except Unanswerable:
            return ask(self._library())

    def model_summaries(self) -> list[ModelSummary]:
        """As :meth:`ModelPersistence.model_summaries`."""
        return self._answer(self.index.summaries, lambda p: p.model_summaries())

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:
        """As :meth:`ModelPersistence.list_version_records`."""
        records = self._answer(
            lambda: self.index.list_records(validate_model_name(model_name)),
            lambda p: p.list_version_records(model_name),
        )
        if not records:
            raise no_versions(model_name)
        return records

    def get_version(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """As :meth:`ModelPersistence.get_version` (``name@alias`` and ``version="@alias"`` too)."""
        name, number, alias = split_reference(model_name, version, None)
        found = self._answer(
            lambda: self.index.resolve(name, number, alias), lambda p: p.get_version(model_name, version)
        )
        return found if found is not None else self._library().get_version(model_name, version)

    def search_versions(self, filter: str | Node | None = None, **options: Any) -> SearchPage[ModelMetadata]:
        """As :meth:`ModelPersistence.search_versions`, through the library's own query builder."""
        from .search.api import search_versions_in  # only search needs it: list and info skip the import

        return self._answer(
            lambda: search_versions_in(self.index.database(), filter, **options),
            lambda p: p.search_versions(filter, **options),
        )

    def close(self) -> None:
        self.index.close()


def read_registry(ctx: click.Context) -> ReadOnlyRegistry | HttpRegistry | ModelPersistence:
    """The registry for a read command: the read-only path when it can serve it, else the library."""
    import os

    state = cli_state(ctx)
    if state.persistence is None and os.environ.get(ENV_SWITCH, "1") != "0":
        reader = _open_read_only(ctx, state.config_path, state.overrides, state.verbose)
        if reader is not None:
            return reader
    return open_registry(ctx)


def _open_read_only(
    ctx: click.Context, config_path: Path | None, overrides: dict[str, Any], verbose: bool | None
) -> ReadOnlyRegistry | HttpRegistry | None:
    """The read-only registry (or, for a registry server, its client), or ``None`` for the
    library: ``--verbose`` (its debug log is the library's), settings only the library can read
    (:func:`~modelkeep.plain_settings.read_settings`), an index it does not serve (see
    :class:`~modelkeep.index.readonly.ReadOnlyIndex`), or keys that do not load (the library
    reports them)."""
    import logging

    if verbose:
        return None
    level = None if verbose is None else "ERROR"  # as open_registry: --quiet logs errors only
    settings = read_settings(config_path, {**overrides, "log_level": level})
    if settings is None:
        return None
    keyring = read_keyring(settings)  # before the index or the server, as ModelPersistence
    if keyring is None:
        return None
    reader: ReadOnlyRegistry | HttpRegistry | None
    if settings.server_url is not None:
        reader = _server_client(settings, keyring)
    else:
        store = LocalStore(local_root(settings.models_dir))
        index = _open_index(settings, Path(store.root))
        reader = None if index is None else ReadOnlyRegistry(ctx, index, store, keyring)
    if reader is None:
        return None
    logging.getLogger("modelkeep").setLevel(settings.log_level)
    log_to_stderr(False)
    ctx.call_on_close(reader.close)
    return reader


def _server_client(settings: ReadSettings, keyring: Keyring) -> HttpRegistry:
    """The client of the registry server ``settings`` name, opened with the options the library
    gives it (``Settings.persistence_options``) that reads use: the token, the timeouts and the
    keys (``keyring``: what ``HttpRegistry.keyring`` resolves from the same settings, read
    without pydantic); the command asks the server as it would through the library."""
    from . import timeouts
    from .api.client import HttpRegistry

    assert settings.server_url is not None
    client = HttpRegistry(
        settings.server_url,
        token=settings.token,
        connect_timeout=timeouts.CONNECT_TIMEOUT if settings.connect_timeout is None else settings.connect_timeout,
        read_timeout=timeouts.READ_TIMEOUT if settings.read_timeout is None else settings.read_timeout,
        signing_key=settings.signing_key,
        signing_key_file=settings.signing_key_file,
        trusted_keys=settings.trusted_keys or None,
        require_signatures=settings.require_signatures,
    )
    client.keyring = keyring  # a cached property
    return client


def read_keyring(settings: ReadSettings) -> Keyring | None:
    """The keys ``ModelPersistence`` would hold with ``settings`` (configured keys are read, and
    so checked, when a registry opens), or ``None`` when they do not load: the library then
    raises its error, after checking what comes first."""
    try:
        return Keyring(
            hmac_key=settings.signing_key,
            signing_key_file=settings.signing_key_file,
            trusted_keys=settings.trusted_keys,
            require_signatures=settings.require_signatures,
        )
    except Exception:
        return None


def _open_index(settings: ReadSettings, store_root: Path) -> ReadOnlyIndex | None:
    """The index ``ModelPersistence`` would open for ``settings``: ``registry.db`` in
    ``registry_path`` or the models folder, a ``sqlite:///FILE`` URL, or PostgreSQL."""
    from . import timeouts
    from .index.readonly import ReadOnlyIndex

    url = settings.registry_url
    if url is None:
        folder = Path(settings.registry_path if settings.registry_path is not None else store_root)
        return ReadOnlyIndex.open(folder.resolve() / "registry.db")
    database = sqlite_file(url)
    if database is not None:
        return ReadOnlyIndex.open(Path(database))
    return ReadOnlyIndex.open_postgres(  # read_settings took no other URL
        url,
        timeouts.CONNECT_TIMEOUT if settings.connect_timeout is None else settings.connect_timeout,
        timeouts.READ_TIMEOUT if settings.read_timeout is None else settings.read_timeout,
    )


__all__ = ["ENV_SWITCH", "ReadOnlyRegistry", "read_keyring", "read_registry"]
