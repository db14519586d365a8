"""`partman demo`: the whole story on a throwaway PostgreSQL, with nothing installed but partman.

Starts a server from a wheel, seeds a hash-chained audit ledger spanning several years,
converts it to yearly partitions while application writers keep inserting, runs one
maintenance pass (10-year retention, action drop, so the oldest years go and their removal is
recorded), prints the status and verifies the chain from the recorded anchor, then cleans up
(or, with --keep, leaves the server running and prints how to connect)."""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg

from . import log
from .db import QualifiedName
from .sample_ledger import Ledger, verify_chain

TABLE = QualifiedName("public", "audit_log_ledger")


class _AppWriters:
    """The application: two connections inserting ledger rows through the chain trigger."""

    def __init__(self, dsn: str, threads: int = 2) -> None:
        self.dsn = dsn
        self.stop_flag = threading.Event()
        self.committed = 0
        self.errors: list[str] = []
        self.max_latency = 0.0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        led = Ledger(TABLE)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop_flag.is_set():
                t0 = time.perf_counter()
                try:
                    led.insert(c, actor="nurse", action="chart")
                    with self._lock:
                        self.committed += 1
                        self.max_latency = max(self.max_latency, time.perf_counter() - t0)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).strip())
                time.sleep(0.005)

    def __enter__(self) -> _AppWriters:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for t in self._threads:
            t.join(timeout=10)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli_demo(settings: object, args: argparse.Namespace) -> int:
    from .cli import main
    from .pgtemp import TempServer

    password = secrets.token_urlsafe(18)
    log.add_secret(password)
    rows = max(1000, int(getattr(args, "rows", 200_000)))
    _say("starting a throwaway PostgreSQL")
    server = TempServer(version=None, password=password).init().start()
    dsn = server.dsn()
    try:
        print(server.server_version(), f"on 127.0.0.1:{server.port}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            _say(f"seeding a hash-chained audit ledger: {rows:,} rows from 2014 to today")
            led = Ledger(TABLE)
            led.create(conn)
            now = datetime.now(timezone.utc)
            led.seed(conn, rows, "2014-01-01", (now - timedelta(days=1)).isoformat())
            print(f"{TABLE}: {verify_chain(conn, TABLE)['rows']:,} rows, chain valid: {verify_chain(conn, TABLE)['ok']}")

            _say("partman convert, while the application keeps writing")
            with _AppWriters(dsn) as app:
                time.sleep(0.3)
                rc = main(["convert", str(TABLE), "--column", "event_timestamp", "--interval", "year",
                           "--retention", "10 years", "--retention-action", "drop", "--batch-size", "5000",
                           "--sleep", "0.01", "--yes", "--dsn", dsn])
                time.sleep(0.3)
            print(f"application: {app.committed:,} rows committed during the conversion, {len(app.errors)} errors, "
                  f"slowest insert {app.max_latency * 1000:.0f} ms")
            if rc != 0:
                return rc

            _say("partman maintain (premake, default partition, 10-year retention)")
            rc = main(["maintain", "--dsn", dsn])
            if rc != 0:
                return rc

            _say("partman status")
            main(["status", str(TABLE), "--dsn", dsn])

            _say("verification")
            total = conn.execute("SELECT count(*) FROM audit_log_ledger").fetchone()[0]
            anchor_row = conn.execute(
                "SELECT partition_name, last_row->>'current_hash' FROM partman_catalog.removal "
                "WHERE schema_name = 'public' AND table_name = 'audit_log_ledger' ORDER BY upper_bound DESC LIMIT 1"
            ).fetchone() if _has_removals(conn) else None
            anchor = anchor_row[1] if anchor_row else None
            chain = verify_chain(conn, TABLE, anchor=anchor)
            old_missing = conn.execute(
                "SELECT count(*) FROM audit_log_ledger_old o WHERE NOT EXISTS "
                "(SELECT 1 FROM partman_catalog.removal r WHERE r.table_name = 'audit_log_ledger' "
                " AND o.event_timestamp < r.upper_bound::timestamptz) "
                "AND NOT EXISTS (SELECT 1 FROM audit_log_ledger n WHERE n.id = o.id AND n.event_timestamp = o.event_timestamp)"
            ).fetchone()[0] if _has_removals(conn) else None
            print(f"rows in the partitioned ledger: {total:,}; rows written by the application during the demo: "
                  f"{app.committed:,}")
            if anchor_row:
                print(f"retention removed the years up to {anchor_row[0]}; the remaining chain verifies from the "
                      f"recorded anchor {anchor[:16]}...")
            if old_missing is not None:
                print(f"rows of the original table not in the partitioned one (outside removed years): {old_missing}")
            print(f"hash chain: {chain['rows']:,} rows checked, {chain['broken']} broken -> "
                  f"{'VALID' if chain['ok'] else 'BROKEN'}")
            ok = chain["ok"] and not app.errors and (old_missing in (None, 0))
        if getattr(args, "keep", False):
            _say("the server keeps running (--keep)")
            print(f"connect with: psql 'host={server.root} port={server.port} user=postgres dbname=postgres'")
            print(f"stop it with: {server.stop_command()}")
        return 0 if ok else 1
    finally:
        if not getattr(args, "keep", False):
            server.cleanup()
            print("\nthrowaway server stopped and removed.", file=sys.stderr)


def _has_removals(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('partman_catalog.removal') IS NOT NULL").fetchone()[0]
