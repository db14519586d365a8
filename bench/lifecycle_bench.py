"""Benchmark: maintenance, status, /health, the daemon's memory and the archive, on one server.

    python bench/lifecycle_bench.py [--pg 15] [--archive-mb 256] [--fsync]

In one throwaway server (partman.pgtemp.TempServer):

1. `public.events`, range-partitioned by month: 126 past months + the current one + 3 premade
   = 130 partitions, 200 rows each, registered with `--premake 3 --retention '20 years'`, so a
   maintain pass has nothing to do. Times `maintain()` in-process (the pass itself) and
   `partman maintain` as a command (Python start-up included), after one warm-up pass.
2. `status`: `partman.status.gather()` in-process and `partman status --json` as a command.
3. The daemon (`partman run`): its /health and /livez answered over HTTP (50 requests after its
   first pass), and its resident memory (VmRSS) after it has idled.
4. The archive: `public.arch` (yearly partitions) with one old partition of ~`--archive-mb` MiB
   (~480-byte rows, like the ledger's), registered with retention 5 years and
   `--retention-action archive`, against moto's S3 server (the `test` extra). First
   `COPY (SELECT * FROM <partition>) TO STDOUT (FORMAT csv, HEADER) | gzip` with psql as the
   throughput anchor, then one `partman maintain` that archives it (stream, upload, re-read and
   check, then drop). Peak RSS of that process (getrusage's ru_maxrss) minus the peak of a
   `partman maintain` pass with nothing to do is the archive's memory growth.

It prints a markdown table with the figures and the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from partman.pgtemp import TempServer  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))], xs[-1]


class Partman:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}

    def run(self, *args: str) -> tuple[subprocess.CompletedProcess, float, int]:
        """(result, wall seconds, the process's peak RSS in KiB from wait4's rusage)."""
        import tempfile

        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-m", "partman.cli", *args], env=self.env, cwd=ROOT,
                                 stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read())
        if p.returncode != 0:
            log(f"partman {' '.join(args)} failed: {res.stderr[-1500:]}")
        return res, wall, usage.ru_maxrss  # KiB on Linux

    run_rss = run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------------------ 1, 2

def build_events(conn: psycopg.Connection, past_months: int, premake: int) -> int:
    conn.execute("CREATE TABLE public.events (id bigserial, ts timestamptz NOT NULL, kind text, body text, "
                 "PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    conn.execute("CREATE INDEX ON public.events (ts)")
    first = conn.execute(
        "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => %s)", (past_months,)
    ).fetchone()[0]
    n = 0
    for i in range(past_months + 1 + premake):
        lo = conn.execute("SELECT %s::timestamp + make_interval(months => %s)", (first, i)).fetchone()[0]
        hi = conn.execute("SELECT %s::timestamp + make_interval(months => %s)", (first, i + 1)).fetchone()[0]
        name = f"events_p{lo:%Y%m%d}"
        conn.execute(f"CREATE TABLE public.{name} PARTITION OF public.events FOR VALUES FROM "
                     f"('{lo:%Y-%m-%d} 00:00+00') TO ('{hi:%Y-%m-%d} 00:00+00')")
        if i <= past_months:
            conn.execute(f"INSERT INTO public.events (ts, kind, body) SELECT '{lo:%Y-%m-%d} 00:00+00'::timestamptz "
                         "+ g * interval '1 hour', 'k', md5(g::text) FROM generate_series(1, 200) g")
        n += 1
    conn.execute("CREATE TABLE public.events_default PARTITION OF public.events DEFAULT")
    conn.execute("ANALYZE public.events")
    return n + 1


def bench_maintain(pm: Partman, dsn: str, passes: int) -> dict:
    from partman.lifecycle.maintain import maintain
    from partman.settings import Settings

    r, _, _ = pm.run("maintain", "--json")  # warm-up: anything due is done now
    first = json.loads(r.stdout) if r.returncode == 0 else {}
    settings = Settings(database_url=dsn)
    inproc = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        for _ in range(passes):
            t0 = time.perf_counter()
            summary = maintain(settings, conn=conn)
            inproc.append(time.perf_counter() - t0)
    cli = [pm.run("maintain", "--json")[1] for _ in range(3)]
    return {"inproc": quantiles(inproc), "cli": quantiles(cli), "ok": summary.get("ok"),
            "first": {k: v for k, v in first.items() if k in ("ok", "errors")}}


def bench_status(pm: Partman, dsn: str, n: int) -> dict:
    from partman import status
    from partman.settings import Settings

    settings = Settings(database_url=dsn)
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        status.gather(conn, settings)
        for _ in range(n):
            t0 = time.perf_counter()
            status.gather(conn, settings)
            times.append(time.perf_counter() - t0)
    cli = [pm.run("status", "--json")[1] for _ in range(3)]
    return {"inproc": quantiles(times), "cli": quantiles(cli)}


# ------------------------------------------------------------------------------------------ 3

def bench_daemon(pm: Partman, requests: int, idle_s: float) -> dict:
    port = free_port()
    env = {**pm.env, "PARTMAN_HEALTH_HOST": "127.0.0.1", "PARTMAN_HEALTH_PORT": str(port),
           "PARTMAN_MAINTENANCE_INTERVAL": "1h", "PARTMAN_LOG_FORMAT": "json"}
    p = subprocess.Popen([sys.executable, "-m", "partman.cli", "run"], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    health = json.loads(r.read())
                if health.get("last_pass") or health.get("status") == "ok" or health.get("ok"):
                    break
            except Exception:  # noqa: BLE001 - not up yet, or 503 before the first pass
                pass
            time.sleep(0.25)
        time.sleep(1.0)
        out = {}
        for path in ("/health", "/livez"):
            lat = []
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(base + path, timeout=5) as r:
                        r.read()
                except urllib.error.HTTPError as e:  # a 503 is an answer too
                    e.read()
                lat.append((time.perf_counter() - t0) * 1000)
            out[path] = quantiles(lat)
        rss_busy = rss_kib(p.pid)
        time.sleep(idle_s)
        out["rss_idle_kib"] = rss_kib(p.pid)
        out["rss_after_requests_kib"] = rss_busy
        out["health_doc_keys"] = sorted((health or {}).keys())[:8]
        return out
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# ------------------------------------------------------------------------------------------ 4

ARCH_SEED = """
INSERT INTO public.arch (ts, actor, action, payload)
SELECT %(t0)s::timestamptz + (g %% 360) * interval '1 day' + (g %% 86400) * interval '1 second',
       'user' || (g %% 97), (ARRAY['read', 'write', 'sign', 'export'])[1 + g %% 4],
       jsonb_build_object('resident', g %% 5000, 'note', md5(g::text), 'v', 1,
                          'detail', repeat(md5((g * 7)::text), 6))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""


def build_arch(conn: psycopg.Connection, mib: int) -> tuple[str, int, int]:
    conn.execute("CREATE TABLE public.arch (id bigserial, ts timestamptz NOT NULL, actor text, action text, "
                 "payload jsonb, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    y = conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int").fetchone()[0]
    old = y - 8
    for yy in range(old, y + 4):
        conn.execute(f"CREATE TABLE public.arch_p{yy}0101 PARTITION OF public.arch FOR VALUES FROM "
                     f"('{yy}-01-01 00:00+00') TO ('{yy + 1}-01-01 00:00+00')")
    conn.execute("CREATE TABLE public.arch_default PARTITION OF public.arch DEFAULT")
    rows = mib * 2**20 // 480
    chunk = 500_000
    for lo in range(1, rows + 1, chunk):
        conn.execute(ARCH_SEED, {"t0": f"{old}-01-02 00:00+00", "lo": lo, "hi": min(rows, lo + chunk - 1)})
    conn.execute(f"VACUUM ANALYZE public.arch_p{old}0101")
    part = f"arch_p{old}0101"
    size = conn.execute("SELECT pg_table_size(%s::regclass)", (f"public.{part}",)).fetchone()[0]
    return part, rows, size


def copy_gzip(dsn: str, part: str) -> float:
    t0 = time.perf_counter()
    cmd = (f"psql '{dsn}' -X -q -c \"COPY (SELECT * FROM public.{part}) TO STDOUT (FORMAT csv, HEADER)\" "
           "| gzip > /dev/null")
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - t0


def bench_archive(pm: Partman, server: TempServer, dsn: str, mib: int) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    with psycopg.connect(dsn, autocommit=True) as conn:
        log(f"archive: seeding a ~{mib} MiB partition")
        part, rows, size = build_arch(conn, mib)
        conn.execute("CHECKPOINT")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        bucket = "partman-bench"
        s3env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "PARTMAN_ARCHIVE_BUCKET": bucket, "PARTMAN_ARCHIVE_PREFIX": "partman/"}
        os.environ.update({k: v for k, v in s3env.items() if k.startswith("AWS_")})
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        apm = Partman({**{k: v for k, v in pm.env.items() if k.startswith("PARTMAN_")}, **s3env})
        # baseline: a pass with nothing to do (the table is not registered yet)
        _, idle_wall, idle_peak = apm.run_rss("maintain", "--json")
        log("archive: COPY ... TO STDOUT | gzip")
        copy_gzip(dsn, part)  # warm the cache the same way for both
        anchor = copy_gzip(dsn, part)
        r, _, _ = apm.run("register", "public.arch", "--column", "ts", "--interval", "year", "--premake", "3",
                          "--retention", "5 years", "--retention-action", "archive")
        log("archive: partman maintain (archives the old partition)")
        r, wall, peak = apm.run_rss("maintain", "--json")
        summary = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip().startswith("{") else {}
        removed = (summary.get("tables", {}).get("public.arch", {}).get("retention", {}) or {}).get("removed", [])
        objects = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(Bucket=bucket)
        stored = sum(o["Size"] for o in objects.get("Contents", []))
        return {"partition": part, "rows": rows, "table_bytes": size, "anchor_s": anchor, "archive_wall_s": wall,
                "archive_s": max(1e-6, wall - idle_wall), "peak_kib": peak, "idle_peak_kib": idle_peak,
                "removed": [x.get("partition") for x in removed], "stored_bytes": stored, "rc": r.returncode,
                "err": r.stderr[-500:] if r.returncode else ""}
    finally:
        moto.stop()


# ------------------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg", choices=["15", "16", "18"], default="15")
    ap.add_argument("--fsync", action="store_true")
    ap.add_argument("--past-months", type=int, default=126)
    ap.add_argument("--premake", type=int, default=3)
    ap.add_argument("--archive-mb", type=int, default=256, help="size of the archived partition (the issue: 1024)")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="how long the daemon idles before its RSS is read")
    ap.add_argument("--skip-archive", action="store_true")
    args = ap.parse_args()

    server = TempServer(version=args.pg, fsync=args.fsync)
    with server:
        dsn = server.dsn()
        pm = Partman({"PARTMAN_DATABASE_URL": dsn, "PARTMAN_LOG_FORMAT": "json"})
        with psycopg.connect(dsn, autocommit=True) as conn:
            nparts = build_events(conn, args.past_months, args.premake)
        r, _, _ = pm.run("register", "public.events", "--column", "ts", "--interval", "month",
                         "--premake", str(args.premake), "--retention", "20 years")
        if r.returncode != 0:
            raise SystemExit("register failed")
        log(f"{nparts} partitions registered; maintain")
        mt = bench_maintain(pm, dsn, passes=10)
        log("status")
        st = bench_status(pm, dsn, n=30)
        log("daemon")
        dm = bench_daemon(pm, requests=50, idle_s=args.idle_seconds)
        ar = None if args.skip_archive else bench_archive(pm, server, dsn, args.archive_mb)
        report(args, server, nparts, mt, st, dm, ar)


def report(args, server, nparts, mt, st, dm, ar) -> None:
    print()
    print(f"### Maintenance, status, /health, daemon memory, archive: {server.server_version()}, "
          f"{os.cpu_count()} CPUs, fsync {'on' if args.fsync else 'off'}")
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(f"| one `maintain` pass, {nparts} monthly partitions, nothing due: in-process p50 / max | "
          f"{mt['inproc'][0] * 1000:.0f} / {mt['inproc'][2] * 1000:.0f} ms | <= 1 s |")
    print(f"| the same as a command (`partman maintain`, Python start-up included), p50 | {mt['cli'][0]:.2f} s | |")
    print(f"| `status` from the catalog: in-process p50 / p99 | {st['inproc'][0] * 1000:.1f} / {st['inproc'][1] * 1000:.1f} ms "
          f"| <= 50 ms |")
    print(f"| `partman status --json` as a command, p50 | {st['cli'][0]:.2f} s | |")
    h, lz = dm["/health"], dm["/livez"]
    print(f"| daemon `/health` over HTTP: p50 / p99 / max | {h[0]:.1f} / {h[1]:.1f} / {h[2]:.1f} ms | <= 50 ms |")
    print(f"| daemon `/livez`: p50 / p99 | {lz[0]:.1f} / {lz[1]:.1f} ms | |")
    print(f"| daemon RSS after {args.idle_seconds:.0f} s idle (after the requests) | {dm['rss_idle_kib'] / 1024:.0f} MiB "
          f"({dm['rss_after_requests_kib'] / 1024:.0f} MiB) | <= 100 MB |")
    if ar:
        mib = ar["table_bytes"] / 2**20
        growth = (ar["peak_kib"] - ar["idle_peak_kib"]) / 1024
        print(f"| archive of {ar['partition']} ({mib:.0f} MiB table, {ar['rows']:,} rows) by one `partman maintain` "
              f"| {ar['archive_s']:.1f} s ({mib / ar['archive_s']:.1f} MiB/s), rc {ar['rc']}, removed {ar['removed']} | |")
        print(f"| `COPY ... TO STDOUT` piped to gzip (psql), same partition | {ar['anchor_s']:.1f} s "
              f"({mib / ar['anchor_s']:.1f} MiB/s) | |")
        print(f"| archive throughput vs COPY \\| gzip | {ar['anchor_s'] / ar['archive_s']:.2f}x | >= 0.7x |")
        print(f"| archive peak RSS; growth over a pass with nothing to do | {ar['peak_kib'] / 1024:.0f} MiB; "
              f"{growth:.0f} MiB | <= 64 MB growth |")
        print(f"| stored object(s) | {ar['stored_bytes'] / 2**20:.1f} MiB |  |")
        if ar["err"]:
            print(f"| archive error | `{ar['err']}` | |")


if __name__ == "__main__":
    main()
