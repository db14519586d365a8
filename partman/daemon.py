"""`partman run`: the daemon beside the application.

- One main loop (the main thread): heartbeat for /livez, leadership, the `schedule` scheduler.
- Leadership: a session advisory lock held on a dedicated connection (never taken on a hot standby
  server, where advisory locks are the standby's own). A standby instance tries to take it
  every check interval (at most 5 s), so it takes over within one check interval after the leader
  dies. The leader watches its lock connection (a readable socket while idle means the server
  sent something, e.g. the FATAL of pg_terminate_backend) and re-checks the lock before every
  destructive step of a pass (`leader_check`); losing it steps down at once and cancels the
  running pass's query.
- Maintenance passes run on a worker thread, one at a time: a scheduled pass that finds the
  previous one still running is skipped, never stacked.
- The database going away: the daemon keeps running and serving (/health says 503 with the
  reason), reconnects with exponential backoff and jitter, and when it is leader again and the
  last pass failed or was missed, runs a pass at once.
- A failed pass (the daemon's own, or one a `partman maintain` run by hand recorded) is tried
  again soon rather than at the next scheduled time, so /health does not stay 503 for an hour
  after the cause is fixed: after min(60 s, interval / 12), then twice as long each time, at most
  the interval.
- A leader whose own pass failed hands the lock over when another instance is waiting for it
  (a session named `partman leader lock` in the database), and tries the lock again only after
  that retry delay: an instance that cannot act (a role without rights, a wrong bucket or S3
  credentials) does not keep a working one from acting. The new leader runs a pass at once (the
  last one failed). When the cause is the database's, the instances take turns, each at most once
  per its own retry delay.
- Signal handlers only set a flag; the main loop notices within one tick, lets the pass finish or
  cancels it (its transaction rolls back), releases the lock and exits 0 within 10 s.
"""

from __future__ import annotations

import random
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import schedule
from psycopg import sql

from . import catalog, db, entry, failpoints, health, log
from .errors import PartmanError, sentences
from .http import HttpServer, json_body
from .metrics import CONTENT_TYPE, Metrics
from .settings import Settings

TICK = 0.2  # seconds between main-loop iterations
MAX_CHECK_INTERVAL = 5.0  # a standby tries the leader lock at least this often
LIVEZ_STALE = 30.0  # /livez fails when the main loop has not beaten for this long
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
STOP_BUDGET = 8.0  # seconds the shutdown may spend (the contract allows 10)
CONNECT_TIMEOUT = 3
PROBE_WAIT = 2 * CONNECT_TIMEOUT + 1.0  # a /health or /metrics request waits at most this long for its turn
PROBE_FAILURE_TTL = 2.0  # a failed connection attempt answers the checks waiting behind it for this long
STATEMENT_TIMEOUT_MS = 10_000
QUERY_FAILED = "query failed: "
LOCK_APPLICATION_NAME = "partman leader lock"  # the lock connection's name, how instances see each other
RETRY_FIRST_MAX = 60.0  # a failed pass is tried again after at most this long, then twice as long each time


def _err(exc: BaseException) -> str:
    return log.redact(sentences(str(exc)) or type(exc).__name__)


class Probe:
    """One shared, lazily (re)opened connection for /health and /metrics. Requests take turns on
    it; while the database does not answer, a connection attempt that failed in the last
    PROBE_FAILURE_TTL seconds answers the requests that waited for it, so concurrent checks (a load
    balancer's, a scrape) do not each wait out a connect timeout in turn."""

    def __init__(self, connect: Callable[[str], psycopg.Connection]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._failed: tuple[float, str] | None = None  # when the last connection attempt failed, and why

    def run(self, fn: Callable[[psycopg.Connection], Any]) -> tuple[Any, str | None]:
        if not self._lock.acquire(timeout=PROBE_WAIT):
            return None, f"the database did not answer within {PROBE_WAIT:g} s (an earlier check still waits for it)"
        try:
            return self._run(fn)
        finally:
            self._lock.release()

    def _run(self, fn: Callable[[psycopg.Connection], Any]) -> tuple[Any, str | None]:
        if self._conn is None and self._failed is not None and time.monotonic() - self._failed[0] < PROBE_FAILURE_TTL:
            return None, self._failed[1]
        for attempt in (1, 2):
            fresh = self._conn is None or self._conn.closed or self._conn.broken
            try:
                if fresh:
                    self._close()
                    self._conn = self._connect("partman health")
                    self._failed = None
                return fn(self._conn), None
            except (psycopg.OperationalError, psycopg.InterfaceError, PartmanError) as exc:
                self._close()
                if fresh or attempt == 2:  # a stale connection gets one retry on a fresh one
                    self._failed = (time.monotonic(), _err(exc))
                    return None, self._failed[1]
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._close()
                    return None, _err(exc)
                return None, QUERY_FAILED + _err(exc)  # the server answers; the catalog query failed
        return None, "unreachable"

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    def close(self) -> None:
        # never wait long: a request stuck on a dead server must not delay the exit
        if self._lock.acquire(timeout=1.0):
            try:
                self._close()
            finally:
                self._lock.release()


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = log.get("partman.daemon").bind(instance=settings.instance_name)
        self.key = db.advisory_key("leader", settings.catalog_schema)
        self.interval = max(settings.maintenance_interval.total_seconds(), 1.0)
        self.check_interval = min(MAX_CHECK_INTERVAL, max(0.5, self.interval / 4))
        self.stop_requested = False  # set by the signal handlers, nothing else happens there
        self.stop_signal: int | None = None
        self.heartbeat = time.monotonic()
        self.is_leader = False
        self.server_is_standby = False
        self.db_error: str | None = None
        self.last_pass_failed = False
        self.missed_pass = False
        self._failures = 0  # passes failed in a row (this instance's, or one recorded by another process)
        self._retry_at: float | None = None  # when to try a failed pass again
        self._answered_failure: Any = None  # the id of the last failed run of another process already retried
        self._hand_over = False  # set by a failed pass: offer the lock to a waiting instance
        self._run_now: str | None = None
        self._lock_conn: psycopg.Connection | None = None
        self._lock_mutex = threading.RLock()
        self._lock_ids: tuple[int, int] | None = None
        self._next_connect = 0.0
        self._next_check = 0.0
        self._backoff = BACKOFF_START
        self._pass_thread: threading.Thread | None = None
        self._pass_conn: psycopg.Connection | None = None
        self._pass_started: float | None = None
        self.probe = Probe(self._connect)
        self.metrics = Metrics(settings, self.probe.run, lambda: self.is_leader)
        self.scheduler = schedule.Scheduler()
        self.scheduler.every(self.interval).seconds.do(self._scheduled)
        self.http: HttpServer | None = None
        self._stopping_since: float | None = None
        log.add_dsn_secret(settings.dsn)

    # ------------------------------------------------------------ connections

    def _connect(self, application_name: str) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.settings.dsn,
                autocommit=True,
                application_name=application_name,
                connect_timeout=CONNECT_TIMEOUT,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=3,
                keepalives_count=3,
            )
        except psycopg.OperationalError as exc:
            raise PartmanError(f"could not connect to PostgreSQL: {_err(exc)}") from None
        try:
            conn.execute(sql.SQL("SET TimeZone TO {}").format(sql.Literal(self.settings.timezone)))
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            conn.execute("SET lock_timeout = 2000")
        except psycopg.Error:
            conn.close()
            raise
        return conn

    # ------------------------------------------------------------ leadership

    def _drop_lock_conn(self, retry_in: float) -> None:
        with self._lock_mutex:
            conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        self._next_connect = time.monotonic() + retry_in

    def _backoff_delay(self) -> float:
        delay = self._backoff + random.uniform(0, self._backoff / 2)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return delay

    def _leadership_tick(self) -> None:
        now = time.monotonic()
        if self._lock_conn is None:
            if now < self._next_connect:
                return
            try:
                conn = self._connect(LOCK_APPLICATION_NAME)
                key = conn.execute("SELECT hashtextextended(%s, 0)", (self.key,)).fetchone()[0]
            except (PartmanError, psycopg.Error) as exc:
                delay = self._backoff_delay()
                msg = _err(exc)
                if msg != self.db_error:
                    self.log.warning("database_unreachable", error=msg, retry_in=round(delay, 2))
                self.db_error = msg
                self._next_connect = now + delay
                return
            k = key & 0xFFFFFFFFFFFFFFFF
            self._lock_ids = (k >> 32, k & 0xFFFFFFFF)
            with self._lock_mutex:
                self._lock_conn = conn
            if self.db_error is not None:
                self.log.info("database_reachable")
            self.db_error = None
            self._backoff = BACKOFF_START
            self._next_check = now  # try the lock right away
        if self.is_leader:
            if self._hand_over and not self._pass_running():
                self._hand_over = False
                if self._others_waiting():
                    self._hand_over_lock()
                    return
            if self._socket_readable() or now >= self._next_check:
                self._next_check = now + self.check_interval
                if not self._holds_lock():
                    self._step_down("the leader lock connection was lost")
                else:
                    self._notice_failed_run()
            return
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            with self._lock_mutex:
                # on a hot standby server the lock would be the standby's own (advisory locks are not
                # replicated) and a pass could change nothing: an instance there never leads
                got = (self._lock_conn is not None and not self._on_standby_server(self._lock_conn)
                       and db.try_advisory_lock(self._lock_conn, self.key))
        except psycopg.Error as exc:
            self.db_error = _err(exc)
            self.log.warning("leader_lock_connection_lost", error=self.db_error)
            self._drop_lock_conn(self._backoff_delay())
            return
        if got:
            self._become_leader()

    def _on_standby_server(self, conn: psycopg.Connection) -> bool:
        standby = db.is_standby(conn)
        if standby != self.server_is_standby:
            self.server_is_standby = standby
            if standby:
                self.log.info("standby_server", note="the database is a hot standby: this instance will not lead")
        return standby

    def _socket_readable(self) -> bool:
        conn = self._lock_conn
        if conn is None or conn.closed:
            return True
        try:
            r, _, _ = select.select([conn.fileno()], [], [], 0)
            return bool(r)
        except (OSError, ValueError, psycopg.Error):
            return True

    def _holds_lock(self) -> bool:
        """Does this instance still hold the leader lock? Thread-safe; False on any error."""
        with self._lock_mutex:
            conn = self._lock_conn
            if conn is None or conn.closed or self._lock_ids is None:
                return False
            try:
                row = conn.execute(
                    """SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                           AND pid = pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND classid = %s AND objid = %s AND objsubid = 1)""",
                    (self._lock_ids[0], self._lock_ids[1]),
                ).fetchone()
                return bool(row and row[0])
            except psycopg.Error as exc:
                self.db_error = _err(exc)
                return False

    def _become_leader(self) -> None:
        failpoints.hit("daemon.leader.acquired")
        self.is_leader = True
        self._hand_over = False
        self.metrics.leader_changes.labels(to="leader").inc()
        reason = self._pass_needed_now()
        self.log.info("leader_acquired", check_interval_s=self.check_interval, run_now=reason)
        if reason:
            self._run_now = reason

    def _pass_needed_now(self) -> str | None:
        """Why a new leader should run a pass at once rather than at its next scheduled time."""
        if self.last_pass_failed:
            return "the last pass failed"
        if self.missed_pass:
            return "a scheduled pass was missed"
        try:
            with self._lock_mutex:
                conn = self._lock_conn
                if conn is None:
                    return None
                runs = catalog.last_runs(conn, self.settings)
                age = None
                if runs["last_ok"] is not None and runs["last_ok"]["finished_at"] is not None:
                    age = conn.execute("SELECT extract(epoch FROM now() - %s)", (runs["last_ok"]["finished_at"],)).fetchone()[0]
        except psycopg.Error as exc:
            # e.g. a role without rights on the catalog: a pass now fails at once and, with another
            # instance waiting, hands the lead over, rather than holding it until the schedule's pass
            return f"the catalog could not be read ({_err(exc)})"
        if runs["last"] is not None and runs["last"]["ok"] is False:
            return "the last pass failed"
        if age is None:
            return "no successful pass recorded"
        if float(age) >= self.interval:
            return "the last successful pass is older than the maintenance interval"
        return None

    def _retry_delay(self) -> float:
        first = min(RETRY_FIRST_MAX, self.interval / 12)
        return min(self.interval, first * 2 ** max(self._failures - 1, 0))

    def _notice_failed_run(self) -> None:
        """As leader, every check interval: a failed pass another process recorded (a `partman
        maintain` run by hand) is tried again soon, as the daemon's own failed passes are."""
        if self._retry_at is not None or self._pass_running():
            return
        try:
            with self._lock_mutex:
                conn = self._lock_conn
                if conn is None:
                    return
                last = catalog.last_runs(conn, self.settings)["last"]
        except psycopg.Error:
            return
        # (this instance's own failed pass has set its retry already: the check above returned)
        if last is None or last["ok"] is not False or last["id"] == self._answered_failure:
            return
        self._answered_failure = last["id"]
        self._failures = max(self._failures, 1)
        delay = self._retry_delay()
        self._retry_at = time.monotonic() + delay
        self.log.info("maintenance_retry_scheduled", reason=f"a pass by {last['instance']} failed", retry_in_s=round(delay, 1))

    def _step_down(self, why: str) -> None:
        with self._lock_mutex:
            if not self.is_leader:
                return
            self.is_leader = False
        self.metrics.leader_changes.labels(to="standby").inc()
        self.log.warning("leader_lost", reason=why)
        self._cancel_pass()
        # give a standby one check interval to take over before trying again ourselves
        self._drop_lock_conn(self.check_interval + self._backoff_delay())

    def _others_waiting(self) -> bool:
        """Is another instance of partman connected to this database to take the leader lock?"""
        try:
            with self._lock_mutex:
                conn = self._lock_conn
                if conn is None:
                    return False
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = %s AND pid <> pg_backend_pid()", (LOCK_APPLICATION_NAME,)).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def _hand_over_lock(self) -> None:
        """After this instance's pass failed: release the lock for a waiting instance, which may be
        able to act where this one is not, and try it again only after the retry delay."""
        delay = max(self._retry_delay(), 2 * self.check_interval)
        with self._lock_mutex:
            self.is_leader = False
            try:
                if self._lock_conn is not None:
                    db.advisory_unlock(self._lock_conn, self.key)
            except psycopg.Error:
                self._drop_lock_conn(delay)
        self._retry_at = None
        self._next_check = time.monotonic() + delay
        self.metrics.leader_changes.labels(to="standby").inc()
        self.log.warning("leader_handed_over", reason="the last pass failed on this instance and another instance "
                         "is waiting for the leader lock", retry_lock_in_s=round(delay, 1))

    def leader_check(self) -> bool:
        """Called by maintain before each destructive step: act only while we hold the lock."""
        if self.stop_requested or not self.is_leader:
            return False
        if self._holds_lock():
            return True
        with self._lock_mutex:
            was, self.is_leader = self.is_leader, False
        if was:
            self.metrics.leader_changes.labels(to="standby").inc()
            self.log.warning("leader_lost", reason="the leader lock was not held at a leader check")
            self._drop_lock_conn(self.check_interval + self._backoff_delay())
        return False

    # ------------------------------------------------------------ maintenance

    def _scheduled(self) -> None:
        if not self.is_leader:
            if self._lock_conn is None:
                self.missed_pass = True
            self.log.debug("maintenance_not_leader")
            return
        self._start_pass("scheduled")

    def _pass_running(self) -> bool:
        return self._pass_thread is not None and self._pass_thread.is_alive()

    def _start_pass(self, reason: str) -> None:
        if self._pass_running():
            self.metrics.skipped.inc()
            self.log.warning(
                "maintenance_skipped", reason="the previous pass is still running",
                running_s=round(time.monotonic() - (self._pass_started or time.monotonic()), 3),
            )
            return
        self._run_now = None
        self._retry_at = None
        self.missed_pass = False
        self._pass_started = time.monotonic()
        self._pass_thread = threading.Thread(target=self._pass, args=(reason,), name="partman-maintain", daemon=True)
        self._pass_thread.start()

    def _pass(self, reason: str) -> None:
        t0 = time.monotonic()
        self.log.info("maintenance_started", phase="maintain", reason=reason)
        ok = False
        error: str | None = None
        result: Any = None
        try:
            failpoints.hit("daemon.pass")
            from .lifecycle.maintain import maintain

            conn = db.connect(self.settings, application_name="partman maintain")
            self._pass_conn = conn
            try:
                result = maintain(self.settings, conn=conn, leader_check=self.leader_check)
            finally:
                self._pass_conn = None
                try:
                    conn.close()
                except Exception:
                    pass
            ok, error = _judge_result(result)
        except Exception as exc:  # noqa: BLE001 - a failed pass never stops the daemon
            error = _err(exc)
        duration = time.monotonic() - t0
        self.last_pass_failed = not ok
        self._failures = 0 if ok else self._failures + 1
        self.metrics.runs.labels(result="ok" if ok else "error").inc()
        self.metrics.duration.observe(duration)
        if ok:
            self.log.info("maintenance_finished", phase="maintain", duration_s=round(duration, 3), ok=True,
                          **_summary_counts(result))
        else:
            delay = self._retry_delay()
            self._retry_at = time.monotonic() + delay
            self._hand_over = True
            self.log.error("maintenance_failed", phase="maintain", duration_s=round(duration, 3), error=error,
                           retry_in_s=round(delay, 1))

    def _cancel_pass(self) -> None:
        conn = self._pass_conn
        if conn is None:
            return
        try:
            cancel = getattr(conn, "cancel_safe", None)
            if cancel is not None:
                cancel(timeout=2)
            else:
                conn.cancel()
            self.log.warning("maintenance_cancelled")
        except Exception as exc:  # noqa: BLE001
            self.log.debug("maintenance_cancel_failed", error=_err(exc))

    # ------------------------------------------------------------ endpoints

    def _health(self) -> tuple[int, str, bytes]:
        leader = self.is_leader
        body, error = self.probe.run(lambda c: health.judge(c, self.settings, leader=leader))
        if body is None:
            body = health.judge(None, self.settings, leader=leader, error=error)
            if error and error.startswith(QUERY_FAILED):  # reachable, but e.g. a privilege is missing
                body.update(status="unhealthy", database="up",
                            reasons=[f"health check failed: {error[len(QUERY_FAILED):]}"])
        return json_body(200 if body["status"] == "ok" else 503, body)

    def _livez(self) -> tuple[int, str, bytes]:
        age = time.monotonic() - self.heartbeat
        alive = age < LIVEZ_STALE and not (self._stopping_since and time.monotonic() - self._stopping_since > 30)
        return json_body(200 if alive else 503, {
            "status": "alive" if alive else "stale",
            "heartbeat_age_seconds": round(age, 3),
            "leader": self.is_leader,
            "instance": self.settings.instance_name,
        })

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.render()

    # ------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_requested = True
        self.stop_signal = signum

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        early = entry.pending()
        if early is not None:  # signalled while starting (see partman.entry): nothing runs yet, stop now
            for s, h in previous.items():
                signal.signal(s, h)
            self.log.info("daemon_stopped", signal=signal.Signals(early).name, note="signalled while starting")
            return 0
        try:
            self.http = HttpServer(self.settings.health_host, self.settings.health_port, {
                "/health": self._health,
                "/livez": self._livez,
                "/metrics": self._metrics,
            }).start()
        except OSError as exc:
            raise PartmanError(
                f"Could not serve HTTP on {self.settings.health_host}:{self.settings.health_port}: {exc}. "
                "Set PARTMAN_HEALTH_HOST / PARTMAN_HEALTH_PORT to a free address."
            ) from None
        self.log.info(
            "daemon_started", host=self.settings.health_host, port=self.http.port,
            maintenance_interval_s=self.interval, check_interval_s=self.check_interval,
        )
        try:
            while not self.stop_requested:
                self.heartbeat = time.monotonic()
                try:
                    self._leadership_tick()
                    if self.stop_requested:
                        break
                    self.scheduler.run_pending()
                    if self._run_now and self.is_leader and not self._pass_running():
                        self._start_pass(self._run_now)
                    elif (self._retry_at is not None and time.monotonic() >= self._retry_at and self.is_leader
                          and not self._pass_running()):
                        self._start_pass(f"retrying after {self._failures} failed pass(es)")
                except Exception as exc:  # noqa: BLE001 - the loop survives anything
                    self.log.error("main_loop_error", error=_err(exc))
                time.sleep(TICK)
        finally:
            self._shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
        return 0

    def _shutdown(self) -> None:
        self._stopping_since = t0 = time.monotonic()
        name = signal.Signals(self.stop_signal).name if self.stop_signal else None
        self.log.info("daemon_stopping", signal=name)
        thread = self._pass_thread
        if thread is not None and thread.is_alive():
            # leader_check now answers False: the pass stops before its next destructive step
            thread.join(timeout=STOP_BUDGET / 2)
            if thread.is_alive():
                self._cancel_pass()  # the running statement is cancelled, its transaction rolls back
                thread.join(timeout=max(0.5, STOP_BUDGET - (time.monotonic() - t0) - 1.5))
        was_leader = self.is_leader
        self.is_leader = False
        conn = None
        if self._lock_mutex.acquire(timeout=1.0):  # a leader check stuck on a dead server must not delay the exit
            try:
                conn, self._lock_conn = self._lock_conn, None
            finally:
                self._lock_mutex.release()
        if conn is not None:  # otherwise the exit closes the socket and the server releases the lock
            try:
                if was_leader:
                    db.advisory_unlock(conn, self.key)
            except psycopg.Error:
                pass
            try:
                conn.close()
            except Exception:
                pass
        if self.http is not None:
            self.http.stop()
        self.probe.close()
        self.log.info("daemon_stopped", duration_s=round(time.monotonic() - t0, 3), released_leader_lock=was_leader)


def _judge_result(result: Any) -> tuple[bool, str | None]:
    """(ok, error): the error as maintain records it, `<table>: <message>; ...` (never a dict's repr)."""
    if isinstance(result, dict):
        errors = result.get("errors")
        if isinstance(errors, dict):
            errors = "; ".join(f"{table}: {message}" for table, message in errors.items())
        if result.get("ok") is False or errors:
            return False, log.redact(str(result.get("error") or errors or "maintenance reported failure"))
    return True, None


def _summary_counts(result: Any) -> dict[str, Any]:
    """A few numbers from maintain's summary for the pass's log line (it logs each table itself)."""
    if not isinstance(result, dict):
        return {}
    tables = result.get("tables") or {}
    out: dict[str, Any] = {"tables": len(tables), "skipped": len(result.get("skipped") or {})}
    if isinstance(tables, dict):
        out["created"] = sum(len(t.get("created") or []) for t in tables.values() if isinstance(t, dict))
        out["removed"] = sum(
            len((t.get("retention") or {}).get("removed") or []) for t in tables.values() if isinstance(t, dict)
        )
    if result.get("standby"):
        out["standby_server"] = True
    return out


def cli_run(settings: Settings, args: Any) -> int:
    return Daemon(settings).run()
