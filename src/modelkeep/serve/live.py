"""The model a server answers with, and the thread that follows its alias.

:class:`LiveModel` holds one :class:`Loaded` (model, record, signature verdict) at a
time. A request takes the current one at its start and keeps it to its end, so a swap
(a single attribute assignment) never changes the model under a request in flight.

With an alias, :meth:`LiveModel.follow` polls it every ``poll`` seconds with one indexed
query (``index.lifecycle.resolve_alias``). When it points elsewhere, the new version is
loaded through :meth:`ModelPersistence.load` (hash and signature checked), refused if
``require_signatures`` and its signature (or the alias move that points at it: see
:meth:`ModelPersistence.verify_alias`) is not trusted, and warmed with one predict on a
row made from its input signature; only then is it swapped in. A failure keeps the old
model and records why (:attr:`LiveModel.behind`); the same target is retried with
growing pauses, and at once when the alias moves again.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .bodies import example_from

if TYPE_CHECKING:
    from ..metadata import ModelMetadata
    from ..registry import ModelPersistence
    from ..signing import Verdict

logger = logging.getLogger("modelkeep.serve")


@dataclass(frozen=True)
class Loaded:
    """One verified, warmed version."""

    model: Any
    record: ModelMetadata
    verdict: Verdict
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Behind:
    """A newer alias target the server could not switch to, and why."""

    version: str
    reason: str
    since: float


class LiveModel:
    """The version a server answers with, swapped atomically when its alias moves."""

    def __init__(
        self,
        persistence: ModelPersistence,
        name: str,
        *,
        version: str | None = None,
        alias: str | None = None,
        require_signatures: bool = False,
        mmap: bool = True,
        on_swap: Callable[[Loaded, Loaded | None], None] | None = None,
        on_failure: Callable[[Behind], None] | None = None,
    ) -> None:
        self.p = persistence
        self.name = name
        self.version = version
        self.alias = alias
        self.require_signatures = require_signatures
        self.mmap = mmap
        self.current: Loaded | None = None
        self.behind: Behind | None = None
        self.reloads = 0
        self.last_reload: float | None = None
        self.error: str | None = None  # why nothing could be loaded at start
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------
    def target(self) -> str:
        """The version to serve now: the alias target (one indexed query) or the pinned version."""
        if self.alias is not None:
            from ..api.client import HttpRegistry

            if isinstance(self.p, HttpRegistry):  # a registry server's client: one request
                return self.p.resolve_version(self.name, alias=self.alias)
            return self.p.index.lifecycle.resolve_alias(self.name, self.alias)
        return self.p.resolve_version(self.name, self.version)

    def prepare(self, version: str) -> Loaded:
        """Load, verify and warm ``version``; raises when any of that fails."""
        record = self.p.get_version(self.name, version)
        verdict = self.p.keyring.verdict(record)
        if self.require_signatures and not verdict.trusted:
            from ..errors import SignatureError

            raise SignatureError(
                f"version {version} is {verdict.status} ({verdict.reason or 'no trusted signature'}) and the server "
                "was started with --require-signatures"
            )
        if self.require_signatures and self.alias is not None:
            # The alias itself must have been moved here by a trusted signed move (not rewritten or replayed).
            self.p.verify_alias(self.name, self.alias, version=version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MmapIgnoredWarning: not every artifact can be mapped
            model, record = self.p.load(self.name, version, return_metadata=True, mmap_mode="r" if self.mmap else None)
        example = example_from(record.input_signature)
        if example is not None and hasattr(model, "predict"):
            try:
                model.predict(example)
            except Exception as exc:
                raise RuntimeError(f"warm-up predict on a row made from the input signature failed: {exc}") from exc
        return Loaded(model, record, verdict)

    def start(self) -> None:
        """Load the first version (blocking); on failure, :attr:`error` says why and the follower retries."""
        try:
            version = self.target()
            self._swap(self.prepare(version))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("cannot serve %s: %s", self.reference, self.error)

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}@{self.version or 'latest'}"

    def _swap(self, loaded: Loaded) -> None:
        with self._lock:
            old, self.current = self.current, loaded
            if old is not None:
                self.reloads += 1
                self.last_reload = loaded.since
            self.behind = None
            self.error = None
        if old is not None:
            logger.warning(
                "%s now serves version %s (was %s)", self.reference, loaded.record.version, old.record.version
            )
        if self._on_swap:
            self._on_swap(loaded, old)

    # -- following ----------------------------------------------------------------
    def follow(self, poll: float) -> None:
        """Start the background thread that follows the alias (no-op for a pinned version, or when running)."""
        if self._thread is not None or (self.alias is None and self.current is not None):
            return
        self._thread = threading.Thread(target=self._run, args=(poll,), name="modelkeep-serve-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, poll: float) -> None:
        failed: tuple[str, float, float] | None = None  # (version, retry at, pause)
        while not self._stop.wait(poll):
            try:
                version = self.target()
            except Exception as exc:  # the index is unreachable, or the alias was removed
                logger.warning("cannot resolve %s: %s; still serving the loaded version", self.reference, exc)
                continue
            current = self.current
            if current is not None and current.record.version == version:
                if self.behind is not None:
                    self.behind = None
                failed = None
                continue
            now = time.monotonic()
            if failed is not None and failed[0] == version and now < failed[1]:
                continue
            try:
                loaded = self.prepare(version)
            except Exception as exc:
                pause = min(300.0, max(poll, failed[2] * 2 if failed and failed[0] == version else poll))
                failed = (version, now + pause, pause)
                reason = f"{type(exc).__name__}: {exc}"
                was = self.behind
                self.behind = Behind(version, reason, was.since if was and was.version == version else time.time())
                if was is None or was.reason != reason:
                    logger.error(
                        "%s moved to version %s, which cannot be served (%s); still serving version %s",
                        self.reference,
                        version,
                        reason,
                        current.record.version if current else "none",
                    )
                if self._on_failure:
                    self._on_failure(self.behind)
                continue
            failed = None
            self._swap(loaded)
            if self.alias is None:
                return  # a pinned version that failed at start is loaded now; nothing more to follow
