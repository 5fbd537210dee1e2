"""The read-only path of ``modelkeep list``, ``info`` and ``search``: answers at once.

Opening :class:`~modelkeep.ModelPersistence` imports SQLAlchemy and pydantic, which
costs several times what these commands need. So when the settings are certainly the
defaults (no config file, no ``MODELKEEP_*`` setting but ``MODELKEEP_MODELS_DIR``, which
config.py takes as it is, no ``--registry-url``, no ``--verbose``) and the models folder is
local, the command reads the registry's ``registry.db`` read-only with the standard ``sqlite3`` module
(:class:`~modelkeep.index.readonly.ReadOnlyIndex`). Anything that path does not
answer (a missing registry or version, an index of another schema, an unknown alias)
goes to the library, which gives its usual answer or error; so do PostgreSQL
registries and every other command. ``tests/test_cli_readonly.py`` runs the same
commands through both paths and compares their output.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_context import cli_state, log_to_stderr, open_registry
from .config_sources import DEFAULT_MODELS_DIR, PLAIN_VARS, defaults_apply
from .errors import no_versions
from .lifecycle import split_reference
from .metadata import ModelMetadata, ModelSummary
from .search.api import SearchPage, search_versions_in
from .signing import Keyring
from .storage import LocalStore, is_local, local_root
from .versions import validate_model_name

if TYPE_CHECKING:
    from .index.readonly import ReadOnlyIndex
    from .registry import ModelPersistence
    from .search.grammar import Node

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

    def model_summaries(self) -> list[ModelSummary]:
        """As :meth:`ModelPersistence.model_summaries`."""
        return self.index.summaries()

    def list_version_records(self, model_name: str) -> list[ModelMetadata]:
        """As :meth:`ModelPersistence.list_version_records`."""
        records = self.index.list_records(validate_model_name(model_name))
        if not records:
            raise no_versions(model_name)
        return records

    def get_version(self, model_name: str, version: str | None = None) -> ModelMetadata:
        """As :meth:`ModelPersistence.get_version` (``name@alias`` and ``version="@alias"`` too)."""
        name, number, alias = split_reference(model_name, version, None)
        if alias is not None:
            target = self.index.alias_target(name, alias)
            if target is None or (number is not None and number != target):
                return self._library().get_version(model_name, version)
            number = target
        found = self.index.resolve(name, number)
        return found if found is not None else self._library().get_version(model_name, version)

    def search_versions(self, filter: str | Node | None = None, **options: Any) -> SearchPage[ModelMetadata]:
        """As :meth:`ModelPersistence.search_versions`, through the library's own query builder."""
        return search_versions_in(self.index.database(), filter, **options)

    def close(self) -> None:
        self.index.close()


def read_registry(ctx: click.Context) -> ReadOnlyRegistry | ModelPersistence:
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
) -> ReadOnlyRegistry | None:
    import os

    if verbose or set(overrides) - {"models_dir", "trusted_keys"}:
        return None
    if not defaults_apply(config_path, besides=PLAIN_VARS):
        return None
    # as config.py: the option, else MODELKEEP_MODELS_DIR (a plain string), else the default
    models_dir = str(overrides.get("models_dir", os.environ.get("MODELKEEP_MODELS_DIR", DEFAULT_MODELS_DIR)))
    if not models_dir or not is_local(models_dir):
        return None
    from .index.readonly import ReadOnlyIndex

    store = LocalStore(local_root(models_dir))
    index = ReadOnlyIndex.open(Path(store.root) / "registry.db")
    if index is None:
        return None
    try:
        # As ModelPersistence: configured public keys are read (and reported) when the registry opens.
        keyring = Keyring(trusted_keys=overrides.get("trusted_keys"))
    except BaseException:
        index.close()
        raise
    log_to_stderr(False)
    reader = ReadOnlyRegistry(ctx, index, store, keyring)
    ctx.call_on_close(reader.close)
    return reader


__all__ = ["ENV_SWITCH", "ReadOnlyRegistry", "read_registry"]
