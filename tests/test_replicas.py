"""Replicas during a conversion, on a real streaming standby (`pg_basebackup -R` of a throwaway
primary of the suite's version): the plan says which replicas stream and how far behind they
are, warns when the converting role cannot read their lag or when one already lags past the
limit, and the throttle slows the copy down while a replica falls behind (its replay paused),
after which the standby replays the whole conversion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from helpers import log_events, make_ledger

pytestmark = pytest.mark.conversion


@dataclass
class Pair:
    primary: object  # pgtemp.TempServer
    standby: object

    def db(self) -> str:
        """A fresh database on the primary (created on the standby too, by replication)."""
        name = "r_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.primary.dsn(), autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name


@pytest.fixture(scope="module")
def pair(pg_server) -> Iterator[Pair]:
    from partman.pgtemp import TempServer

    if pg_server.temp is None:
        pytest.skip("needs the throwaway server binaries")
    major = str(pg_server.version // 10000)
    primary = TempServer(version=major, password="primary-pw-31337")
    standby = TempServer(version=major)
    try:
        primary.init().start()
        standby.init_standby_of(primary).start()
        with psycopg.connect(primary.dsn(), autocommit=True) as c:
            _wait(lambda: c.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0] == 1,
                  "the standby streaming")
        yield Pair(primary, standby)
    finally:
        standby.cleanup()
        primary.cleanup()


def _wait(ok, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _partman(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PARTMAN_")}
    e.update(PARTMAN_DATABASE_URL=dsn, PARTMAN_LOG_FORMAT="json", **env)
    return subprocess.run([sys.executable, "-m", "partman.cli", *args], env=e, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _make_lag(pair: Pair, dbname: str, seconds: float) -> None:
    """Pause the standby's replay and keep writing on the primary for `seconds`: its replay lag
    grows by as much."""
    with psycopg.connect(pair.standby.dsn(), autocommit=True) as s:
        s.execute("SELECT pg_wal_replay_pause()")
    with psycopg.connect(pair.primary.dsn(dbname), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz DEFAULT clock_timestamp())")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            c.execute("INSERT INTO ticks DEFAULT VALUES")
            time.sleep(0.05)


def _caught_up(pair: Pair) -> None:
    with psycopg.connect(pair.standby.dsn(), autocommit=True) as s:
        s.execute("SELECT pg_wal_replay_resume()")
        with psycopg.connect(pair.primary.dsn(), autocommit=True) as c:
            # where the primary inserts, not where it has written: with synchronous_commit off (the
            # test servers) the last commits may not be written yet when partman has exited
            target = c.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
            _wait(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0],
                  "the standby to replay everything")


def test_what_the_plan_says_about_replicas():
    from partman.convert.replicas import Replicas, summary, warnings

    assert summary(Replicas(0, 0, ()), throttled=True, max_lag=10) is None
    assert warnings(Replicas(0, 0, ()), throttled=True, max_lag=10, role="dba") == []
    two = Replicas(2, 0, (0.25, 3.0))
    assert summary(two, throttled=True, max_lag=10).startswith("2 replicas streaming from this server (replay lag now 3.0 s, 0.2 s)")
    assert warnings(two, throttled=True, max_lag=10, role="dba") == []
    late = warnings(two, throttled=True, max_lag=2.5, role="dba")
    assert len(late) == 1 and late[0].startswith("a replica already lags 3.0 s behind, over PARTMAN_THROTTLE_MAX_REPLICA_LAG (2.5 s)")
    hidden = warnings(Replicas(2, 2, ()), throttled=True, max_lag=10, role="Audit DBA")
    assert hidden[0].startswith("2 replicas stream from this server, but role Audit DBA cannot read their lag")
    assert 'GRANT pg_monitor TO "Audit DBA"' in hidden[0]
    assert warnings(Replicas(2, 2, ()), throttled=False, max_lag=10, role="dba") == []  # nothing watches at --sleep 0
    assert "(none lagging now)" in summary(Replicas(1, 0, ()), throttled=True, max_lag=10)


def test_the_plan_names_the_replicas_and_warns_when_the_role_cannot_read_their_lag(pair):
    dbname = pair.db()
    role, pw = "ledger_dba", "dba-pw-4711"
    with psycopg.connect(pair.primary.dsn(dbname), autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)))
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    as_dba = pair.primary.dsn(dbname, user=role, password=pw)
    with psycopg.connect(as_dba, autocommit=True) as c:  # the role owns the table: it may convert it
        c.execute("CREATE TABLE visits (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, "
                  "note text, PRIMARY KEY (id))")
        c.execute("INSERT INTO visits (at, note) SELECT timestamptz '2020-01-01' + g * interval '1 day', 'n' "
                  "FROM generate_series(1, 2000) g")

    r = _partman(as_dba, "convert", "visits", "--column", "at", "--dry-run")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "-- replicas: 1 replica streaming from this server (lag not readable)" in text
    assert (f"WARNING: 1 replica streams from this server, but role {role} cannot read their lag" in text
            and f"GRANT pg_monitor TO {role}" in text)
    assert "password" not in r.stdout + r.stderr and pw not in r.stdout + r.stderr

    # at full speed nothing watches the lag: said, and nothing to grant for
    r = _partman(as_dba, "convert", "visits", "--column", "at", "--dry-run", "--sleep", "0")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "the copy does not watch their lag at this pace" in text
    assert "cannot read their lag" not in text

    with psycopg.connect(pair.primary.dsn(dbname), autocommit=True) as c:
        c.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
    r = _partman(as_dba, "convert", "visits", "--column", "at", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["replicas"]["connected"] == 1 and doc["replicas"]["lag_hidden"] == 0
    assert not [w for w in doc["warnings"] if "replica" in w]
    r = _partman(as_dba, "convert", "visits", "--column", "at", "--dry-run")
    assert "the throttle slows the copy while one lags more than 10 s" in " ".join(r.stdout.split())


def test_a_replica_falling_behind_slows_the_copy_and_then_replays_the_whole_conversion(pair):
    dbname = pair.db()
    dsn = pair.primary.dsn(dbname)
    with psycopg.connect(dsn, autocommit=True) as c:
        make_ledger(c, 1200)
    try:
        _make_lag(pair, dbname, 1.5)
        # already over the limit: the plan says the throttle would crawl, and why a delayed
        # standby does that
        r = _partman(dsn, "convert", "audit_log_ledger", "--column", "event_timestamp", "--dry-run",
                     PARTMAN_THROTTLE_MAX_REPLICA_LAG="0.5")
        text = " ".join(r.stdout.split())
        assert r.returncode == 0, r.stderr
        assert "WARNING: a replica already lags" in text and "recovery_min_apply_delay" in text

        r = _partman(dsn, "convert", "audit_log_ledger", "--column", "event_timestamp", "--yes",
                     "--batch-size", "200", PARTMAN_THROTTLE_MAX_REPLICA_LAG="0.5")
        assert r.returncode == 0, r.stderr
        copy = [e for e in log_events(r.stderr, "throttle") if e.get("paces") == "copy"]
        assert copy, r.stderr
        assert copy[0]["replica_slowdowns"] > 0 and copy[0]["replica_lag_max_s"] > 0.5, copy[0]
        assert log_events(r.stderr, "plan_warning")  # the run logs the plan's warning too
        # the copy's progress lines say how far behind the replica is
        progress = [e for e in log_events(r.stderr, "progress") if e.get("phase") in ("copy", "verify")]
        assert {e["phase"] for e in progress} == {"copy", "verify"}, progress  # the verification's too
        assert all(e["replica_lag_s"] > 0.5 and "pause_s" in e for e in progress), progress
    finally:
        _caught_up(pair)
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("SELECT count(*) FROM audit_log_ledger").fetchone()[0]
    with psycopg.connect(pair.standby.dsn(dbname), autocommit=True) as s:
        assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert s.execute("SELECT relkind FROM pg_class WHERE oid = 'audit_log_ledger'::regclass").fetchone()[0] == "p"
        assert s.execute("SELECT count(*) FROM audit_log_ledger").fetchone()[0] == rows >= 1200
