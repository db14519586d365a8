"""Benchmark: the scale curve. `partman convert --sleep 0` and the offline limit at several table
sizes, in one run on one server, the sizes interleaved.

    python bench/scale_bench.py [--sizes 500000,2000000,10000000] [--rounds 2] [--pg 15] [--fsync]

The issue's scale target: time grows linearly with the table, rows/s within ±20% across sizes.
Run one size per invocation and the sizes meet the machine at different hours (on this shared
host wall-clock figures move by ±20% between runs), so this script measures them together:

1. One throwaway server (partman.pgtemp.TempServer); each size seeded in its own database
   (`scale_<rows>`) exactly as convert_bench.py seeds its one (bench/convert_bench.py: setup).
2. `--rounds` rounds; in each, for every size in turn: the limit (convert_bench.run_limit: one
   `INSERT ... SELECT` into an unindexed partitioned table, the indexes, ANALYZE; dropped again),
   then `partman convert --sleep 0` with convert_bench's application writer running
   (convert_bench.run_partman), then, unless it was the last round, `partman revert` and the
   partitioned copy dropped (convert_bench.undo), so the next round starts from the same table.
3. A markdown report: per size each round's seconds and the median's rows/s for both methods
   (partman's start-up, the limit's ANALYZE beside them: the two costs that do not grow with
   the table), partman / limit; then the target: each size's median rows/s against the mean of
   the sizes (within ±20%?), slowest against fastest, and a least-squares fit
   time = fixed + rows / rate over every run with the largest deviation of a size from it.

About 25 minutes at the default sizes and rounds on a 2-core machine (the 10M seeding ~4 min);
~12 GiB of disk at the peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psycopg

import convert_bench as cb  # (it puts this tree first on sys.path: partman below is this tree's)
from partman.pgtemp import TempServer

WRITER_PAUSE = 0.01  # convert_bench's default: the same application writer as its (b)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares time = fixed + rows * per_row over (rows, seconds); returns (fixed s, rows/s)."""
    n = len(points)
    mx = sum(r for r, _ in points) / n
    my = sum(t for _, t in points) / n
    sxx = sum((r - mx) ** 2 for r, _ in points)
    slope = sum((r - mx) * (t - my) for r, t in points) / sxx
    return my - slope * mx, 1 / slope


def scale_figures(medians: dict[int, float], runs: list[tuple[int, float]]) -> dict:
    """The target's figures for one method: its median seconds per size and every run."""
    rates = {rows: rows / sec for rows, sec in medians.items()}
    mean = statistics.fmean(rates.values())
    fixed, rate = fit(runs) if len(medians) > 1 else (float("nan"), float("nan"))
    return {
        "rates": rates,
        "vs_mean": {rows: r / mean - 1 for rows, r in rates.items()},
        "within": all(abs(r / mean - 1) <= 0.20 for r in rates.values()),
        "slowest_fastest": min(rates.values()) / max(rates.values()),
        "fixed": fixed,
        "rate": rate,
        "off_fit": max(abs(sec / (fixed + rows / rate) - 1) for rows, sec in medians.items()),
    }


def startup_seconds(run: dict) -> float:
    """partman's start-up: its time before the catalog shows this conversion's first phase (the
    monitor sees the previous round's finished conversion first, from the second round on)."""
    total = 0.0
    for name, sec in run["phases"]:
        if name == "prepare":
            return total
        total += sec
    return float("nan")


def report(args: argparse.Namespace, server: TempServer, sizes: list[int], limit: dict[int, list[dict]],
           pm: dict[int, list[dict]]) -> None:
    med_l = {n: statistics.median(r["seconds"] for r in limit[n]) for n in sizes}
    med_p = {n: statistics.median(r["seconds"] for r in pm[n]) for n in sizes}
    fl = scale_figures(med_l, [(n, r["seconds"]) for n in sizes for r in limit[n]])
    fp = scale_figures(med_p, [(n, r["seconds"]) for n in sizes for r in pm[n]])
    print()
    print(f"### Scale: `partman convert --sleep 0` and the limit at {', '.join(f'{n:,}' for n in sizes)} rows; "
          f"{server.server_version()}, fsync {'on' if args.fsync else 'off'}, {os.cpu_count()} CPUs; "
          f"{args.rounds} round(s), the sizes interleaved")
    print()
    print("| rows | limit, each round | limit's ANALYZE | partman, each round | partman's start-up | "
          "longest copy transaction | rows/s (medians): limit; partman | partman / limit |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        each_l = "; ".join(f"{r['seconds']:.1f}" for r in limit[n])
        each_p = "; ".join(f"{r['seconds']:.1f}" for r in pm[n])
        analyze = "; ".join(f"{r['analyze']:.1f}" for r in limit[n])
        startup = "; ".join(f"{startup_seconds(r):.1f}" for r in pm[n])
        longest = "; ".join(f"{r['longest_batch_ms']:.0f}" for r in pm[n])
        print(f"| {n:,} | {each_l} s | {analyze} s | {each_p} s | {startup} s | {longest} ms | "
              f"{fl['rates'][n]:,.0f}; {fp['rates'][n]:,.0f} | {med_p[n] / med_l[n]:.2f} |")
    print()
    print("| scale (each size's median) | limit | partman |")
    print("|---|---|---|")
    vs = {m: " / ".join(f"{f['vs_mean'][n]:+.0%}" for n in sizes) for m, f in (("l", fl), ("p", fp))}
    print(f"| rows/s against the mean of the sizes ({' / '.join(f'{n:,}' for n in sizes)}) | {vs['l']} | {vs['p']} |")
    print(f"| **every size within ±20% of the mean** | {'yes' if fl['within'] else 'no'} | "
          f"**{'yes' if fp['within'] else 'no'}** |")
    print(f"| slowest size's rows/s / fastest's | {fl['slowest_fastest']:.2f} | {fp['slowest_fastest']:.2f} |")
    print(f"| least-squares fit over every run: time = fixed + rows / rate | {fl['fixed']:.2f} s + rows / "
          f"{fl['rate']:,.0f} | {fp['fixed']:.2f} s + rows / {fp['rate']:,.0f} |")
    print(f"| largest deviation of a size's median time from the fit | {fl['off_fit']:.1%} | {fp['off_fit']:.1%} |")
    print()
    print("Each copy connection's longest batch and its waits for WAL room (copy_range log lines), by size "
          "and round:")
    for n in sizes:
        for i, r in enumerate(pm[n], 1):
            ranges = ", ".join(f"{c.get('cursor')}: {c.get('batches')} batches, longest {c.get('longest_batch_ms')} ms, "
                               f"WAL waits {c.get('wal_wait_s')} s" for c in r["copy_ranges"])
            print(f"- {n:,}, round {i}: {ranges}")
    bad = [(n, r["verify"]) for n in sizes for r in pm[n] if not (r["verify"] or {}).get("ok")]
    print()
    print(f"Every conversion verified: {'yes' if not bad else f'no: {bad}'}; longest copy transaction "
          f"{max(r['longest_batch_ms'] for n in sizes for r in pm[n]):.0f} ms; writer errors "
          f"{sum(r['writer']['errors'] for n in sizes for r in pm[n])}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500000,2000000,10000000", help="comma-separated row counts")
    ap.add_argument("--rounds", type=int, default=2, help="conversions per size (the median is reported)")
    ap.add_argument("--pg", choices=["15", "16", "18"], default="15")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit and full_page_writes on")
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a server setting for this run (e.g. shared_buffers=6GB); repeatable")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.rounds < 1 or not sizes:
        ap.error("give at least one size and one round")
    server = TempServer(version=args.pg, fsync=args.fsync, settings=dict(s.split("=", 1) for s in args.pg_setting))
    limit: dict[int, list[dict]] = {n: [] for n in sizes}
    pm: dict[int, list[dict]] = {n: [] for n in sizes}
    with server:
        dsns = {}
        for n in sizes:
            with psycopg.connect(server.dsn(), autocommit=True) as c:
                c.execute(f"CREATE DATABASE scale_{n}")
            dsns[n] = server.dsn(f"scale_{n}")
            with psycopg.connect(dsns[n], autocommit=True) as conn:
                cb.log(f"{server.server_version()}; seeding {n:,} rows in database scale_{n}")
                data = cb.setup(conn, n)
                cb.log(f"seeded in {data['seed_s']:.1f}s: {data['total_bytes'] / 2**20:.0f} MiB")
        for rnd in range(args.rounds):
            for n in sizes:
                with psycopg.connect(dsns[n], autocommit=True) as conn:
                    limit[n].append(cb.run_limit(conn))
                    cb.warm(conn)
                time.sleep(1)
                pm[n].append(cb.run_partman(server, dsns[n], WRITER_PAUSE, []))
                cb.log(f"round {rnd + 1}, {n:,} rows: limit {limit[n][-1]['seconds']:.1f}s, "
                       f"partman {pm[n][-1]['seconds']:.1f}s")
                if rnd + 1 < args.rounds:
                    cb.undo(dsns[n])
        report(args, server, sizes, limit, pm)


if __name__ == "__main__":
    sys.exit(main())
