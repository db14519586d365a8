"""Benchmark: how the paced verification's range size weighs on an application writer.

    python bench/verify_bench.py [--rows 1000000] [--fixed 20000,8000] [--rounds 2] [--fsync]

The verification after the swap compares `<table>_old` with the partitioned table range by range;
with default settings it pauses (the adaptive throttle) between ranges. This script isolates that
phase: it seeds the ledger (convert_bench.setup), converts it at full speed (`partman convert
--sleep 0`, which keeps `<table>_old`), then runs the paced verification (partman.convert.verify,
throttled as a default conversion runs it) again and again, alternating:

- "adaptive": what partman does by default (ranges sized by their duration, GENTLE_RANGE_MS);
- each `--fixed` size: ranges of that many rows (20,000 was the default before).

An application writer inserts through the ledger's chain trigger every 10 ms throughout; after
each verification partman is idle for `--gap` seconds. It prints, per variant: the verification's
time, its statements' duration, and the writer's p99 during it against its p99 in the idle gaps
of the same run (all gaps pooled), the ratio the issue's 1.5x target is about.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from convert_bench import TABLE, Writer, log, run_partman, setup  # noqa: E402

from partman.convert import capture, ddl  # noqa: E402
from partman.convert.swap import WorkNames  # noqa: E402
from partman.convert.throttle import Throttle  # noqa: E402
from partman.convert.verify import GENTLE_FIRST_RANGE, GENTLE_RANGE_MS, typed_columns, verify  # noqa: E402
from partman.db import QualifiedName  # noqa: E402
from partman.introspect import introspect  # noqa: E402
from partman.pgtemp import TempServer  # noqa: E402
from partman.settings import Settings  # noqa: E402

SLEEP = 0.1  # the default --sleep


def one(conn: psycopg.Connection, settings: Settings, work_schema: str, rows: int | None) -> dict:
    """One paced verification: fixed ranges of `rows` rows, or (None) partman's adaptive ones."""
    old = QualifiedName(TABLE.schema, TABLE.name + "_old")
    model = introspect(conn, old)
    statements: list[float] = []
    with Throttle(settings, work_schema, SLEEP, enabled=True) as throttle:
        last = time.perf_counter()

        def pause() -> None:
            nonlocal last
            statements.append((time.perf_counter() - last) * 1000)  # the range just done
            throttle.pause()
            last = time.perf_counter()

        t0 = time.perf_counter()
        figures = verify(conn, old, TABLE, WorkNames(work_schema).revert_log, capture.copy_key(conn, old),
                         ddl.column_names(model), typed=typed_columns(model), partition_key="event_timestamp",
                         chunk_rows=rows or GENTLE_FIRST_RANGE, target_ms=None if rows else GENTLE_RANGE_MS,
                         pause=pause, repair=False)
        seconds = time.perf_counter() - t0
        slowdowns = throttle.slowdowns
    if not figures["ok"]:
        raise SystemExit(f"verification failed: {figures}")
    statements.sort()
    return {"seconds": seconds, "ranges": len(statements) + 1, "slowdowns": slowdowns,
            "stmt_p50": statements[len(statements) // 2] if statements else float("nan"),
            "stmt_max": statements[-1] if statements else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fixed", default="20000", help="comma-separated fixed range sizes to compare with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gap", type=float, default=15.0, help="idle seconds after each verification")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit and full_page_writes on")
    args = ap.parse_args()
    variants: list[int | None] = [None, *(int(x) for x in args.fixed.split(",") if x)]

    with TempServer(version="15", fsync=args.fsync) as server:
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            log(f"{server.server_version()}; seeding {args.rows:,} rows")
            setup(conn, args.rows)
        log("partman convert --sleep 0 (keeps the old table to verify against)")
        pm = run_partman(server, dsn, 0.01, [])
        log(f"converted in {pm['seconds']:.1f}s")
        settings = Settings(database_url=dsn)
        runs: list[tuple[int | None, float, float, dict]] = []
        with psycopg.connect(dsn, autocommit=True) as conn, Writer(dsn, 0.01) as writer:
            work_schema = conn.execute("SELECT options->>'work_schema' FROM partman_catalog.conversion "
                                       "ORDER BY id DESC LIMIT 1").fetchone()[0]
            time.sleep(args.gap)
            for r in range(args.rounds):
                for rows in variants:
                    t0 = time.perf_counter()
                    got = one(conn, settings, work_schema, rows)
                    t1 = time.perf_counter()
                    time.sleep(args.gap)
                    runs.append((rows, t0, t1, got))
                    w = writer.figures(t0, t1)
                    log(f"round {r + 1}, {rows or 'adaptive'}: {got['seconds']:.1f}s, {got['ranges']} ranges, "
                        f"writer p99 {w['p99']:.2f} ms")
        gaps = [(t1 + 1, t1 + args.gap) for _, _, t1, _ in runs]
        idle = writer.figures(inside=gaps)
    print(f"\n{args.rows:,} rows, paced verification (throttle on, --sleep {SLEEP}), {args.rounds} round(s) each, "
          f"a writer every 10 ms; its p99 in the idle gaps: {idle['p99']:.2f} ms (n={idle['n']})\n")
    print("| ranges | seconds (each round) | ranges per run | statement p50 / max ms | throttle slowdowns "
          "| writer p99 during (pooled) | / idle gaps |")
    print("|---|---|---|---|---|---|---|")
    for rows in variants:
        mine = [(t0, t1, got) for v, t0, t1, got in runs if v == rows]
        w = writer.figures(inside=[(t0, t1) for t0, t1, _ in mine])
        label = f"adaptive (~{GENTLE_RANGE_MS:.0f} ms)" if rows is None else f"{rows:,} rows"
        cells = [", ".join(fmt(g) for _, _, g in mine) for fmt in (
            lambda g: f"{g['seconds']:.1f}", lambda g: str(g["ranges"]),
            lambda g: f"{g['stmt_p50']:.1f} / {g['stmt_max']:.0f}", lambda g: str(g["slowdowns"]))]
        print(f"| {label} | {' | '.join(cells)} | {w['p99']:.2f} ms | {w['p99'] / idle['p99']:.2f}x |")

if __name__ == "__main__":
    main()
