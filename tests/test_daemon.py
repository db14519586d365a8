"""`partman run` as a real subprocess against the real PostgreSQL: endpoints, schedule,
leadership among several instances, kills, connection cuts, a database outage, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
import pytest

from conftest import PLANTED_PASSWORD
from helpers import partman_command, standby_server

LEADER_KEY = "partman:leader:partman_catalog"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    name: str
    port: int
    proc: subprocess.Popen
    logfile: Any

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/health")
        return code, json.loads(body)

    def leader(self) -> bool | None:
        try:
            return bool(self.health()[1]["leader"])
        except (OSError, ValueError, KeyError):
            return None

    def log(self) -> str:
        self.logfile.flush()
        with open(self.logfile.name) as f:
            return f.read()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def daemons(env: dict[str, str], pg_server) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(name: str = "a", interval: str = "2s", extra: dict[str, str] | None = None) -> Daemon:
        port = free_port()
        e = dict(env)
        e.update({
            "PARTMAN_HEALTH_HOST": "127.0.0.1",
            "PARTMAN_HEALTH_PORT": str(port),
            "PARTMAN_MAINTENANCE_INTERVAL": interval,
            "PARTMAN_INSTANCE_NAME": f"test-{name}",
            "PARTMAN_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        })
        e.update(extra or {})
        logfile = tempfile.NamedTemporaryFile("w+", prefix=f"partman-daemon-{name}-", suffix=".log", delete=False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "partman.cli", "run"], env=e, stdout=logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        d = Daemon(name, port, proc, logfile)
        started.append(d)
        wait_for(lambda: _alive(d), 20, f"{name}'s /livez")
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)
        pg_server.outputs.append(d.log())
        d.logfile.close()
        os.unlink(d.logfile.name)


def _alive(d: Daemon) -> bool:
    if d.proc.poll() is not None:
        raise AssertionError(f"daemon {d.name} exited {d.proc.returncode}:\n{d.log()}")
    try:
        return d.get("/livez", timeout=2)[0] == 200
    except OSError:
        return False


def make_events(conn: psycopg.Connection, future: int) -> None:
    """public.events partitioned by month: the current month and `future` months after it, plus a default."""
    conn.execute("CREATE TABLE public.events (id bigserial, ts timestamptz NOT NULL, note text) PARTITION BY RANGE (ts)")
    conn.execute("SET TimeZone = 'UTC'")
    for i in range(future + 1):
        conn.execute(
            f"""DO $$ DECLARE lo timestamptz := date_trunc('month', now()) + interval '{i} month';
                BEGIN EXECUTE format('CREATE TABLE public.%I PARTITION OF public.events FOR VALUES FROM (%L) TO (%L)',
                    'events_p' || to_char(lo, 'YYYYMMDD'), lo, lo + interval '1 month'); END $$"""
        )
    conn.execute("CREATE TABLE public.events_default PARTITION OF public.events DEFAULT")
    conn.execute("INSERT INTO public.events (ts, note) SELECT now(), 'x' FROM generate_series(1, 10)")


def register_events(partman, premake: int = 3) -> None:
    r = partman("register", "public.events", "--column", "ts", "--interval", "month", "--premake", str(premake))
    assert r.code == 0, r.err


def runs(dsn: str, ok: bool | None = None) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        q = "SELECT id, instance, ok, started_at FROM partman_catalog.maintenance_run WHERE finished_at IS NOT NULL"
        if ok is not None:
            q += f" AND ok = {str(ok).lower()}"
        return c.execute(q + " ORDER BY id").fetchall()


def leader_pids(dsn: str) -> list[int]:
    """Backends of this database holding a partman leader lock."""
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute(
            """SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
                 AND a.application_name = 'partman leader lock'"""
        )]


def assert_no_secret(*texts: str) -> None:
    for t in texts:
        assert PLANTED_PASSWORD not in t


# ---------------------------------------------------------------- tests

def test_endpoints_schedule_and_sigterm(conn, dsn, partman, daemons, pg_server):
    make_events(conn, future=1)  # premake 3 wants 3 ahead: the first pass creates them
    register_events(partman)
    # a converted table's <table>_old, verified a day ago, to be dropped 1 hour after verification
    conn.execute("CREATE TABLE public.events_old (id bigint)")
    conn.execute("UPDATE partman_catalog.managed_table SET old_table_name = 'events_old', "
                 "verified_at = now() - interval '1 day', drop_old_after = '1 hour'")
    d = daemons("a", interval="2s")
    # the fresh leader runs a pass at once (none recorded yet), then one every 2 s
    wait_for(lambda: d.leader(), 10, "leadership")
    wait_for(lambda: len(runs(dsn, ok=True)) >= 2, 15, "two scheduled passes")
    assert conn.execute("SELECT to_regclass('public.events_old')").fetchone()[0] is None
    assert conn.execute("SELECT old_table_name FROM partman_catalog.managed_table").fetchone()[0] is None
    code, body = d.health()
    assert code == 200, body
    assert body["status"] == "ok" and body["leader"] is True and body["database"] == "up"
    (t,) = body["tables"]
    assert t["table"] == "public.events" and t["partitions_ahead"] >= 3 and t["required_ahead"] == 2
    assert t["overdue"] is False
    code, livez = d.get("/livez")
    assert code == 200 and json.loads(livez)["status"] == "alive"
    code, metrics = d.get("/metrics")
    assert code == 200
    for name in ("partman_up 1.0", "partman_leader 1.0", 'partman_partitions_ahead{table="public.events"}',
                 'partman_default_rows{table="public.events"}', "partman_maintenance_runs_total",
                 "partman_maintenance_duration_seconds_bucket", "partman_maintenance_last_success_timestamp_seconds",
                 'partman_covered_until_timestamp_seconds{table="public.events"}', "partman_retention_due_partitions",
                 "partman_archive_bytes_total", "partman_healthy 1.0"):
        assert name in metrics, name
    code, missing = d.get("/nope")
    assert code == 404 and json.loads(missing)["status"] == "not found"
    pg_server.outputs.extend([json.dumps(body), livez, metrics])
    assert_no_secret(json.dumps(body), livez, metrics, d.log())
    # logs: one JSON event per line, with durations
    finished = [e for e in d.events() if e.get("event") == "maintenance_finished"]
    assert finished and "duration_s" in finished[0] and finished[0]["phase"] == "maintain"
    # clean stop: exit 0 within 10 s, the leader lock released
    code, took = d.stop(signal.SIGTERM)
    assert code == 0 and took < 10, d.log()
    assert leader_pids(dsn) == []
    assert any(e.get("event") == "daemon_stopped" and e.get("released_leader_lock") for e in d.events())


def test_coverage_low_is_503_on_a_standby_then_leader_fixes_it(conn, dsn, partman, daemons):
    make_events(conn, future=0)  # only the current month
    register_events(partman, premake=3)
    # the test holds the leader lock: the daemon is a standby and must not act
    blocker = psycopg.connect(dsn, autocommit=True)
    assert blocker.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (LEADER_KEY,)).fetchone()[0]
    d = daemons("s", interval="2s")
    time.sleep(1.5)
    code, body = d.health()
    assert code == 503, body
    assert body["status"] != "ok" and body["leader"] is False
    assert any("future partition" in r for r in body["reasons"]), body["reasons"]
    assert body["tables"][0]["partitions_ahead"] == 0
    assert runs(dsn) == []  # a standby never acts
    # a failed pass and an overdue table, as recorded in the catalog, are reported by a standby too
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO partman_catalog.maintenance_run (instance, finished_at, ok, error) "
                  "VALUES ('elsewhere', now(), false, 'boom: lock timeout')")
        c.execute("UPDATE partman_catalog.managed_table SET maintenance_last_run = now() - interval '1 hour'")
    code, body = d.health()
    assert code == 503
    assert any("last maintenance pass failed: boom" in r for r in body["reasons"]), body["reasons"]
    assert any("overdue" in r for r in body["reasons"]) and body["tables"][0]["overdue"] is True
    # release: the daemon takes over within one check interval and its first pass fixes coverage
    blocker.close()
    wait_for(lambda: d.leader(), 5, "takeover after the lock is released")
    wait_for(lambda: d.health()[0] == 200, 15, "/health 200 after the pass")
    assert runs(dsn, ok=True)[0][1] == "test-s"
    code, took = d.stop(signal.SIGINT)
    assert code == 0 and took < 10


def test_a_failed_pass_run_by_hand_is_retried_soon_not_an_hour_later(conn, dsn, partman, daemons):
    """A DBA's `partman maintain` fails (a registered table renamed away) and records it: /health
    says 503. Once the cause is fixed, the leader tries the pass again within about interval / 12
    (here 60 s / 12 = 5 s, plus one check interval), not at its next scheduled time, and /health
    is 200 again."""
    make_events(conn, future=3)
    register_events(partman)
    d = daemons("r", interval="60s")
    wait_for(lambda: d.leader(), 10, "leadership")
    wait_for(lambda: len(runs(dsn, ok=True)) >= 1, 15, "the first pass")
    conn.execute("ALTER TABLE public.events RENAME TO events_away")
    assert partman("maintain").code == 1
    conn.execute("ALTER TABLE public.events_away RENAME TO events")
    assert d.health()[0] == 503
    wait_for(lambda: d.health()[0] == 200, 25, "/health 200 after the retried pass")
    assert any(e.get("event") == "maintenance_retry_scheduled" for e in d.events()), d.log()
    assert any(e.get("event") == "maintenance_started" and "retrying" in e.get("reason", "") for e in d.events())
    assert len(runs(dsn, ok=True)) == 2  # the first pass and the retry: the scheduled one is a minute off
    code, took = d.stop(signal.SIGTERM)
    assert code == 0 and took < 10


def test_fresh_standby_with_covered_tables_answers_200_before_any_pass(conn, dsn, partman, daemons):
    make_events(conn, future=3)
    register_events(partman)
    blocker = psycopg.connect(dsn, autocommit=True)
    try:
        assert blocker.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (LEADER_KEY,)).fetchone()[0]
        d = daemons("fresh", interval="1h")
        code, body = d.health()
        assert code == 200, body
        assert body["status"] == "ok" and body["leader"] is False and body["tables"][0]["partitions_ahead"] == 3
        assert runs(dsn) == []
        code, metrics = d.get("/metrics")
        assert "partman_leader 0.0" in metrics and "partman_up 1.0" in metrics
        assert d.stop()[0] == 0
    finally:
        blocker.close()


def test_one_leader_step_down_on_terminate_and_takeover_on_sigkill(conn, dsn, partman, daemons):
    make_events(conn, future=3)
    register_events(partman)
    a = daemons("a", interval="2s")
    b = daemons("b", interval="2s")
    wait_for(lambda: [a.leader(), b.leader()].count(True) == 1, 10, "exactly one leader")
    time.sleep(1.0)
    assert [a.leader(), b.leader()].count(True) == 1
    leader, standby = (a, b) if a.leader() else (b, a)
    # both report the same health, judged from the catalog
    assert leader.health()[1]["tables"] == standby.health()[1]["tables"]
    # cut the leader's lock connection: it steps down at once, the standby takes over
    pids = leader_pids(dsn)
    assert len(pids) == 1
    with psycopg.connect(dsn) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
    wait_for(lambda: leader.leader() is False, 3, "the old leader steps down")
    assert any(e.get("event") == "leader_lost" for e in leader.events()), leader.log()
    wait_for(lambda: standby.leader() is True, 5, "the standby takes over")
    time.sleep(2.0)
    assert [a.leader(), b.leader()].count(True) == 1
    leader, standby = (a, b) if a.leader() else (b, a)
    # SIGKILL the leader: the standby takes over within one check interval (0.5 s here) + slack
    leader.proc.kill()
    leader.proc.wait(timeout=5)
    t0 = time.monotonic()
    wait_for(lambda: standby.leader() is True, 5, "takeover after SIGKILL")
    assert time.monotonic() - t0 < 3
    # the new leader acts: a pass recorded under its name
    n = len(runs(dsn))
    wait_for(lambda: any(r[1] == f"test-{standby.name}" for r in runs(dsn)[n - 1:]), 10, "a pass by the new leader")
    assert standby.stop()[0] == 0


def test_database_outage_503_then_back_and_pass_at_once(conn, dsn, partman, daemons, pg_server):
    if not pg_server.can_restart:
        pytest.skip("the test server cannot be stopped and started (PARTMAN_TEST_DSN / container)")
    make_events(conn, future=3)
    register_events(partman)
    conn.close()
    d = daemons("o", interval="3s")
    wait_for(lambda: d.health()[0] == 200 and d.leader(), 10, "healthy leader")
    wait_for(lambda: runs(dsn, ok=True), 10, "a first pass")
    pg_server.stop("fast")
    try:
        code, body = wait_for(lambda: (lambda h: h if h[0] == 503 and not h[1]["leader"] else None)(d.health()),
                              10, "503 and stepped down during the outage")
        assert body["database"] == "down" and body["status"] != "ok"
        assert any("database unreachable" in r for r in body["reasons"])
        assert_no_secret(json.dumps(body))
        assert d.get("/livez")[0] == 200  # alive: the orchestrator must not restart it
        code, metrics = d.get("/metrics")
        assert code == 200 and "partman_up 0.0" in metrics
        assert "partman_healthy 0.0" in metrics  # the README's PartmanUnhealthy alert fires in an outage too
        time.sleep(4)  # a scheduled pass falls due while the database is away
        assert d.proc.poll() is None
    finally:
        pg_server.start()
    t_back = time.monotonic()
    wait_for(lambda: d.health()[0] == 200, 20, "/health 200 after the outage")
    wait_for(lambda: d.leader(), 15, "leadership after the outage")
    # the missed pass runs at once on getting the lock back, not a full interval later
    ev = wait_for(lambda: [e for e in d.events() if e.get("event") == "leader_acquired"][1:], 15, "re-acquired")
    assert ev[-1].get("run_now"), ev
    wait_for(lambda: [e for e in d.events() if e.get("event") == "maintenance_finished"
                      and e.get("timestamp", "") > ev[-1]["timestamp"]], 10, "a pass after the outage")
    assert time.monotonic() - t_back < 30
    assert any(e.get("event") == "database_unreachable" for e in d.events())
    assert_no_secret(d.log())
    assert d.stop()[0] == 0


def test_overrunning_pass_is_not_stacked_and_sigterm_mid_pass(conn, dsn, partman, daemons):
    make_events(conn, future=3)
    register_events(partman)
    d = daemons("slow", interval="1s", extra={"PARTMAN_FAILPOINTS": "daemon.pass=1:sleep(4)"})
    wait_for(lambda: any(e.get("event") == "maintenance_skipped" for e in d.events()), 10, "a skipped pass")
    assert sum(1 for e in d.events() if e.get("event") == "maintenance_started") == 1
    code, took = d.stop(signal.SIGTERM)
    assert code == 0 and took < 10, d.log()


def _python_is_up(pid: int, timeout: float = 10) -> None:
    """Wait until the interpreter of `pid` has installed its own SIGINT handler (early in its start,
    before it runs the script): before that no program of Python's can answer a signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return  # no /proc (or gone): go on, the assertions tell
        if status.get("State", "").split()[:1] == ["Z"]:
            return  # it has ended already: the assertions tell
        caught = int(status.get("SigCgt", "0").strip(), 16)
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.001)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_it_starts_stops_the_daemon_cleanly(env, pg_server, sig):
    """The console script imports for a while before the daemon runs: a signal then (as a container
    stopped at once sends) still means a clean stop with exit 0, and no traceback."""
    e = {**env, "PARTMAN_HEALTH_HOST": "127.0.0.1", "PARTMAN_HEALTH_PORT": "0", "PARTMAN_INSTANCE_NAME": "early"}
    for delay in (0.05, 0.1, 0.2, 0.35, 0.5):
        proc = subprocess.Popen([partman_command(), "run"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        _python_is_up(proc.pid)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
        pg_server.outputs.extend([out, err])
        assert proc.returncode == 0 and "Traceback" not in err, (delay, proc.returncode, err)
        assert any(json.loads(line).get("event") == "daemon_stopped" for line in err.splitlines()), (delay, err)


@pytest.mark.parametrize("sig, code, message", [(signal.SIGTERM, -signal.SIGTERM, ""),
                                                 (signal.SIGINT, 130, "partman: Interrupted.")])
def test_a_signal_while_another_command_starts_ends_it_as_later_without_a_traceback(sig, code, message):
    """Other commands act on such a signal once started, as on one a moment later: SIGTERM's default
    action (the process ends by the signal), SIGINT's "Interrupted." with exit 130."""
    # a server that never answers: should this test be held up past the imports (a loaded machine),
    # the signal still comes while the command runs (waiting to connect), not after it has ended
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} connect_timeout=20"
        proc = subprocess.Popen([partman_command(), "status", "--dsn", dsn],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        _python_is_up(proc.pid)
        time.sleep(0.05)  # the command line is still importing
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == code and "Traceback" not in err and out == "", (proc.returncode, err)
    assert err.strip().startswith(message) and len(err.strip().splitlines()) <= 1, err


def test_coverage_has_one_interval_of_slack_at_period_boundaries(conn, partman):
    """premake 3 keeps 3 future months; crossing one month boundary leaves 2 (still healthy, no flap
    before the next pass), crossing two leaves 1 (unhealthy)."""
    from datetime import timedelta

    from partman import catalog, health
    from partman.settings import Settings

    make_events(conn, future=3)
    register_events(partman, premake=3)
    settings = Settings()
    (mt,) = catalog.list_managed(conn, settings)
    now = conn.execute("SELECT now()").fetchone()[0]
    cov = health.coverage(conn, mt, now)
    assert cov.ahead == 3 and cov.current_covered
    start = conn.execute("SELECT date_trunc('month', now(), 'UTC')").fetchone()[0]
    next_month = conn.execute("SELECT date_trunc('month', now(), 'UTC') + interval '1 month'").fetchone()[0]
    two_months = conn.execute("SELECT date_trunc('month', now(), 'UTC') + interval '2 month'").fetchone()[0]
    assert health.coverage(conn, mt, start).ahead == 3
    assert health.coverage(conn, mt, next_month - timedelta(microseconds=1)).ahead == 3
    after_one = health.coverage(conn, mt, next_month + timedelta(seconds=1))
    assert after_one.ahead == 2 and after_one.ahead >= health.required_ahead(mt.premake)
    assert health.coverage(conn, mt, two_months + timedelta(seconds=1)).ahead == 1 < health.required_ahead(mt.premake)
    # a gap ends the coverage: detach the second future month
    conn.execute(f"ALTER TABLE public.events DETACH PARTITION public.events_p{two_months:%Y%m%d}")
    cov = health.coverage(conn, mt, now)
    assert cov.ahead == 1 and cov.covered_until == two_months


@pytest.mark.parametrize("point", ["daemon.leader.acquired=1:kill", "daemon.pass=1:kill"],
                         ids=["leader.acquired", "pass"])
def test_leader_killed_at_hand_over_or_mid_pass_the_other_takes_over(conn, dsn, partman, daemons, point):
    from helpers import matrix_entry

    with matrix_entry("daemon", point.split("=")[0]) as entry:
        make_events(conn, future=0)  # coverage short: a pass has work to do
        register_events(partman)
        try:  # it may die before or after its /livez first answers
            a = daemons("a", interval="30s", extra={"PARTMAN_FAILPOINTS": point})
            wait_for(lambda: a.proc.poll() is not None, 15, "the armed daemon dies at the failpoint")
            assert a.proc.returncode == -9
        except AssertionError as exc:
            assert "exited -9" in str(exc), exc
        b = daemons("b", interval="30s")
        wait_for(lambda: b.leader() is True, 10, "the other instance leads")
        wait_for(lambda: b.health()[0] == 200, 20, "its first pass restores coverage")
        # /health turns 200 as soon as the partitions exist; the pass records itself a moment later
        wait_for(lambda: [r for r in runs(dsn, ok=True) if r[1] == "test-b"], 10, "its pass is recorded as a success")
        assert b.stop()[0] == 0
        entry.outcome = "ok: the other instance took over, ran the pass, /health 200"


def test_an_instance_on_a_hot_standby_server_never_leads(pg_server, daemons):
    """Advisory locks are a server's own: on a standby the leader lock is free, yet a pass there
    could change nothing."""
    with standby_server(pg_server) as standby:
        d = daemons("on-standby", interval="1s", extra={"PARTMAN_DATABASE_URL": standby.dsn()})
        wait_for(lambda: any(e.get("event") == "standby_server" for e in d.events()), 20, "the standby_server event")
        time.sleep(2)  # several lock checks (every 0.5 s at this interval)
        code, body = d.health()
        assert body["leader"] is False, body
        assert not any(e.get("event") == "leader_acquired" for e in d.events())
        assert d.stop()[0] == 0


def test_an_instance_that_cannot_act_hands_the_lead_to_one_that_can(conn, dsn, partman, daemons):
    """A rolling deploy with a broken role: the instance connecting as a role without rights on
    partman's catalog wins the leader lock first, and each of its passes fails. Once another
    instance is waiting, it hands the lock over after a failed pass; the working one leads, runs a
    pass at once and keeps the lead (the broken one tries again only after its retry delay, and
    finds the lock taken)."""
    make_events(conn, future=3)
    register_events(partman)
    role = "no_rights_" + os.urandom(4).hex()
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'no-rights-pw-1'").format(sql.Identifier(role)))
    try:
        weak_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password="no-rights-pw-1")
        weak = daemons("weak", interval="60s", extra={"PARTMAN_DATABASE_URL": weak_dsn})
        wait_for(lambda: weak.leader() is True, 10, "the broken instance leads (alone)")
        # at once, not at the schedule's first pass a minute later: it cannot read the catalog
        wait_for(lambda: any(e.get("event") == "maintenance_failed" for e in weak.events()), 10, "its pass fails")
        good = daemons("good", interval="60s")
        wait_for(lambda: good.leader() is True, 30, "the working instance takes the lead")
        wait_for(lambda: [r for r in runs(dsn, ok=True) if r[1] == "test-good"], 15, "a pass by the working instance")
        assert any(e.get("event") == "leader_handed_over" for e in weak.events()), weak.log()
        assert good.health()[0] == 200
        time.sleep(12)  # past the broken instance's retry delay (10 s): it tries the lock again and does not get it
        assert weak.leader() is False and good.leader() is True
        assert good.stop()[0] == 0 and weak.stop()[0] == 0
    finally:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_checks_during_a_hung_database_do_not_queue_behind_each_other(daemons):
    """The database's address accepts TCP and never answers (a hung server, a black-holing proxy):
    each /health must not wait out a connect timeout behind the others' (six requests took 3, 6,
    ... 18 s, a scrape 21 s: past any load balancer's timeout). All answer 503 with the reason
    within about one connect timeout, and /metrics says the catalog was not read (0, not absent)."""
    import concurrent.futures

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
    try:
        port = hung.getsockname()[1]
        d = daemons("hung", interval="1h", extra={
            "PARTMAN_DATABASE_URL": f"postgresql://partman@127.0.0.1:{port}/app?connect_timeout=3"})

        def timed(path: str) -> tuple[int, str, float]:
            t0 = time.monotonic()
            code, body = d.get(path, timeout=30)
            return code, body, time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(timed, ["/health"] * 6 + ["/metrics"]))
        for code, body, _ in answers[:6]:
            assert code == 503 and json.loads(body)["status"] != "ok", body
        assert "partman_catalog_scrape_ok 0.0" in answers[6][1] and "partman_up 0.0" in answers[6][1]
        slowest = max(a[2] for a in answers)
        assert slowest < 8, [round(a[2], 1) for a in answers]  # one connect timeout (3 s), not seven in a row
        assert d.stop()[0] == 0
    finally:
        hung.close()


def test_a_failed_pass_is_logged_as_tables_and_messages_not_a_dict():
    from partman.daemon import _judge_result

    errors = {"public.events": "the lock was not granted", "public.ledger": "permission denied"}
    assert _judge_result({"ok": False, "errors": errors}) == (
        False, "public.events: the lock was not granted; public.ledger: permission denied")
    assert _judge_result({"ok": True, "errors": {}}) == (True, None)
