"""Test helpers: application writers that run while partman works, and table checks."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from partman.db import QualifiedName
from partman.sample_ledger import Ledger


@dataclass
class Writers:
    """Threads inserting into a table through its triggers until stopped; they record every
    id they committed, every error, and each insert's latency."""

    dsn: str
    table: QualifiedName
    threads: int = 2
    pause: float = 0.002
    ledger: bool = True
    slow_every: int = 0  # every Nth insert holds its transaction open for slow_hold seconds
    slow_hold: float = 0.3
    committed: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _insert_sql(self) -> sql.Composed:
        if self.ledger:
            return sql.SQL(
                "INSERT INTO {} (actor, action, payload, prev_hash, current_hash) "
                "VALUES ('app', 'write', '{{\"w\": 1}}', '', '') RETURNING id"
            ).format(self.table.ident())
        return sql.SQL("INSERT INTO {} (ts, note) VALUES (now(), 'app') RETURNING id").format(self.table.ident())

    def _run(self, n: int) -> None:
        q = self._insert_sql()
        i = 0
        with psycopg.connect(self.dsn, autocommit=False) as c:
            c.execute("SET lock_timeout = '10s'")
            c.commit()
            while not self._stop.is_set():
                i += 1
                t0 = time.perf_counter()
                try:
                    new_id = c.execute(q).fetchone()[0]
                    if self.slow_every and i % self.slow_every == n % max(self.slow_every, 1):
                        time.sleep(self.slow_hold)  # commits after later ids are visible
                    c.commit()
                    with self._lock:
                        self.committed.append(new_id)
                        self.latencies.append(time.perf_counter() - t0)
                except psycopg.Error as exc:
                    c.rollback()
                    with self._lock:
                        self.errors.append(str(exc).splitlines()[0])
                    time.sleep(0.05)
                time.sleep(self.pause)

    def __enter__(self) -> Writers:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        time.sleep(0.2)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_events(stderr: str, name: str) -> list[dict]:
    """partman's JSON log lines (PARTMAN_LOG_FORMAT=json) of one event."""
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith("{")) if e.get("event") == name]


def relations_in(conn: psycopg.Connection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (schema,),
    )}


def ids(conn: psycopg.Connection, table: QualifiedName) -> list[int]:
    return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(table.ident()))]


def is_partitioned(conn: psycopg.Connection, table: QualifiedName) -> bool:
    return conn.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = %s::regclass", (table.literal,)).fetchone()[0]


LEDGER = QualifiedName("public", "audit_log_ledger")
LEDGER_OLD = QualifiedName("public", "audit_log_ledger_old")


def make_ledger(conn: psycopg.Connection, rows: int = 3000) -> Ledger:
    led = Ledger(LEDGER)
    led.create(conn)
    led.seed(conn, rows, "2014-03-01", "2026-10-01")
    return led


def wait_for_partman_sessions_to_end(conn: psycopg.Connection, timeout: float = 30.0) -> None:
    """Until partman's sessions in this database are gone (a session hands its pending activity
    statistics to the server as it ends: after this, pg_stat_user_tables counts all they did)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name LIKE 'partman%'").fetchone()[0]:
        assert time.monotonic() < deadline, "partman's sessions did not end"
        time.sleep(0.05)


def partman_command() -> str:
    """The installed console script `partman` (the real command a user runs), beside this Python."""
    beside = os.path.join(os.path.dirname(sys.executable), "partman")
    found = beside if os.access(beside, os.X_OK) else shutil.which("partman")
    assert found, "the console script `partman` is not installed: pip install -e '.[test]'"
    return found


# The crash matrix (failpoint x outcome), filled by the crash tests and printed at the end of the run.
CRASH_MATRIX: list[tuple[str, str, str]] = []


class matrix_entry:
    """with matrix_entry("convert", point) as e: ...; e.outcome = "..." -- recorded even on failure."""

    def __init__(self, operation: str, point: str) -> None:
        self.operation, self.point, self.outcome = operation, point, "FAILED"

    def __enter__(self) -> "matrix_entry":
        return self

    def __exit__(self, *exc: object) -> None:
        CRASH_MATRIX.append((self.operation, self.point, self.outcome))


def latest_phase(conn: psycopg.Connection) -> str | None:
    """The phase of the latest conversion (None before partman made its catalog)."""
    try:
        row = conn.execute("SELECT phase FROM partman_catalog.conversion ORDER BY id DESC LIMIT 1").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return row[0] if row else None


def wait_for_phase(conn: psycopg.Connection, phase: str, timeout: float = 30.0) -> None:
    """Poll (autocommit `conn`) until the latest conversion reaches `phase`."""
    deadline = time.monotonic() + timeout
    while latest_phase(conn) != phase:
        if time.monotonic() > deadline:
            raise AssertionError(f"the conversion never reached its {phase} phase")
        time.sleep(0.05)


@contextmanager
def standby_server(pg_server) -> Iterator:
    """A real hot standby: a fresh throwaway server started with standby.signal stays in recovery
    (no primary to follow). Skips when the suite runs on a server it did not start."""
    import pytest

    from partman.pgtemp import TempServer

    if pg_server.temp is None:
        pytest.skip("needs the throwaway server binaries")
    standby = TempServer(version=os.environ.get("PARTMAN_TEST_PG", "18"), password=pg_server.password)
    standby.init()
    signal = standby.data / "standby.signal"
    signal.write_text("")
    st = standby.data.stat()
    try:
        shutil.chown(signal, st.st_uid, st.st_gid)
    except PermissionError:
        pass
    standby.start()
    try:
        yield standby
    finally:
        standby.cleanup()
