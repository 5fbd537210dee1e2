"""Killing a saver's database connections, for the fault-injection tests (issue 11).

PostgreSQL: ``pg_terminate_backend`` of every backend the saver's engine has
used, from another connection, as a server restart or network drop would.
SQLite: the saver's ``sqlite3`` connections are closed under SQLAlchemy, which
rolls back their transaction and releases their lock, as a crash would.

Also the worker of the random-kill test: ``python tests/_faults.py '<json spec>'``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import threading
import time
import traceback
from typing import Any

from sqlalchemy import event


class ConnectionKiller:
    """Kills every database connection a :class:`ModelPersistence` has checked out so far."""

    def __init__(self, persistence: Any, admin_url: str | None = None) -> None:
        self.index = persistence.index
        self.dialect = persistence.index.dialect
        self.admin_url = admin_url
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self.kills = 0
        event.listen(self.index.engine.pool, "checkout", self._seen)
        # replace the connections pooled before we listened by one we know, ready for the next use
        self.index.engine.pool.dispose()
        with self.index.engine.connect():
            pass

    def _seen(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        with self._lock:
            if all(c is not dbapi_conn for c in self._conns):
                self._conns.append(dbapi_conn)

    def kill(self) -> int:
        """Kill them all now; returns how many were alive."""
        with self._lock:
            conns, self._conns = self._conns, []
        alive = 0
        if self.dialect == "sqlite":
            for conn in conns:
                try:
                    conn.execute("SELECT 1")
                except Exception:
                    continue
                conn.close()
                alive += 1
        else:
            import psycopg

            assert self.admin_url
            pids = [c.info.backend_pid for c in conns if not c.closed]
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                for pid in pids:
                    if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                        alive += 1
                        self._wait_gone(admin, pid)
        self.kills += alive
        return alive

    @staticmethod
    def _wait_gone(admin: Any, pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None:
                return
            time.sleep(0.01)

    def raise_disconnect(self, dbapi_conn: Any) -> None:
        """Kill ``dbapi_conn`` and raise the driver's own error for a dropped connection."""
        dbapi_conn = getattr(dbapi_conn, "dbapi_connection", dbapi_conn)  # the pool's proxy -> the driver's
        if self.dialect == "sqlite":
            dbapi_conn.close()
            dbapi_conn.execute("SELECT 1")  # sqlite3.ProgrammingError: Cannot operate on a closed database.
        else:
            import psycopg

            assert self.admin_url
            pid = dbapi_conn.info.backend_pid
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                self._wait_gone(admin, pid)
            dbapi_conn.execute("SELECT 1")  # psycopg.OperationalError; the connection is now "broken"
        raise AssertionError("the killed connection still answered")


# -- the random-kill worker ---------------------------------------------------------------------


def model_for(worker: int, i: int) -> dict[str, Any]:
    import numpy as np

    return {"worker": worker, "i": i, "weights": np.full(20_000, worker * 1000 + i, dtype=np.int64)}


def _self_kill_hooks(p: Any, rng: random.Random, probability: float) -> ConnectionKiller:
    """SQLite: kill this worker's own connections at random points of its saves."""
    from modelkeep.index.claims import VersionClaim
    from modelkeep.index.sql import Reservation
    from modelkeep.storage import StagedArtifact

    killer = ConnectionKiller(p)

    def maybe() -> None:
        if rng.random() < probability:
            killer.kill()

    def wrap(cls: Any, name: str, after: bool = False) -> None:
        original = getattr(cls, name)

        def hooked(*args: Any, **kwargs: Any) -> Any:
            if not after:
                maybe()
            result = original(*args, **kwargs)
            if after:
                maybe()
            return result

        setattr(cls, name, hooked)

    wrap(VersionClaim, "check")
    wrap(type(p.store), "write_bytes", after=True)  # the backend's own (object stores override it)
    wrap(StagedArtifact, "commit", after=True)
    wrap(Reservation, "put", after=True)  # inside the commit transaction
    return killer


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Save ``count`` versions (some explicit-version overwrites), reporting successes and failures;
    with ``stop_file``, keep saving after ``count`` until that file exists."""
    from modelkeep import ModelPersistence
    from modelkeep.errors import CommitUnknownError, ModelKeepError

    worker = spec["worker"]
    rng = random.Random(worker)
    debug = os.environ.get("MODELKEEP_FAULTS_DEBUG")
    if debug and debug != "1":  # a folder: this writer's modelkeep log goes there
        import logging

        handler = logging.FileHandler(os.path.join(debug, f"writer{worker}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("modelkeep").addHandler(handler)
        logging.getLogger("modelkeep").setLevel(logging.DEBUG)
    saved, failed = [], []
    for attempt in range(10):  # opening may meet the killer too, as a script would: try again
        try:
            p = ModelPersistence(
                models_dir=spec["models_dir"],
                registry_url=spec["registry_url"],
                storage_options=spec.get("storage_options"),
                index_schema=spec.get("index_schema"),
            )
            break
        except ModelKeepError:
            if attempt == 9:
                raise
    with open(f"{spec['start_file']}.ready{worker}", "w"):
        pass  # opened: the killer may start
    deadline = time.monotonic() + 60
    while not os.path.exists(spec["start_file"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the start signal never came")
        time.sleep(0.01)
    with p:
        killer = _self_kill_hooks(p, rng, spec["self_kill"]) if spec.get("self_kill") else None
        for i in itertools.count():
            if i >= spec["count"] and not (spec.get("stop_file") and not os.path.exists(spec["stop_file"])):
                break
            explicit = spec["shared_version"] if i % 4 == 3 else None
            try:
                rec = p.save_version(
                    model_for(worker, i),
                    spec["model_name"],
                    explicit,
                    overwrite=explicit is not None,
                    metadata={"worker": worker, "i": i},
                )
            except ModelKeepError as exc:  # allowed: reported as failed, must then not be listed as ours
                failed.append({"i": i, "error": f"{type(exc).__name__}: {exc}"})
                if isinstance(exc, CommitUnknownError) and exc.records:  # the library says: may have landed
                    failed[-1]["unknown"] = [{"version": r.version, "sha256": r.artifact.sha256} for r in exc.records]
                if os.environ.get("MODELKEEP_FAULTS_DEBUG"):  # where it failed, for the test's report
                    failed[-1]["traceback"] = traceback.format_exc()
                continue
            assert rec.artifact is not None
            saved.append({"i": i, "version": rec.version, "sha256": rec.artifact.sha256})
    return {"worker": worker, "saved": saved, "failed": failed, "self_kills": killer.kills if killer else 0}


if __name__ == "__main__":
    print(json.dumps(run_worker(json.loads(sys.argv[1]))))
