"""A real autovacuum in the way: partman's short lock_timeout (shorter than deadlock_timeout,
after which the server cancels an autovacuum) must not make it give up while autovacuum works on
the table. The workers are real: autovacuum wakes every second and crawls through the table
(cost limit 1, 100 ms delay), as it would through a large one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from partman.db import QualifiedName

from helpers import is_partitioned

EVENTS = QualifiedName("public", "events")

pytestmark = pytest.mark.conversion

CRAWL = ("autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1, "
         "autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0")
WORKER_ON = """
SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.backend_type = 'autovacuum worker' AND l.granted AND l.relation = %s::regclass"""


@pytest.fixture
def autovacuum_every_second(pg_server) -> Iterator[None]:
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as c:
        if not c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            pytest.skip("needs a superuser to set autovacuum_naptime")
        c.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        c.execute("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            c.execute("ALTER SYSTEM RESET autovacuum_naptime")
            c.execute("SELECT pg_reload_conf()")


def wait_for_worker(conn: psycopg.Connection, table: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(WORKER_ON, (table,)).fetchone()
        if row:
            return row[0]
        time.sleep(0.05)
    raise AssertionError(f"autovacuum never started on {table}")


def mutable_events(conn: psycopg.Connection) -> None:
    """10 years of rows, half of them deleted: work for autovacuum."""
    conn.execute(
        f"""
        CREATE TABLE public.events (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, pad text NOT NULL)
            WITH ({CRAWL});
        INSERT INTO public.events (ts, pad)
        SELECT timestamptz '2016-01-01' + g * interval '4 hours', repeat('x', 100) FROM generate_series(1, 20000) g;
        DELETE FROM public.events WHERE id % 2 = 0;
        """
    )


def test_convert_cancels_an_autovacuum_holding_the_table(conn, env, partman, autovacuum_every_second,
                                                         monkeypatch):
    """Without this, every attempt to add the capture trigger timed out (200 ms < deadlock_timeout)
    and partman gave up; the worker would have come back for the swap too."""
    mutable_events(conn)
    first = wait_for_worker(conn, "public.events")
    monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "3")
    r = partman("convert", "public.events", "--column", "ts", "--interval", "year", "--sleep", "0",
                "--lock-timeout", "200")
    assert r.code == 0, r.err
    assert is_partitioned(conn, EVENTS)
    assert conn.execute("SELECT count(*) FROM public.events").fetchone()[0] == 10000
    assert '"autovacuum_cancelled"' in r.err and f"(pid {first})" in r.err


def test_a_role_that_may_not_cancel_autovacuum_waits_it_out_once(conn, dsn, partman, autovacuum_every_second,
                                                                  monkeypatch):
    """The table's owner, no superuser: pg_cancel_backend() is refused on an autovacuum worker,
    so the attempt waits past deadlock_timeout, once, and the server cancels the worker. Here
    autovacuum crawls through the default partition, which creating a partition locks."""
    conn.execute(
        f"""
        CREATE ROLE events_owner LOGIN PASSWORD 'owner-pw-2';
        GRANT CREATE ON SCHEMA public TO events_owner;
        GRANT CREATE ON DATABASE {conn.info.dbname} TO events_owner;
        SET ROLE events_owner;
        CREATE TABLE events (id bigint NOT NULL, ts timestamptz NOT NULL, pad text) PARTITION BY RANGE (ts);
        CREATE TABLE events_default PARTITION OF events DEFAULT WITH ({CRAWL});
        INSERT INTO events SELECT g, now(), repeat('x', 100) FROM generate_series(1, 20000) g;
        DELETE FROM events;
        RESET ROLE;
        """
    )
    first = wait_for_worker(conn, "public.events_default")
    owner = psycopg.conninfo.make_conninfo(dsn, user="events_owner", password="owner-pw-2")
    monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "2")
    monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT_MS", "200")
    reg = partman("register", "events", "--column", "ts", "--interval", "month", "--premake", "2", "--dsn", owner)
    assert reg.code == 0, reg.err
    r = partman("maintain", "--json", "--dsn", owner)
    assert r.code == 0, r.err
    assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass").fetchone()[0] >= 4
    logs = reg.err + r.err
    assert '"waiting_out_autovacuum"' in logs and f"(pid {first})" in logs
    assert "autovacuum_cancelled" not in logs


def test_a_manual_vacuum_is_left_alone_and_named_when_partman_gives_up(conn, dsn, partman, monkeypatch):
    """Someone's VACUUM is theirs: partman neither cancels it nor waits it out; it gives up
    cleanly, changing nothing, and says who holds the table."""
    mutable_events(conn)
    running = threading.Event()
    outcome: list[str] = []

    def vacuum() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET vacuum_cost_delay = 100")
            c.execute("SET vacuum_cost_limit = 1")
            running.set()
            try:
                c.execute("VACUUM public.events")
                outcome.append("finished")
            except psycopg.errors.QueryCanceled:
                outcome.append("cancelled")

    t = threading.Thread(target=vacuum)
    t.start()
    try:
        running.wait(10)
        deadline = time.monotonic() + 10
        while not conn.execute("SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = 'public.events'::regclass").fetchone()[0]:
            assert time.monotonic() < deadline, "the VACUUM never started"
            time.sleep(0.05)
        pid = conn.execute("SELECT pid FROM pg_stat_progress_vacuum WHERE relid = 'public.events'::regclass").fetchone()[0]
        monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "2")
        r = partman("convert", "public.events", "--column", "ts", "--interval", "year", "--lock-timeout", "200")
        assert r.code != 0
        assert f"a manual VACUUM/ANALYZE of public.events (pid {pid})" in r.err, r.err[-1500:]
        assert "Traceback" not in r.err
        assert not is_partitioned(conn, EVENTS)
        assert not outcome, "partman interrupted the VACUUM"
        assert conn.execute("SELECT count(*) FROM pg_stat_progress_vacuum WHERE pid = %s", (pid,)).fetchone()[0] == 1
    finally:
        conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_progress_vacuum WHERE relid = 'public.events'::regclass")
        t.join()
