"""Benchmark: the swap's exclusive lock when partman talks to its server across a network.

    python bench/swap_bench.py [--rows 1000000] [--rtt-ms 0,1,2] [--burst 5000] [--rounds 1] [--fsync]

convert_bench.py measures the swap on one machine, where a round trip to the server costs ~0.05
ms. partman's production home is an ECS task or a systemd unit beside an RDS instance, often in
another availability zone: ~0.5-1.5 ms a round trip. Every statement the swap sends while it
holds the application's table adds one, so the lock's time there is what this machine measures
plus (round trips under the lock) x RTT. This script finds both numbers:

1. One throwaway server (partman.pgtemp.TempServer), the ledger seeded as convert_bench.py seeds it.
2. For each `--rtt-ms` (and `--rounds` times): a latency proxy (bench/latency_proxy.py) in front
   of the server, `partman convert --sleep 0` through it with convert_bench's application writer
   (direct, not through the proxy) and `--burst` rows written in the final catch-up window
   (convert_bench's (d): partman held 3 s before its swap), then `partman revert` through the
   proxy too.
3. A markdown table: per RTT the round trip measured through the proxy, the swap's lock, its
   final replay and its commit (partman's "swapped" log line), the conversion's time and its
   phases (the copy's and the verification's statements cross the network too), the revert's
   lock (its "reverted" line); then a least-squares line
   lock = base + n x RTT over every run: n is the number of round trips made under the lock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import convert_bench as cb  # (it puts this tree first on sys.path)
from partman.pgtemp import TempServer
from scale_bench import fit

HERE = Path(__file__).resolve().parent
WRITER_PAUSE = 0.01


class Proxy:
    """bench/latency_proxy.py as a subprocess in front of `port`."""

    def __init__(self, port: int, rtt_ms: float) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "latency_proxy.py"), "--target",
                                      f"127.0.0.1:{port}", "--rtt-ms", str(rtt_ms)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def measured_rtt_ms(dsn: str, n: int = 200) -> float:
    """The median `SELECT 1` through `dsn`, as partman's connections see a round trip."""
    with psycopg.connect(dsn, autocommit=True) as c:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            c.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rtt-ms", default="0,1,2", help="comma-separated round trips to add, in ms")
    ap.add_argument("--burst", type=int, default=5000, help="rows written in the final catch-up window")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pg", choices=["15", "16", "18"], default="15")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit and full_page_writes on")
    args = ap.parse_args()
    rtts = [float(r) for r in args.rtt_ms.split(",")]
    server = TempServer(version=args.pg, fsync=args.fsync)
    runs: list[tuple[float, float, dict]] = []  # (added rtt, measured rtt, partman's figures)
    with server:
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            cb.log(f"{server.server_version()}; seeding {args.rows:,} rows")
            cb.setup(conn, args.rows)
            cb.warm(conn)
        for rnd in range(args.rounds):
            for rtt in rtts:
                with Proxy(server.port, rtt) as proxy:
                    pdsn = dsn.replace(f":{server.port}/", f":{proxy.port}/")
                    seen = measured_rtt_ms(pdsn)
                    pm = cb.run_partman(server, dsn, WRITER_PAUSE, [], burst=args.burst, partman_dsn=pdsn)
                    pm["reverted"] = cb.undo(dsn, partman_dsn=pdsn)
                runs.append((rtt, seen, pm))
                cb.log(f"round {rnd + 1}, RTT +{rtt} ms (measured {seen:.2f}): swap lock {pm['swap_lock_ms']:.0f} ms, "
                       f"conversion {pm['seconds']:.1f} s, verify ok {(pm['verify'] or {}).get('ok')}; "
                       f"revert's lock {pm['reverted'].get('lock_ms')} ms")
        report(args, server, runs)


def phases(pm: dict) -> str:
    """The conversion's phases as the monitor saw them (the swap's includes the burst's hold)."""
    return " + ".join(f"{name} {sec:.1f}" for name, sec in pm["phases"] if sec >= 0.05)


def report(args: argparse.Namespace, server: TempServer, runs: list[tuple[float, float, dict]]) -> None:
    print()
    print(f"### The swap's lock across a network: {args.rows:,} rows, {args.burst:,} written in the final "
          f"catch-up window; {server.server_version()}, fsync {'on' if args.fsync else 'off'}, {os.cpu_count()} CPUs")
    print()
    print("| RTT added | RTT measured (`SELECT 1`, median) | swap's lock | final replay | commit | rows replayed "
          "under the lock | attempts | conversion end to end (its phases, s) | then `partman revert`: its lock (rows carried back) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rtt, seen, pm in runs:
        sw = pm.get("swapped") or {}
        rv = pm.get("reverted") or {}
        print(f"| {rtt:g} ms | {seen:.2f} ms | **{pm['swap_lock_ms']:.0f} ms** | {sw.get('replay_ms', float('nan')):.0f} ms | "
              f"{sw.get('commit_ms', float('nan')):.0f} ms | {sw.get('caught_up', pm['rows_caught_up']):,} | "
              f"{pm['swap_attempts']} | {pm['seconds']:.1f} s ({phases(pm)}) | {rv.get('lock_ms', float('nan')):.0f} ms "
              f"({rv.get('replayed', '?')}) |")
    if len({seen for _, seen, _ in runs}) > 1:
        # lock = base + n * rtt: fit() gives (intercept, 1 / slope) over (x, y) points
        base, inverse = fit([(seen, pm["swap_lock_ms"]) for _, seen, pm in runs])
        print()
        print(f"Least-squares over every run: lock = {base:.0f} ms + **{1 / inverse:.0f}** x RTT "
              f"(round trips under the lock); at 1 ms a round trip, {base + 1 / inverse:.0f} ms.")
    bad = [pm["verify"] for _, _, pm in runs if not (pm["verify"] or {}).get("ok")]
    print()
    print(f"Every conversion verified: {'yes' if not bad else f'no: {bad}'}.")


if __name__ == "__main__":
    sys.exit(main())
