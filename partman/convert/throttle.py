"""The adaptive throttle between copy batches (and between index builds): a probe that feels
what the application feels, and a pause that grows when it suffers and shrinks when it does not.

The probe is a background thread on its own connection that commits a one-row INSERT into a
small logged table in partman's work schema every PROBE_EVERY seconds: the same path as an
application's insert (a backend, a WAL record, a commit that waits for the WAL flush), so it
slows down exactly when the copy's WAL volume, CPU or I/O slow an application down. Before the
copy starts it records an idle baseline (its p99 over 80 probes, 0.8 s); should a later window's p99
come out well below it (REBASE_BELOW), the idle measurement met a busy moment (a checkpoint, a
burst of the application's, another job), and the baseline drops to that window's p99: an
inflated baseline would let the copy press harder for the whole run. Between batches `pause()`
looks at the last WINDOW probes: when more than 1% of them were slower than `throttle_ratio` x
the idle p99 (plus THROTTLE_SLACK_MS, so a 1 ms insert is not chased down to noise) and a probe
since the last decision was that slow too, or when a replica's `pg_stat_replication.replay_lag`
exceeds `throttle_max_replica_lag`, the pause grows (multiplicatively, up to MAX_PAUSE);
otherwise it decays back towards the configured `--sleep`. The lag is any WAL sender's (a
standby, a read replica, a logical subscriber: replicas.py), read once a second on the probe's
connection; a role that cannot read it is warned about by the plan.

Why the tail and not the median: on a 2-core server with one disk an application's median insert
hardly moves while a copy runs; its p99 does (every batch's WAL and data writes queue in front of
its commit's flush). Measured with bench/convert_bench.py at 1M rows: deciding on the probes' p90
gave 41 s and a writer p99 of 4.2x idle; deciding on their p99 gives ~2x at ~9x the time.

`--sleep 0` means full speed: the throttle is off (no probe connection, no pause). Disable it
with PARTMAN_THROTTLE=false to get a plain fixed `--sleep` between batches."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from .. import db, log
from ..db import QualifiedName
from ..settings import Settings
from . import plan, replicas

PROBE_EVERY = 0.025  # seconds between probe inserts
BASELINE_PROBES = 80  # idle probes before the work starts, BASELINE_EVERY apart: 0.8 s
# the idle baseline is taken faster than the probes that follow: the same 80 one-row inserts
# (the probe does not load the server), less waiting at every start (it was 2 s, paid again by
# each resume); a shorter window meets a stall less often, so the baseline errs low, the gentle side
BASELINE_EVERY = 0.01
WINDOW = 200  # the last 5 s of probes
TAIL = 0.01  # the share of probes allowed above the target: the throttle guards the p99
TAIL_INDEX = 1 - TAIL
THROTTLE_SLACK_MS = 0.2
REBASE_BELOW = 0.75  # a window's p99 under 0.75 x the baseline: the baseline was measured at a busy moment
MAX_PAUSE = plan.MAX_PAUSE  # seconds
LAG_EVERY = 1.0  # seconds between pg_stat_replication reads
PROBE_TABLE = "partman_probe"
_BASELINE: dict[str, float] = {}  # idle p99 per probe table, measured once per process (copy, then indexes)


class Throttle:
    """Use as a context manager; `pause()` returns (and sleeps) the pause after a batch."""

    def __init__(self, settings: Settings, work_schema: str | None, floor: float, *, enabled: bool,
                 paces: str = "copy") -> None:
        self.settings = settings
        self.paces = paces  # the work it paces (copy, indexes, verify), for its log line
        self.table = QualifiedName(work_schema, PROBE_TABLE) if work_schema else None
        self.floor = floor
        self.enabled = enabled and floor > 0 and self.table is not None
        self.current = floor
        self.baseline_ms: float | None = None
        self.samples: list[float] = []  # the last WINDOW probe latencies (ms)
        self.fresh = 0  # probes since the last decision
        self.fresh_max = 0.0
        self.replica_lag_s: float | None = None  # the largest replay lag at the last reading
        self.replica_lag_max_s: float | None = None  # the largest over the work
        self.slowdowns = 0
        self.replica_slowdowns = 0  # of them, those a replica's lag made
        self.slowed_by: str | None = None  # what made the last slowdown: "application" (the probe) or "replica"
        self.window_p99s: list[float] = []  # each full window's p99 at a decision: the summary's spread
        self.windows_over = 0  # of them, those over the target at the time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Throttle:
        if not self.enabled:
            return self
        try:
            self._conn = db.connect(self.settings, "partman convert probe")
            self._conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (at timestamptz NOT NULL DEFAULT clock_timestamp())").format(
                    self.table.ident()  # type: ignore[union-attr]
                )
            )
            key = str(self.table)
            if key not in _BASELINE:
                base = []
                for _ in range(BASELINE_PROBES):
                    base.append(self._probe())
                    time.sleep(BASELINE_EVERY)
                base.sort()
                _BASELINE[key] = base[int(len(base) * 0.98)]  # the idle p99 (second slowest of 80)
            self.baseline_ms = _BASELINE[key]
            self.observe_lag(replicas.lag_now(self._conn))  # known from the first batch on
        except Exception as exc:  # noqa: BLE001 - a throttle that cannot probe falls back to the fixed sleep
            log.get().warning("throttle_unavailable", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._close()
            self.enabled = False
            return self
        self._thread = threading.Thread(target=self._run, name="partman-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()
        if self.enabled:
            log.get().info("throttle", paces=self.paces, baseline_ms=round(self.baseline_ms or 0, 2),
                           target_ms=round(self.target_ms, 2), slowdowns=self.slowdowns,
                           last_pause_s=round(self.current, 3), **self._spread(), **self._replicas())

    def _spread(self) -> dict[str, Any]:
        """The probes' p99 over the work, window by window (lowest, median, highest, and how many
        windows were over the target): what the throttle saw, for a reader asking why it did or
        did not slow down."""
        p99s = sorted(self.window_p99s)
        if not p99s:
            return {}
        return {"windows": len(p99s), "window_p99_ms": [round(p99s[0], 2), round(p99s[len(p99s) // 2], 2),
                                                        round(p99s[-1], 2)],
                "windows_over_target": self.windows_over}

    def _replicas(self) -> dict[str, Any]:
        """The replicas' part of the summary, when one showed a lag."""
        if self.replica_lag_max_s is None:
            return {}
        return {"replica_lag_max_s": round(self.replica_lag_max_s, 2), "replica_slowdowns": self.replica_slowdowns}

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None

    # ----------------------------------------------------------------- probing
    def _probe(self) -> float:
        assert self._conn is not None and self.table is not None
        t0 = time.perf_counter()
        self._conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(self.table.ident()))
        return (time.perf_counter() - t0) * 1000

    def _run(self) -> None:
        last_lag = time.monotonic()  # read once already, by __enter__
        try:
            while not self._stop.is_set():
                ms = self._probe()
                with self._lock:
                    self.samples.append(ms)
                    del self.samples[:-WINDOW]
                    self.fresh += 1
                    self.fresh_max = max(self.fresh_max, ms)
                now = time.monotonic()
                if now - last_lag >= LAG_EVERY:
                    last_lag = now
                    self.observe_lag(replicas.lag_now(self._conn))  # type: ignore[arg-type]
                self._stop.wait(PROBE_EVERY)
        except Exception:  # noqa: BLE001 - the server went away: the copy reports it, not the probe
            self.enabled = False

    def observe_lag(self, lag: float | None) -> None:
        """A reading of the replicas' largest replay lag (None: none shows one)."""
        self.replica_lag_s = lag
        if lag is not None:
            self.replica_lag_max_s = max(lag, self.replica_lag_max_s or 0.0)

    # ----------------------------------------------------------------- control
    @property
    def target_ms(self) -> float:
        return (self.baseline_ms or 0.0) * self.settings.throttle_ratio + THROTTLE_SLACK_MS

    def decide(self) -> float:
        """The next pause, from the recent probes (no sleeping)."""
        if not self.enabled:
            return self.floor
        with self._lock:
            window = list(self.samples)
            fresh, fresh_max = self.fresh, self.fresh_max
            self.fresh, self.fresh_max = 0, 0.0
        if len(window) >= WINDOW and self.baseline_ms:
            p99 = sorted(window)[int(TAIL_INDEX * (len(window) - 1))]
            if p99 < self.baseline_ms * REBASE_BELOW:
                log.get().info("throttle_rebaselined", baseline_ms=round(self.baseline_ms, 2), now_ms=round(p99, 2))
                self.baseline_ms = _BASELINE[str(self.table)] = p99
            if fresh > 0:  # a window with news in it, for the summary
                self.window_p99s.append(p99)
                self.windows_over += p99 > self.target_ms
        lag = self.replica_lag_s
        lagging = lag is not None and lag > self.settings.throttle_max_replica_lag
        # the application's p99 is what suffers first (on 2 cores the median hardly moves): slow
        # down when more than 1% of the recent probes, and one since the last decision, were slower
        # than the target
        over = sum(1 for ms in window if ms > self.target_ms)
        slow = lagging or (fresh > 0 and len(window) >= 20 and over > TAIL * len(window) and fresh_max > self.target_ms)
        if slow:
            self.slowdowns += 1
            self.replica_slowdowns += lagging
            self.slowed_by = "replica" if lagging else "application"
            self.current = min(MAX_PAUSE, max(self.current * 1.6, self.floor + 0.05))
        elif fresh > 0:
            self.current = max(self.floor, self.current * 0.9)
        return self.current

    def pacing(self) -> dict[str, Any]:
        """The pace now, for the progress lines: the pause after each batch, what stretched it
        beyond `--sleep` (the application's probe or a replica's lag), the replicas' lag."""
        out: dict[str, Any] = {"pause_s": round(self.current, 2)}
        if self.current > self.floor * 1.05 and self.slowed_by:
            out["slowed_by"] = self.slowed_by
        if self.replica_lag_s is not None:
            out["replica_lag_s"] = round(self.replica_lag_s, 1)
        return out

    def pause(self) -> float:
        p = self.decide()
        if p > 0:
            time.sleep(p)
        return p
