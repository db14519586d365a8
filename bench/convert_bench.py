"""Benchmark: `partman convert` against the offline limit, on one data set, in one run.

    python bench/convert_bench.py [--rows 1000000] [--pg 15|16|18] [--fsync]

What it does, in one throwaway server (partman.pgtemp.TempServer):

1. Builds `public.audit_log_ledger` (partman.sample_ledger's DDL: bigserial PK, 2 secondary
   indexes, the chain and append-only triggers) plus a 3rd secondary index
   `(action, event_timestamp)`, and seeds `--rows` rows spread over 2016-01-01 .. 2026-10-01
   with ~300-byte JSONB payloads. Seeding is set-based SQL (seconds, not minutes): the hashes
   link (row n's prev_hash = row n-1's current_hash) but are sha256 over the id, not the
   content; the copy does not care. VACUUM ANALYZE + CHECKPOINT, then a full read so both
   methods start from the same warm cache.
2. (a) the limit, offline: one `INSERT INTO <partitioned, unindexed> SELECT` (same yearly
   partitions + default as partman's plan), then the PK (id, event_timestamp) and the 3
   secondary indexes, then ANALYZE. Timed per step, then dropped. (a2) When the server has
   pg_partman: its offline method on a copy of the table (run_pg_partman).
3. An idle baseline of an application writer: one connection inserting through the chain
   trigger every `--writer-pause` seconds for `--probe-seconds`.
4. (b) `python -m partman.cli convert public.audit_log_ledger --column event_timestamp
   --sleep 0 --yes` as a subprocess, with the same writer running throughout; a monitor polls
   partman_catalog.conversion.phase to split the wall time into phases. Afterwards it reads
   longest_batch_ms and swap_lock_ms from the catalog.
5. (d) with --swap-burst N: revert, convert again, N rows written just before the swap's lock.
6. (c) with --gentle / --gentle-only: the same data in a second database, `partman convert` with
   default settings, the writer throughout and alone for `--probe-seconds` after it. partman is
   stopped for a few seconds now and then during its copy and verification (`--interleave`), so
   the writer's latency with partman stopped, in the same minutes, is a second idle reference.

It prints a markdown table: seconds, rows/s and time vs the limit (b/a, lower is better; the
rows/s ratio is its inverse), the longest copy transaction, the swap's lock time, and the
writer's p50/p99/max insert latency during (b) against its idle baseline.

Keep runs small while developing (--rows 200000); the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from partman.db import QualifiedName  # noqa: E402
from partman.pgtemp import TempServer  # noqa: E402
from partman.sample_ledger import Ledger  # noqa: E402

TABLE = QualifiedName("public", "audit_log_ledger")
START, END = "2016-01-01", "2026-10-01"
COLUMNS = "id, event_timestamp, actor, action, payload, prev_hash, current_hash"

SEED_SQL = """
INSERT INTO public.audit_log_ledger (id, event_timestamp, actor, action, payload, prev_hash, current_hash)
SELECT g,
       %(t0)s::timestamptz + (g - 1) * ((%(t1)s::timestamptz - %(t0)s::timestamptz) / %(n)s),
       'user' || (g %% 97),
       (ARRAY['read', 'write', 'sign', 'export'])[1 + g %% 4],
       jsonb_build_object('resident', g %% 5000, 'note', md5(g::text), 'v', 1,
                          'detail', repeat(md5((g * 7)::text), 6)),
       CASE WHEN g = 1 THEN repeat('0', 64) ELSE encode(sha256(convert_to((g - 1)::text, 'UTF8')), 'hex') END,
       encode(sha256(convert_to(g::text, 'UTF8')), 'hex')
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup(conn: psycopg.Connection, rows: int) -> dict:
    Ledger(TABLE).create(conn)
    conn.execute("CREATE INDEX ON public.audit_log_ledger (action, event_timestamp)")
    t0 = time.perf_counter()
    chunk = 500_000
    for lo in range(1, rows + 1, chunk):
        hi = min(rows, lo + chunk - 1)
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # seeding only: triggers off
            conn.execute(SEED_SQL, {"t0": START, "t1": END, "n": rows, "lo": lo, "hi": hi})
    conn.execute("SELECT setval('public.audit_log_ledger_id_seq', (SELECT max(id) FROM public.audit_log_ledger))")
    conn.execute("VACUUM (ANALYZE) public.audit_log_ledger")
    conn.execute("CHECKPOINT")
    seeded = time.perf_counter() - t0
    size, row_bytes = conn.execute(
        "SELECT pg_total_relation_size('public.audit_log_ledger'), "
        "(SELECT avg(pg_column_size(t.*))::int FROM (SELECT * FROM public.audit_log_ledger LIMIT 10000) t)"
    ).fetchone()
    warm(conn)
    return {"seed_s": seeded, "total_bytes": size, "row_bytes": row_bytes}


def warm(conn: psycopg.Connection) -> None:
    conn.execute("SELECT count(*), sum(length(payload::text)) FROM public.audit_log_ledger")


def years(conn: psycopg.Connection) -> tuple[int, int]:
    lo, hi = conn.execute(
        "SELECT extract(year FROM min(event_timestamp) AT TIME ZONE 'UTC')::int, "
        "extract(year FROM now() AT TIME ZONE 'UTC')::int + 3 FROM public.audit_log_ledger"
    ).fetchone()
    return lo, hi


def run_limit(conn: psycopg.Connection) -> dict:
    """One INSERT ... SELECT into an unindexed partitioned copy, then indexes, then ANALYZE."""
    lo, hi = years(conn)
    conn.execute("DROP SCHEMA IF EXISTS bench_limit CASCADE")
    conn.execute("CREATE SCHEMA bench_limit")
    conn.execute("CHECKPOINT")
    out: dict = {}
    t0 = time.perf_counter()
    conn.execute(
        "CREATE TABLE bench_limit.t (LIKE public.audit_log_ledger INCLUDING DEFAULTS) PARTITION BY RANGE (event_timestamp)"
    )
    for y in range(lo, hi + 1):
        conn.execute(
            f"CREATE TABLE bench_limit.t_{y} PARTITION OF bench_limit.t "
            f"FOR VALUES FROM ('{y}-01-01 00:00+00') TO ('{y + 1}-01-01 00:00+00')"
        )
    conn.execute("CREATE TABLE bench_limit.t_default PARTITION OF bench_limit.t DEFAULT")
    t1 = time.perf_counter()
    n = conn.execute(f"INSERT INTO bench_limit.t ({COLUMNS}) SELECT {COLUMNS} FROM public.audit_log_ledger").rowcount
    t2 = time.perf_counter()
    conn.execute("ALTER TABLE bench_limit.t ADD PRIMARY KEY (id, event_timestamp)")
    conn.execute("CREATE INDEX ON bench_limit.t (event_timestamp)")
    conn.execute("CREATE INDEX ON bench_limit.t (actor, event_timestamp)")
    conn.execute("CREATE INDEX ON bench_limit.t (action, event_timestamp)")
    t3 = time.perf_counter()
    conn.execute("ANALYZE bench_limit.t")
    t4 = time.perf_counter()
    out.update(rows=n, seconds=t4 - t0, ddl=t1 - t0, copy=t2 - t1, indexes=t3 - t2, analyze=t4 - t3)
    conn.execute("DROP SCHEMA bench_limit CASCADE")
    conn.execute("CHECKPOINT")
    return out


def pg_partman_available(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'").fetchone()[0] > 0


def run_pg_partman(conn: psycopg.Connection) -> dict:
    """The anchor, when the server has pg_partman (Debian: postgresql-15-partman): its documented
    offline method on a copy of the same data (partition_data_proc moves rows out of its source,
    so it cannot run on the original). Untimed: the copy `bench_pgp.src` with the ledger's PK and
    indexes. Timed: a partitioned table with the PK and the 3 indexes (present during the move,
    as in pg_partman's how-to), create_parent (yearly from the first row's year), then
    partition_data_proc in 1-year batches without its default 1 s wait between them, then
    VACUUM ANALYZE."""
    lo, _hi = years(conn)
    conn.execute("CREATE SCHEMA IF NOT EXISTS partman")
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman")
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0]
    conn.execute("DROP SCHEMA IF EXISTS bench_pgp CASCADE")
    conn.execute("CREATE SCHEMA bench_pgp")
    conn.execute("CREATE TABLE bench_pgp.src (LIKE public.audit_log_ledger INCLUDING DEFAULTS INCLUDING INDEXES)")
    conn.execute(f"INSERT INTO bench_pgp.src ({COLUMNS}) SELECT {COLUMNS} FROM public.audit_log_ledger")
    conn.execute("VACUUM (ANALYZE) bench_pgp.src")
    conn.execute("CHECKPOINT")
    rows = conn.execute("SELECT count(*) FROM bench_pgp.src").fetchone()[0]
    t0 = time.perf_counter()
    conn.execute(
        "CREATE TABLE bench_pgp.t (LIKE public.audit_log_ledger INCLUDING DEFAULTS) PARTITION BY RANGE (event_timestamp)"
    )
    conn.execute("ALTER TABLE bench_pgp.t ADD PRIMARY KEY (id, event_timestamp)")
    conn.execute("CREATE INDEX ON bench_pgp.t (event_timestamp)")
    conn.execute("CREATE INDEX ON bench_pgp.t (actor, event_timestamp)")
    conn.execute("CREATE INDEX ON bench_pgp.t (action, event_timestamp)")
    conn.execute(
        "SELECT partman.create_parent('bench_pgp.t', 'event_timestamp', 'native', 'yearly', "
        "p_start_partition := %s, p_jobmon := false)", (f"{lo}-01-01",)
    )
    t1 = time.perf_counter()
    conn.execute("CALL partman.partition_data_proc('bench_pgp.t', p_interval := '1 year', p_wait := 0, "
                 "p_source_table := 'bench_pgp.src', p_quiet := true)")
    t2 = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) bench_pgp.t")
    t3 = time.perf_counter()
    moved = conn.execute("SELECT count(*) FROM bench_pgp.t").fetchone()[0]
    left = conn.execute("SELECT count(*) FROM bench_pgp.src").fetchone()[0]
    conn.execute("DROP SCHEMA bench_pgp CASCADE")
    conn.execute("CHECKPOINT")
    if moved != rows or left:
        raise SystemExit(f"pg_partman moved {moved} of {rows} rows, {left} left in the source")
    return {"version": version, "rows": moved, "seconds": t3 - t0, "setup": t1 - t0, "move": t2 - t1, "analyze": t3 - t2}


class Writer:
    """One application connection inserting through the ledger's chain trigger."""

    def __init__(self, dsn: str, pause: float) -> None:
        self.dsn, self.pause = dsn, pause
        self.latencies: list[float] = []
        self.when: list[float] = []  # perf_counter at the start of each insert
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench writer") as c:
            c.execute("SET lock_timeout = '30s'")
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    c.execute(
                        "INSERT INTO public.audit_log_ledger (actor, action, payload, prev_hash, current_hash) "
                        "VALUES ('app', 'write', '{\"w\": 1}', '', '')"
                    )
                    self.latencies.append((time.perf_counter() - t0) * 1000)
                    self.when.append(t0)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                    time.sleep(0.05)
                time.sleep(self.pause)

    def __enter__(self) -> Writer:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=60)

    def figures(self, start: float | None = None, end: float | None = None, *,
                inside: list[tuple[float, float]] | None = None, outside: list[tuple[float, float]] = ()) -> dict:
        """Latency figures of the inserts started in [start, end); with `inside`, only those in one
        of these windows; those in a window of `outside` are left out."""
        def keep(t: float) -> bool:
            if (start is not None and t < start) or (end is not None and t >= end):
                return False
            if inside is not None and not any(a <= t < b for a, b in inside):
                return False
            return not any(a <= t < b for a, b in outside)

        lat = sorted(x for x, t in zip(self.latencies, self.when) if keep(t))
        if not lat:
            return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "errors": len(self.errors)}
        return {
            "n": len(lat),
            "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
            "max": lat[-1],
            "errors": len(self.errors),
        }


STATEMENT_KINDS = [  # (label, test on the lower-cased query text), first match wins
    ("catch-up / swap", lambda q: "convert_log" in q or "rename" in q or "lock table" in q),
    # copy.batch_statement (a plain INSERT ... SELECT) and the batch's bound (copy.bound_statement)
    ("copy batches", lambda q: q.startswith("insert into") or q.startswith("select array[")),
    ("index builds", lambda q: "create index" in q or "create unique index" in q or "add constraint" in q),
    ("analyze", lambda q: q.startswith("analyze")),
    ("verify ranges", lambda q: "not exists" in q and "is not distinct from" in q),
    ("count(*)", lambda q: q.startswith("select count(*) from")),
]


class PhaseMonitor:
    """Polls partman_catalog.conversion.phase (when each phase was first seen) and samples
    pg_stat_activity of partman's connection (what its active time is spent on)."""

    def __init__(self, dsn: str, interval: float = 0.02) -> None:
        self.dsn, self.interval = dsn, interval
        self.seen: list[tuple[str, float]] = []
        self.busy: dict[str, float] = {}
        # (when, what the server's own processes and partman's sessions were doing): to tell
        # what a stall of the writer met (a checkpoint's fsync, an autovacuum, partman's batch)
        self.timeline: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def around(self, start: float, end: float) -> str:
        """What was seen from `start` to `end` (or, if the monitor saw nothing then, next)."""
        seen = [what for t, what in self.timeline if start <= t <= end]
        if not seen:
            seen = [next((what for t, what in self.timeline if t > end), "")]
        out: list[str] = []
        for what in seen:
            for part in what.split("; "):
                if part and part not in out:
                    out.append(part)
        return "; ".join(out) or "nothing"

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench monitor") as c:
            prev = time.perf_counter()
            while not self._stop.is_set():
                try:
                    row = c.execute(
                        "SELECT phase FROM partman_catalog.conversion ORDER BY id DESC LIMIT 1"
                    ).fetchone()
                except psycopg.Error:
                    row = None
                now = time.perf_counter()
                if row and (not self.seen or self.seen[-1][0] != row[0]):
                    self.seen.append((row[0], now))
                doing = []
                for app, btype, wait, q in c.execute(
                    "SELECT application_name, backend_type, wait_event, lower(ltrim(query)) FROM pg_stat_activity "
                    "WHERE (application_name LIKE 'partman%%' AND state = 'active') "
                    "OR backend_type IN ('checkpointer', 'autovacuum worker', 'background writer', 'walwriter')"
                ).fetchall():
                    if app.startswith("partman"):
                        kind = next((k for k, test in STATEMENT_KINDS if test(q)), "other")
                        self.busy[kind] = self.busy.get(kind, 0.0) + (now - prev)
                        doing.append(f"partman {kind}: {wait or 'CPU'}")
                    elif wait not in ("CheckpointerMain", "BgWriterHibernate", "BgWriterMain", "WalWriterMain",
                                      "CheckpointWriteDelay", None) or btype == "autovacuum worker":
                        doing.append(f"{btype}: {wait or 'CPU'}")
                self.timeline.append((now, "; ".join(doing)))
                prev = now
                time.sleep(self.interval)

    def start(self) -> PhaseMonitor:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)

    def spans(self, t_start: float, t_end: float) -> list[tuple[str, float, float]]:
        """(phase, from, to) for each phase seen; time before the first counts as 'startup' (a
        conversion reverted before this one shows its last phase until this one's row exists)."""
        marks = [("startup", t_start), *[(n, t) for n, t in self.seen if n != "reverted"], ("end", t_end)]
        return [(name, t, t_next) for (name, t), (_n, t_next) in zip(marks, marks[1:]) if name != "done"]

    def durations(self, t_start: float, t_end: float) -> list[tuple[str, float]]:
        """(phase, seconds)."""
        return [(name, max(0.0, b - a)) for name, a, b in self.spans(t_start, t_end)]


class Pauser:
    """An idle reference taken over the same minutes as a gentle conversion: during its copy and
    its verification, partman's process is stopped (SIGSTOP) for `length` seconds every `every`
    seconds. The writer's inserts in those windows, after SETTLE seconds for a statement already
    in flight, are the idle figure; the rest are partman's. A host that is slow for a while then
    moves both figures alike, where an idle baseline measured once before the run can meet a
    quiet or a busy moment. partman takes no lock the writer needs in those phases, and it is
    stopped only between its transactions, so a stopped partman holds nobody up."""

    SETTLE = 0.3
    PHASES = ("copy", "verify")

    def __init__(self, dsn: str, proc: subprocess.Popen, mon: PhaseMonitor, every: float, length: float) -> None:
        self.dsn, self.proc, self.mon, self.every, self.length = dsn, proc, mon, every, length
        self.windows: list[tuple[str, float, float]] = []  # (phase, idle from, idle to)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench pauser") as c:
            while self.proc.poll() is None:
                until = time.perf_counter() + self.every
                while self.proc.poll() is None and time.perf_counter() < until:
                    time.sleep(0.2)
                phase = self.mon.seen[-1][0] if self.mon.seen else None
                if phase in self.PHASES and self.proc.poll() is None:
                    self._stop_once(c, phase)

    def _stop_once(self, c: psycopg.Connection, phase: str) -> None:
        """Stop partman between two of its transactions (none of its sessions active or in a
        transaction, checked again once it is stopped), so no transaction of its stays open and
        its own timings (the longest copy transaction) do not include the stop."""
        busy = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'partman%%' "
                "AND state <> 'idle'")
        for _ in range(200):
            if c.execute(busy).fetchone()[0] == 0:
                t = time.perf_counter()
                try:
                    os.kill(self.proc.pid, signal.SIGSTOP)
                    try:
                        if c.execute(busy).fetchone()[0] == 0:
                            time.sleep(self.length)
                            self.windows.append((phase, t + self.SETTLE, time.perf_counter()))
                            return
                    finally:
                        os.kill(self.proc.pid, signal.SIGCONT)
                except ProcessLookupError:  # partman has just exited
                    return
            time.sleep(0.01)

    def join(self) -> None:
        self._t.join(timeout=self.length + 10)

    def stopped(self) -> list[tuple[float, float]]:
        """Every window partman was stopped, settle included (left out of its own figures)."""
        return [(a - self.SETTLE, b) for _p, a, b in self.windows]

    def idle(self, phase: str) -> list[tuple[float, float]]:
        return [(a, b) for p, a, b in self.windows if p == phase]


_COMPILED = False


def partman_env() -> dict[str, str]:
    """The environment partman runs in: this tree first on the path, its modules compiled once
    (into its __pycache__ folders, ignored by git), as an installed partman's are (pip compiles them
    on install). Where PYTHONDONTWRITEBYTECODE is set, as in some containers, each run would
    otherwise compile ~40 modules first (~40 ms of start-up)."""
    global _COMPILED
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not _COMPILED:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "partman")], check=True, env=env)
        _COMPILED = True
    return env


def run_partman(server: TempServer, dsn: str, pause: float, extra: list[str], full_speed: bool = True,
                burst: int = 0, after: float = 0.0, interleave: tuple[float, float] | None = None,
                partman_dsn: str | None = None) -> dict:
    """One `partman convert` with the writer running. With `burst`, partman is held for
    BURST_WINDOW seconds between its last catch-up round and the swap's lock (failpoint
    convert.swap.before_lock) while `burst` rows are written, so the swap replays them under its lock.
    With `after`, the writer goes on alone for that many seconds once partman has exited: its
    latency on the partitioned table (with partman's revert capture installed), partman idle.
    With `interleave` (every, length), partman is stopped now and then for an idle reference
    (Pauser); its own figures leave those windows out. With `partman_dsn`, partman connects there
    (swap_bench.py: through a latency proxy) while the writer and the monitor use `dsn`."""
    cmd = [sys.executable, "-m", "partman.cli", "convert", str(TABLE), "--column", "event_timestamp",
           "--interval", "year", *(["--sleep", "0"] if full_speed else []), "--yes", "--dsn", partman_dsn or dsn, *extra]
    env = partman_env()
    if burst:
        env["PARTMAN_FAILPOINTS"] = f"convert.swap.before_lock=1:sleep({BURST_WINDOW})"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CHECKPOINT")
    mon = PhaseMonitor(dsn).start()
    burster = Burst(dsn, mon, burst) if burst else None
    with Writer(dsn, pause) as w:
        time.sleep(0.2)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        pauser = Pauser(dsn, proc, mon, *interleave) if interleave else None
        out, err = proc.communicate()
        t1 = time.perf_counter()
        time.sleep(0.2 + after)
    mon.stop()
    if burster:
        burster.join()
    if pauser:
        pauser.join()
    stopped = pauser.stopped() if pauser else []
    if proc.returncode != 0:
        log(out[-3000:])
        log(err[-3000:])
        raise SystemExit(f"partman convert failed with exit code {proc.returncode}")
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT rows_copied, rows_caught_up, longest_batch_ms, swap_lock_ms, swap_attempts, verify, status "
            "FROM partman_catalog.conversion ORDER BY id DESC LIMIT 1"
        ).fetchone()
        total = c.execute("SELECT count(*) FROM public.audit_log_ledger").fetchone()[0]
    return {
        "seconds": t1 - t0,
        "phases": mon.durations(t0, t1),
        "busy": sorted(mon.busy.items(), key=lambda kv: -kv[1]),
        "rows_copied": row[0], "rows_caught_up": row[1], "longest_batch_ms": row[2], "swap_lock_ms": row[3],
        "swap_attempts": row[4], "verify": row[5], "status": row[6], "rows_after": total,
        "writer": w.figures(t0, t1, outside=stopped), "writer_errors": w.errors[:3],
        "writer_after": w.figures(t1 + 0.2, None) if after else None,
        # before the swap the application writes to its plain table, after it to the partitioned
        # one, whose own cost differs (partition routing; a trigger that reads the latest row
        # plans over every partition): each part, and its idle reference, apart
        "writer_before_swap": w.figures(t0, _seen(mon, "swap", t1), outside=stopped),
        "writer_after_swap": w.figures(_seen(mon, "verify", t1), t1, outside=stopped),
        "writer_by_phase": _by_phase(w, mon, t0, t1, stopped),
        # the interleaved idle reference, per phase: (partman running, partman stopped)
        "interleaved": {ph: (w.figures(inside=[(a, b) for name, a, b in mon.spans(t0, t1) if name == ph],
                                       outside=stopped),
                             w.figures(inside=pauser.idle(ph)), len(pauser.idle(ph)))
                        for ph in Pauser.PHASES} if pauser else None,
        "stopped_s": sum(b - a for a, b in stopped),
        "stalls": [(st - t0, ms, ("partman stopped; " if any(a <= st < b for a, b in stopped) else "")
                    + mon.around(st, st + ms / 1000)) for ms, st in
                   sorted(((ms, st) for ms, st in zip(w.latencies, w.when) if t0 <= st < t1 and ms > 100),
                          reverse=True)[:6]],
        "throttle": _events(err, "throttle"),
        "burst": burster.figures() if burster else None,
        "swapped": _swapped(err),
        "copy_ranges": _events(err, "copy_range"),
    }


def _seen(mon: PhaseMonitor, phase: str, default: float) -> float:
    return next((t for name, t in mon.seen if name == phase), default)


def _events(stderr: str, event: str) -> list[dict]:
    """partman's JSON log lines of one event (copy_range: each copy connection's batches, longest
    batch and waits for WAL room; throttle: what each throttle saw)."""
    out = []
    for line in stderr.splitlines():
        if f'"{event}"' in line:
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if found.get("event") == event:
                out.append(found)
    return out


def _swapped(stderr: str) -> dict:
    """partman's own account of its swap (the "swapped" log line): lock, replay and commit ms."""
    return next(iter(_events(stderr, "swapped")), {})


BURST_WINDOW = 3.0  # seconds partman waits before its swap in a burst run


class Burst:
    """Writes `rows` rows, 100 per INSERT through the chain trigger, as soon as the conversion
    reaches its swap phase (the final catch-up window)."""

    def __init__(self, dsn: str, mon: PhaseMonitor, rows: int) -> None:
        self.dsn, self.mon, self.rows = dsn, mon, rows
        self.written = 0
        self.seconds = 0.0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not any(name == "swap" for name, _ in self.mon.seen):
            if not self.mon._t.is_alive():
                return
            time.sleep(0.01)
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench burst") as c:
            t0 = time.perf_counter()
            while self.written < self.rows:
                n = min(100, self.rows - self.written)
                c.execute(
                    "INSERT INTO public.audit_log_ledger (actor, action, payload, prev_hash, current_hash) "
                    "SELECT 'burst', 'write', '{\"b\": 1}', '', '' FROM generate_series(1, %s)", (n,)
                )
                self.written += n
            self.seconds = time.perf_counter() - t0

    def join(self) -> None:
        self._t.join(timeout=120)

    def figures(self) -> dict:
        return {"rows": self.written, "seconds": self.seconds}


def _by_phase(w: Writer, mon: PhaseMonitor, t0: float, t1: float,
              stopped: list[tuple[float, float]] = ()) -> list[tuple[str, dict]]:
    return [(name, w.figures(a, b, outside=stopped)) for name, a, b in mon.spans(t0, t1)]


def idle_baseline(dsn: str, pause: float, seconds: float) -> dict:
    """The writer alone, with the same observer as during a run (the phase monitor polls the
    server every 20 ms, and shares the writer's process), so both figures carry its cost."""
    mon = PhaseMonitor(dsn).start()
    with Writer(dsn, pause) as w:
        time.sleep(seconds)
    mon.stop()
    return w.figures()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg", choices=["15", "16", "18"], default="15")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit and full_page_writes on")
    ap.add_argument("--probe-seconds", type=float, default=30.0,
                    help="length of the writer's idle baseline (and of its run alone after a gentle conversion); "
                         "a 5 s window's p99 is its 5th-slowest insert, one hiccup of the host moves it")
    ap.add_argument("--writer-pause", type=float, default=0.01, help="seconds between the writer's inserts")
    ap.add_argument("--partman-arg", action="append", default=[], help="extra argument for partman convert")
    ap.add_argument("--gentle", action="store_true",
                    help="also (c): the same data re-seeded in a second database, `partman convert` with default settings")
    ap.add_argument("--gentle-only", action="store_true", help="only (c), no limit and no --sleep 0 run")
    ap.add_argument("--swap-burst", type=int, default=0, metavar="N",
                    help="also (d): revert (b), convert again at --sleep 0 with N rows written in the final "
                         "catch-up window (partman held 3 s before its swap), and report the swap's lock")
    ap.add_argument("--interleave", default="60,6", metavar="EVERY,LENGTH",
                    help="(c): stop partman for LENGTH s every EVERY s of its copy and verification, for an "
                         "idle reference taken over the same minutes (default 60,6; 0 = off)")
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a server setting for this run (e.g. shared_buffers=6GB); repeatable")
    args = ap.parse_args()
    every, _, length = args.interleave.partition(",")
    args.interleave_every, args.interleave_length = float(every), float(length or 6)

    server = TempServer(version=args.pg, fsync=args.fsync,
                        settings=dict(s.split("=", 1) for s in args.pg_setting))
    with server:
        dsn = server.dsn()
        data = limit = idle = pm = anchor = None
        if not args.gentle_only:
            with psycopg.connect(dsn, autocommit=True) as conn:
                log(f"{server.server_version()}; seeding {args.rows:,} rows")
                data = setup(conn, args.rows)
                log(f"seeded in {data['seed_s']:.1f}s: {data['total_bytes'] / 2**20:.0f} MiB, ~{data['row_bytes']} B/row")
                log("(a) the limit")
                limit = run_limit(conn)
                if pg_partman_available(conn):
                    log(f"limit: {limit['seconds']:.1f}s; (a2) pg_partman's partition_data_proc on a copy")
                    anchor = run_pg_partman(conn)
                warm(conn)
            log(f"limit: {limit['seconds']:.1f}s; writer idle baseline")
            idle = idle_baseline(dsn, args.writer_pause, args.probe_seconds)
            log("(b) partman convert --sleep 0")
            pm = run_partman(server, dsn, args.writer_pause, args.partman_arg)
            log(f"partman: {pm['seconds']:.1f}s, status {pm['status']}, verify {pm['verify']}")
            report(args, server, data, limit, idle, pm, anchor)
            if args.swap_burst:
                log("(d) revert, then convert again with a burst before the swap")
                undo(dsn)
                bpm = run_partman(server, dsn, args.writer_pause, args.partman_arg, burst=args.swap_burst)
                report_burst(bpm)
        if args.gentle or args.gentle_only:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_gentle")
            gdsn = server.dsn("bench_gentle")
            with psycopg.connect(gdsn, autocommit=True) as conn:
                log(f"(c) seeding {args.rows:,} rows again in database bench_gentle")
                gdata = setup(conn, args.rows)
            gidle = idle_baseline(gdsn, args.writer_pause, args.probe_seconds)
            log("(c) partman convert with default settings")
            gpm = run_partman(server, gdsn, args.writer_pause, args.partman_arg, full_speed=False,
                              after=args.probe_seconds,
                              interleave=(args.interleave_every, args.interleave_length) if args.interleave_every else None)
            log(f"partman (default settings): {gpm['seconds']:.1f}s, status {gpm['status']}")
            report_gentle(args, server, gdata, limit, gidle, gpm)


def report(args: argparse.Namespace, server: TempServer, data: dict, limit: dict, idle: dict, pm: dict,
           anchor: dict | None = None) -> None:
    rows = args.rows
    a, b = limit["seconds"], pm["seconds"]
    phases = " + ".join(f"{name} {sec:.1f}" for name, sec in pm["phases"])
    print()
    print(f"### partman convert vs the limit: {rows:,} rows, {server.server_version()}, "
          f"fsync {'on' if args.fsync else 'off'}, {os.cpu_count()} CPUs"
          + "".join(f", {s}" for s in args.pg_setting))
    print()
    print(f"Data: {data['total_bytes'] / 2**20:.0f} MiB with indexes, ~{data['row_bytes']} B/row, "
          "PK + 3 secondary indexes, yearly partitions 2016..now+3.")
    print()
    print("| method | seconds | rows/s | time vs limit |")
    print("|---|---|---|---|")
    print(f"| (a) limit: one `INSERT INTO <partitioned, unindexed> SELECT`, then indexes, then ANALYZE "
          f"({limit['copy']:.1f} copy + {limit['indexes']:.1f} indexes + {limit['analyze']:.1f} analyze) "
          f"| {a:.1f} | {rows / a:,.0f} | 1.00 |")
    if anchor:
        c = anchor["seconds"]
        print(f"| (a2) pg_partman {anchor['version']} offline: create_parent + `partition_data_proc` (1-year batches, "
              f"p_wait 0, indexes present) + VACUUM ANALYZE ({anchor['setup']:.1f} setup + {anchor['move']:.1f} move + "
              f"{anchor['analyze']:.1f} vacuum analyze) | {c:.1f} | {rows / c:,.0f} | {c / a:.2f} |")
    else:
        print("| (a2) pg_partman | not installed on this server (Debian: postgresql-15-partman) | | |")
    print(f"| (b) `partman convert --sleep 0`, end to end ({phases}) | {b:.1f} | {rows / b:,.0f} | {b / a:.2f} |")
    print()
    w, i = pm["writer"], idle
    print("| figure | value |")
    print("|---|---|")
    print(f"| longest copy transaction (longest_batch_ms) | {pm['longest_batch_ms']:.0f} ms |")
    print(f"| swap exclusive lock (swap_lock_ms), attempts | {pm['swap_lock_ms']:.0f} ms, {pm['swap_attempts']} |")
    print(f"| rows copied / caught up / written by the writer during (b) | {pm['rows_copied']:,} / "
          f"{pm['rows_caught_up']:,} / {w['n']:,} |")
    print(f"| writer insert latency, idle: p50 / p99 / max | {i['p50']:.2f} / {i['p99']:.2f} / {i['max']:.1f} ms |")
    print(f"| writer insert latency, during (b): p50 / p99 / max | {w['p50']:.2f} / {w['p99']:.2f} / {w['max']:.1f} ms |")
    print(f"| p99 during / idle; max stall beyond idle p50 | {w['p99'] / i['p99']:.2f}x; {w['max'] - i['p50']:.0f} ms |")
    print(f"| writer errors during (b) | {w['errors']} {pm['writer_errors'] or ''} |")
    print(f"| verify | {pm['verify']} |")
    by_phase = ", ".join(f"{name} {f['p99']:.1f}/{f['max']:.0f}" for name, f in pm["writer_by_phase"] if f["n"])
    print(f"| writer p99/max (ms) by phase of (b) | {by_phase} |")
    busy = ", ".join(f"{k} {v:.1f}" for k, v in pm["busy"])
    print(f"| partman's backend-seconds by statement (sampled; parallel workers counted) | {busy} |")



def undo(dsn: str, partman_dsn: str | None = None) -> dict:
    """Put the original table back (partman revert) and drop the partitioned copy it keeps.
    Right after a large conversion autovacuum works on the new partitions: partman (a superuser
    here) cancels it before locking. Returns partman's "reverted" log line (its lock_ms). With
    `partman_dsn`, partman connects there (swap_bench.py: through a latency proxy)."""
    env = partman_env()
    proc = subprocess.run([sys.executable, "-m", "partman.cli", "revert", str(TABLE), "--yes", "--dsn",
                           partman_dsn or dsn], capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        log(proc.stderr[-3000:])
        raise SystemExit(f"partman revert failed with exit code {proc.returncode}")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE public.audit_log_ledger_partitioned CASCADE")
        c.execute("VACUUM public.audit_log_ledger")
        c.execute("CHECKPOINT")
        warm(c)
    return next(iter(_events(proc.stderr, "reverted")), {})


def report_burst(pm: dict) -> None:
    b = pm["burst"]
    print()
    print(f"### (d) the swap with {b['rows']:,} rows written in the final catch-up window (`--sleep 0`)")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| rows written in the window (100 per INSERT) | {b['rows']:,} in {b['seconds']:.2f} s |")
    sw = pm.get("swapped") or {}
    # the "swapped" log line's own count; rows_caught_up counts the catch-up rounds before it too
    print(f"| rows replayed under the swap's lock | {sw.get('caught_up', pm['rows_caught_up']):,} |")
    print(f"| **swap's exclusive lock** (target <= 100 ms) | {pm['swap_lock_ms']:.0f} ms, {pm['swap_attempts']} attempt(s) |")
    if "replay_ms" in sw:
        print(f"| of which the final replay; the commit | {sw['replay_ms']:.0f} ms; {sw['commit_ms']:.0f} ms |")
    swap = [f for name, f in pm["writer_by_phase"] if name == "swap" and f["n"]]
    if swap:
        print(f"| application writer during the swap phase: p99 / max | {swap[0]['p99']:.1f} / {swap[0]['max']:.1f} ms |")
    print(f"| end to end (includes the {BURST_WINDOW:.0f} s hold) | {pm['seconds']:.1f} s |")
    print(f"| verify | {pm['verify']} |")


def report_gentle(args: argparse.Namespace, server: TempServer, data: dict, limit: dict | None, idle: dict,
                  pm: dict) -> None:
    rows = args.rows
    w, i = pm["writer"], idle
    phases = " + ".join(f"{name} {sec:.1f}" for name, sec in pm["phases"])
    print()
    print(f"### (c) `partman convert` with default settings (gentle): {rows:,} rows, fsync {'on' if args.fsync else 'off'}")
    print()
    print("| figure | value |")
    print("|---|---|")
    vs = f" ({pm['seconds'] / limit['seconds']:.2f}x the limit)" if limit else ""
    print(f"| end to end | {pm['seconds']:.1f} s, {rows / pm['seconds']:,.0f} rows/s{vs}: {phases} |")
    print(f"| writer insert latency, idle: p50 / p99 / max | {i['p50']:.2f} / {i['p99']:.2f} / {i['max']:.1f} ms |")
    print(f"| writer insert latency, during (c): p50 / p99 / max | {w['p50']:.2f} / {w['p99']:.2f} / {w['max']:.1f} ms |")
    print(f"| **p99 during / idle** (target <= 1.5x) | {w['p99'] / i['p99']:.2f}x |")
    a = pm.get("writer_after")
    if a and a["n"]:
        print(f"| writer alone after (c), on the partitioned table (revert capture on): p50 / p99 / max | "
              f"{a['p50']:.2f} / {a['p99']:.2f} / {a['max']:.1f} ms |")
        b, c = pm["writer_before_swap"], pm["writer_after_swap"]
        if b["n"] and c["n"]:
            print(f"| p99 before the swap (plain table) / idle before; after the swap (partitioned) / alone after | "
                  f"{b['p99']:.2f} / {i['p99']:.2f} ms = {b['p99'] / i['p99']:.2f}x; "
                  f"{c['p99']:.2f} / {a['p99']:.2f} ms = {c['p99'] / a['p99']:.2f}x |")
    for ph, (run, idle_w, n) in (pm.get("interleaved") or {}).items():
        if run["n"] and idle_w["n"]:
            windows = f"{n} window{'s' if n != 1 else ''} of {idle_w['n']:,} inserts"
            print(f"| {ph}: writer p99 with partman running / stopped ({windows}, interleaved); max | "
                  f"{run['p99']:.2f} / {idle_w['p99']:.2f} ms = **{run['p99'] / idle_w['p99']:.2f}x**; "
                  f"{run['max']:.0f} / {idle_w['max']:.0f} ms |")
    if pm.get("stopped_s"):
        print(f"| partman stopped for the interleaved idle (in the end-to-end time; left out of the 'during' figures) | "
              f"{pm['stopped_s']:.0f} s |")
    print(f"| **longest stall beyond the idle p99** (target <= 100 ms) | {max(0.0, w['max'] - i['p99']):.0f} ms |")
    for at, ms, what in pm.get("stalls") or []:
        print(f"| writer stall {ms:.0f} ms at {at:.0f} s: seen meanwhile | {what} |")
    landed = " (a stop for the interleaved idle landed inside a batch)" if pm.get("stopped_s") and \
        pm["longest_batch_ms"] >= 900 * (args.interleave_length or 0) else ""
    print(f"| longest copy transaction; swap lock | {pm['longest_batch_ms']:.0f} ms{landed}; {pm['swap_lock_ms']:.0f} ms |")
    print(f"| writer errors; inserts during (c) | {w['errors']}; {w['n']:,} |")
    by_phase = ", ".join(f"{name} {f['p99']:.1f}/{f['max']:.0f}" for name, f in pm["writer_by_phase"] if f["n"])
    print(f"| writer p99/max (ms) by phase | {by_phase} |")
    print(f"| verify | {pm['verify']} |")
    for t in pm["throttle"]:  # copy, indexes, verify: what each throttle saw (its probes' p99 window by window)
        seen = ", ".join(f"{k} {v}" for k, v in t.items() if k not in ("event", "level", "timestamp", "paces"))
        print(f"| throttle: {t.get('paces', '?')} (log) | {seen} |")


if __name__ == "__main__":
    main()
