"""Benchmark: how far a streaming standby falls behind while partman converts, at full speed and
at the default pace with the throttle watching the standby's lag.

    python bench/replica_bench.py [--rows 300000] [--fsync] [--max-lag 1,10] [--pg 15]
    python bench/replica_bench.py --rows 2000000 --fsync --max-lag ''   # full speed only

The issue asks the throttle to slow down when a replica's `replay_lag` rises; tests/test_replicas.py
shows that it does (a standby whose replay is paused). This script measures what that is worth
against a standby that only replays: on this 2-core machine the standby's startup process shares
the cores with the primary, so WAL written faster than it can be replayed piles up.

1. A throwaway primary (partman.pgtemp.TempServer) and a streaming standby of it
   (`pg_basebackup -R`), the ledger seeded on the primary as convert_bench.py seeds it.
2. `partman convert --sleep 0` with convert_bench's application writer, then `partman revert`;
   then for each `--max-lag` a conversion at the default pace (the throttle on) with
   PARTMAN_THROTTLE_MAX_REPLICA_LAG set to it, each followed by a revert.
3. During each conversion the standby's `replay_lag` and its replay position's distance from the
   primary's WAL (bytes) are read from `pg_stat_replication` every 0.1 s; after it, how long the
   standby took to replay everything. A markdown table of these, the conversion's time, the
   throttle's slowdowns for the replica, and the writer's p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import psycopg

import convert_bench as cb  # (it puts this tree first on sys.path)
from partman.pgtemp import TempServer

WRITER_PAUSE = 0.01


class LagSampler:
    """The standby's replay lag (s) and bytes behind, every `every` seconds, on the primary."""

    def __init__(self, dsn: str, every: float = 0.1) -> None:
        self.dsn, self.every = dsn, every
        self.samples: list[tuple[float, float | None, int | None]] = []  # (perf_counter, lag_s, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                row = c.execute("SELECT extract(epoch FROM replay_lag)::float8, "
                                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication").fetchone()
                if row:
                    self.samples.append((time.perf_counter(), row[0], row[1]))
                self._stop.wait(self.every)

    def figures(self, t0: float, t1: float) -> dict:
        lags = sorted(lag or 0.0 for t, lag, _ in self.samples if t0 <= t <= t1)
        behind = [b or 0 for t, _, b in self.samples if t0 <= t <= t1]
        if not lags:
            return {}
        return {"lag_max": lags[-1], "lag_p99": lags[int(0.99 * (len(lags) - 1))], "lag_mean": statistics.fmean(lags),
                "behind_max_mb": max(behind) / 2**20, "samples": len(lags)}


def caught_up_s(primary_dsn: str, standby_dsn: str, timeout: float = 1800) -> float:
    """Seconds until the standby has replayed everything the primary has written by now."""
    t0 = time.perf_counter()
    with psycopg.connect(primary_dsn, autocommit=True) as p, psycopg.connect(standby_dsn, autocommit=True) as s:
        target = p.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit("the standby did not catch up")
            time.sleep(0.05)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--max-lag", default="1,10",
                    help="PARTMAN_THROTTLE_MAX_REPLICA_LAG values for the paced runs ('': --sleep 0 only)")
    ap.add_argument("--pg", choices=["15", "16", "18"], default="15")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit and full_page_writes on")
    args = ap.parse_args()
    primary = TempServer(version=args.pg, fsync=args.fsync)
    standby = TempServer(version=args.pg)
    runs: list[tuple[str, dict, dict, float]] = []
    try:
        primary.init().start()
        dsn = primary.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            cb.log(f"{primary.server_version()}; seeding {args.rows:,} rows")
            cb.setup(conn, args.rows)
        standby.init_standby_of(primary).start()
        cb.log(f"standby started; caught up in {caught_up_s(dsn, standby.dsn()):.1f} s")
        modes = [("--sleep 0", None)] + [(f"default pace, max lag {lag} s", lag) for lag in args.max_lag.split(",") if lag]
        for name, lag in modes:
            if lag is None:
                os.environ.pop("PARTMAN_THROTTLE_MAX_REPLICA_LAG", None)
            else:
                os.environ["PARTMAN_THROTTLE_MAX_REPLICA_LAG"] = lag
            with LagSampler(dsn) as sampler:
                t0 = time.perf_counter()
                pm = cb.run_partman(primary, dsn, WRITER_PAUSE, [], full_speed=lag is None)
                t1 = t0 + pm["seconds"]
            after = caught_up_s(dsn, standby.dsn())
            lagged = sampler.figures(t0, t1)
            runs.append((name, pm, lagged, after))
            cb.log(f"{name}: {pm['seconds']:.1f} s, standby lag max {lagged.get('lag_max', 0):.1f} s, "
                   f"caught up {after:.1f} s after; verify ok {(pm['verify'] or {}).get('ok')}")
            cb.undo(dsn)
            caught_up_s(dsn, standby.dsn())
        report(args, primary, runs)
    finally:
        standby.cleanup()
        primary.cleanup()


def report(args: argparse.Namespace, server: TempServer, runs: list[tuple[str, dict, dict, float]]) -> None:
    print()
    print(f"### A streaming standby during the conversion: {args.rows:,} rows; {server.server_version()}, "
          f"fsync {'on' if args.fsync else 'off'}, {os.cpu_count()} CPUs, primary and standby on this machine")
    print()
    print("| run | conversion | standby's replay lag: max / p99 / mean | most WAL not yet replayed | "
          "standby caught up after partman exited | throttle's slowdowns for the replica (all) | writer p99 / max |")
    print("|---|---|---|---|---|---|---|")
    for name, pm, lag, after in runs:
        slow = sum(e.get("replica_slowdowns", 0) for e in pm["throttle"])
        every = sum(e.get("slowdowns", 0) for e in pm["throttle"])
        w = pm["writer"]
        print(f"| {name} | {pm['seconds']:.1f} s | {lag.get('lag_max', 0):.2f} / {lag.get('lag_p99', 0):.2f} / "
              f"{lag.get('lag_mean', 0):.2f} s | {lag.get('behind_max_mb', 0):.0f} MB | {after:.1f} s | "
              f"{slow if pm['throttle'] else '-'} ({every if pm['throttle'] else '-'}) | "
              f"{w.get('p99', float('nan')):.1f} / {w.get('max', float('nan')):.0f} ms |")
    bad = [pm["verify"] for _, pm, _, _ in runs if not (pm["verify"] or {}).get("ok")]
    print()
    print(f"Every conversion verified: {'yes' if not bad else f'no: {bad}'}.")


if __name__ == "__main__":
    sys.exit(main())
