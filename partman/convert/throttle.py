"""The adaptive throttle between copy batches (and between index builds): a probe that feels
what the application feels, and a pause that grows when it suffers and shrinks when it does not.

The probe is a background thread on its own connection that commits a one-row INSERT into a
small logged table in partman's work schema every PROBE_EVERY seconds: the same path as an
application's insert (a backend, a WAL record, a commit that waits for the WAL flush), so it
slows down exactly when the copy's WAL volume, CPU or I/O slow an application down. Before the
copy starts it records an idle baseline. Between batches `pause()` looks at the probes that
finished in the last ~WINDOW probes: when their p90 exceeds `throttle_ratio` x the idle p90
(plus THROTTLE_SLACK_MS, so a 1 ms insert is not chased down to noise) and a probe since the
last decision was that slow too, or when a replica's
`pg_stat_replication.replay_lag` exceeds `throttle_max_replica_lag`, the pause grows
(multiplicatively, up to MAX_PAUSE); otherwise it decays back towards the configured `--sleep`.

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

PROBE_EVERY = 0.025  # seconds between probe inserts
BASELINE_PROBES = 40
WINDOW = 80
THROTTLE_SLACK_MS = 0.5
MAX_PAUSE = 2.0
LAG_EVERY = 1.0  # seconds between pg_stat_replication reads
PROBE_TABLE = "partman_probe"
_BASELINE: dict[str, float] = {}  # idle p90 per probe table, measured once per process (copy, then indexes)


class Throttle:
    """Use as a context manager; `pause()` returns (and sleeps) the pause after a batch."""

    def __init__(self, settings: Settings, work_schema: str | None, floor: float, *, enabled: bool) -> None:
        self.settings = settings
        self.table = QualifiedName(work_schema, PROBE_TABLE) if work_schema else None
        self.floor = floor
        self.enabled = enabled and floor > 0 and self.table is not None
        self.current = floor
        self.baseline_ms: float | None = None
        self.samples: list[float] = []  # the last WINDOW probe latencies (ms)
        self.fresh = 0  # probes since the last decision
        self.fresh_max = 0.0
        self.replica_lag_s: float | None = None
        self.slowdowns = 0
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
                    time.sleep(PROBE_EVERY)
                base.sort()
                _BASELINE[key] = base[int(len(base) * 0.9)]
            self.baseline_ms = _BASELINE[key]
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
            log.get().info("throttle", baseline_ms=round(self.baseline_ms or 0, 2), slowdowns=self.slowdowns,
                           last_pause_s=round(self.current, 3))

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
        last_lag = 0.0
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
                    self.replica_lag_s = self._replica_lag()
                self._stop.wait(PROBE_EVERY)
        except Exception:  # noqa: BLE001 - the server went away: the copy reports it, not the probe
            self.enabled = False

    def _replica_lag(self) -> float | None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT extract(epoch FROM max(replay_lag))::float8 FROM pg_stat_replication"
        ).fetchone()
        return row[0] if row else None

    # ----------------------------------------------------------------- control
    @property
    def target_ms(self) -> float:
        return (self.baseline_ms or 0.0) * self.settings.throttle_ratio + THROTTLE_SLACK_MS

    def decide(self) -> float:
        """The next pause, from the recent probes (no sleeping)."""
        if not self.enabled:
            return self.floor
        with self._lock:
            window = sorted(self.samples)
            fresh, fresh_max = self.fresh, self.fresh_max
            self.fresh, self.fresh_max = 0, 0.0
        lag = self.replica_lag_s
        lagging = lag is not None and lag > self.settings.throttle_max_replica_lag
        slow = lagging or (
            fresh > 0 and len(window) >= 10 and window[int(len(window) * 0.9)] > self.target_ms
            and fresh_max > self.target_ms
        )
        if slow:
            self.slowdowns += 1
            self.current = min(MAX_PAUSE, max(self.current * 1.6, self.floor + 0.05))
        elif fresh > 0:
            self.current = max(self.floor, self.current * 0.9)
        return self.current

    def pause(self) -> float:
        p = self.decide()
        if p > 0:
            time.sleep(p)
        return p

    def summary(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "baseline_ms": self.baseline_ms, "pause_s": self.current,
                "slowdowns": self.slowdowns, "replica_lag_s": self.replica_lag_s}
