"""One helper thread per job and per process, for work a caller hands off and joins later.

A save overlaps a few waits with its own work on such threads: the lineage's git check
(:mod:`modelkeep.lineage`), the version folder's ``fsync`` and the unlink of large files
(:mod:`modelkeep.storage.local`). A forked child does not inherit its parent's threads, so each
process makes its own on first use.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


class ProcessWorker:
    """One helper thread of a process (a forked child starts its own), made on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def pool(self) -> ThreadPoolExecutor:
        """This process's thread, to ``submit`` to (the jobs run one after another, in order)."""
        if self._pool is None or self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
            self._pid = os.getpid()
        return self._pool

    def drain(self) -> None:
        """Block until what this process handed to the thread so far is done."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.submit(lambda: None).result()
