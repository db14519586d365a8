"""`partman status [TABLE] [--json]` against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg

from partman.metrics import Metrics
from partman.settings import load_settings

from conftest import PLANTED_PASSWORD


def _setup(conn: psycopg.Connection, partman) -> None:
    conn.execute("CREATE TABLE public.events (id bigserial, ts timestamptz NOT NULL, note text) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE public.events_default PARTITION OF public.events DEFAULT")
    conn.execute(
        "INSERT INTO public.events (ts, note) VALUES ('2019-06-01', 'old'), ('2024-03-01', 'kept'), (now(), 'now')"
    )
    r = partman("register", "public.events", "--column", "ts", "--interval", "year", "--premake", "2",
                "--retention", "3 years", "--retention-action", "drop")
    assert r.code == 0, r.err


def test_status_text_and_json(conn, partman, pg_server):
    _setup(conn, partman)
    # before any pass: rows sit in the default partition, coverage is short
    r = partman("status", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    (t,) = doc["tables"]
    assert t["table"] == "public.events" and t["default_rows"] == 3 and t["partitions_ahead"] == 0
    assert doc["last_maintenance"] is None
    assert partman("maintain").code == 0
    assert partman("hold", "events_p20240101", "--reason", "audit 2024").code == 0
    # a row left in the default partition is reported
    conn.execute("INSERT INTO public.events (ts, note) VALUES ('2099-01-01', 'far future')")

    r = partman("status", "events", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # one JSON document on stdout
    (t,) = doc["tables"]
    names = [p["name"] for p in t["partitions"]]
    assert "events_p20240101" in names and "events_default" in names and "events_p20190101" not in names
    assert t["partitions_ahead"] >= 2 and t["required_ahead"] == 1 and t["covered_until"]
    assert t["default_rows"] == 1
    assert t["holds"] and t["holds"][0]["partition"] == "events_p20240101"
    assert [p for p in t["partitions"] if p["name"] == "events_p20240101"][0]["held"] is True
    assert [r_["partition_name"] for r_ in t["removals"]] == ["events_p20190101"]
    assert t["removals"][0]["action"] == "drop" and t["removals"][0]["row_count"] == 1
    assert t["retention_due"] == []
    assert t["maintenance"]["last_run"] and doc["last_maintenance"]["ok"] is True

    r = partman("status")
    assert r.code == 0, r.err
    for text in ("public.events", "events_p20240101", "DEFAULT", "coverage ahead", "default partition rows: 1",
                 "retention: 3 years", "held", "removed partitions", "events_p20190101", "last maintenance"):
        assert text in r.out, text
    pg_server.outputs.extend([r.out, r.err])
    assert PLANTED_PASSWORD not in r.out + r.err


def test_status_of_an_unregistered_table_fails_clearly(conn, partman):
    conn.execute("CREATE TABLE public.plain (id int)")
    r = partman("status", "public.plain")
    assert r.code == 1
    assert "not registered" in r.err and "Traceback" not in r.err
    r = partman("status", "--json")
    assert r.code == 0 and json.loads(r.out)["tables"] == []


def test_status_of_a_table_whose_conversion_failed_names_it(conn, partman, partman_proc):
    """A table partman once tried to convert has a record, so status answers for it; it says that
    this table is not registered, not that no table is (others are)."""
    conn.execute("CREATE TABLE kept (id bigserial PRIMARY KEY, at date NOT NULL); INSERT INTO kept (at) VALUES (now());"
                 "CREATE TABLE failed (id bigserial PRIMARY KEY, at date NOT NULL); INSERT INTO failed (at) VALUES (now())")
    assert partman("convert", "kept", "--column", "at", "--yes").code == 0
    r = partman_proc("convert", "failed", "--column", "at", "--yes",
                     extra_env={"PARTMAN_FAILPOINTS": "convert.after_copy=1:raise"})
    assert r.code == 1
    r = partman("status", "failed")
    assert r.code == 0, r.err
    assert "public.failed is not registered with partman" in r.out and "No table is registered" not in r.out


def test_status_after_a_conversion_shows_progress_and_old_table(ledger, partman):
    r = partman("convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year",
                "--retention", "10 years", "--drop-old-after", "7 days", "--yes")
    assert r.code == 0, r.err
    r = partman("status", "audit_log_ledger", "--json")
    assert r.code == 0, r.err
    (t,) = json.loads(r.out)["tables"]
    assert t["conversion"]["status"] == "done" and t["conversion"]["progress"] == 1.0
    assert t["conversion"]["rows_copied"] >= 3000
    assert t["old_table"] == "audit_log_ledger_old"
    years = [p["name"] for p in t["partitions"] if not p["default"]]
    assert "audit_log_ledger_p20140101" in years and t["partitions_ahead"] >= 2
    r = partman("status", "audit_log_ledger")
    assert r.code == 0 and "conversion: done" in r.out and "audit_log_ledger_old" in r.out, r.out


def test_an_unqualified_name_is_resolved_through_search_path_as_psql_does(conn, dsn, partman):
    conn.execute("CREATE SCHEMA s1")
    conn.execute("CREATE TABLE s1.events (id bigserial, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    assert partman("register", "s1.events", "--column", "ts", "--interval", "year").code == 0
    r = partman("status", "events")  # search_path "$user", public: psql would not find it
    assert r.code == 1 and "does not exist" in r.err
    assert partman("status", "s1.events").code == 0
    on_path = psycopg.conninfo.make_conninfo(dsn, options="-c search_path=s1,public")
    r = partman("status", "events", "--json", "--dsn", on_path)
    assert r.code == 0 and [t["table"] for t in json.loads(r.out)["tables"]] == ["s1.events"]
    # a registered table dropped behind partman's back keeps its record, found the same way
    conn.execute("DROP TABLE s1.events")
    assert partman("status", "events").code == 1
    r = partman("status", "events", "--json", "--dsn", on_path)
    assert r.code == 0 and [t["table"] for t in json.loads(r.out)["tables"]] == ["s1.events"]


def test_status_says_when_the_old_table_will_be_dropped(conn, partman):
    """`--drop-old-after` is when maintenance drops <table>_old, counted from the verified swap:
    status says when that is (or that it is due), not that it was dropped."""
    conn.execute("CREATE TABLE readings (id bigserial PRIMARY KEY, at date NOT NULL);"
                 "INSERT INTO readings (at) SELECT date '2024-01-01' + g FROM generate_series(1, 50) g")
    r = partman("convert", "readings", "--column", "at", "--drop-old-after", "7 days", "--sleep", "0", "--yes")
    assert r.code == 0, r.err
    verified, drop_at = conn.execute("SELECT verified_at, verified_at + interval '7 days' FROM partman_catalog.managed_table"
                                     ).fetchone()

    def text(table: str) -> str:
        return " ".join(partman("status", table).out.split())  # as one line, whatever the width

    out = text("readings")
    assert f"old table kept: readings_old; maintenance drops it from {drop_at:%Y-%m-%d %H:%M:%S%z} on " \
           "(--drop-old-after, counted from the verified swap)" in out, out
    assert ", dropped" not in out
    (t,) = json.loads(partman("status", "readings", "--json").out)["tables"]
    assert verified is not None and t["old_table_drop_at"] == drop_at.isoformat()
    conn.execute("UPDATE partman_catalog.managed_table SET drop_old_after = interval '1 second', "
                 "verified_at = verified_at - interval '1 minute'")
    out = text("readings")
    assert "old table kept: readings_old; due to be dropped since " in out and "the next maintenance pass drops it" in out, out
    assert partman("maintain").code == 0
    assert "old table kept" not in text("readings")
    conn.execute("CREATE TABLE kept (id bigserial PRIMARY KEY, at date NOT NULL); INSERT INTO kept (at) VALUES ('2024-05-01')")
    assert partman("convert", "kept", "--column", "at", "--sleep", "0", "--yes").code == 0
    assert "old table kept: kept_old (no --drop-old-after: kept until you drop it)" in text("kept")


def test_a_partition_postgresql_has_no_estimate_for_shows_unknown_not_zero(conn, partman):
    """reltuples is -1 for a partition never vacuumed or analyzed, and 0 for one analyzed while empty
    that rows were written to since: neither is a count of 0. Status shows "?" (null in --json)."""
    conn.execute("CREATE TABLE public.metrics (id bigserial, ts timestamptz NOT NULL) PARTITION BY RANGE (ts);"
                 "CREATE TABLE public.metrics_p20240101 PARTITION OF public.metrics FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
                 "CREATE TABLE public.metrics_p20250101 PARTITION OF public.metrics FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');"
                 "CREATE TABLE public.metrics_p20260101 PARTITION OF public.metrics FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"
                 "ANALYZE public.metrics_p20250101, public.metrics_p20260101")  # while empty: reltuples 0
    for year in (2024, 2025):
        conn.execute(f"INSERT INTO metrics (ts) SELECT timestamptz '{year}-01-01' + g * interval '1 minute' "
                     "FROM generate_series(1, 1440) g")
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush of this session's counts
    deadline = time.monotonic() + 10
    while conn.execute("SELECT pg_stat_get_mod_since_analyze('metrics_p20250101'::regclass)").fetchone()[0] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert partman("register", "metrics", "--column", "ts", "--interval", "year", "--premake", "0").code == 0

    r = partman("status", "metrics")
    assert r.code == 0, r.err
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in r.out.splitlines() if line.startswith("│ metrics_p2")]
    assert {c[0]: c[3] for c in cells} == {"metrics_p20240101": "?", "metrics_p20250101": "?", "metrics_p20260101": "0"}, r.out
    text = " ".join(r.out.split())
    assert "rows (est.) ?: PostgreSQL has no estimate for 2 partition(s)" in text and "ANALYZE public.metrics_p20240101" in text
    (t,) = json.loads(partman("status", "metrics", "--json").out)["tables"]
    est = {p["name"]: (p["rows_estimate"], p["rows_estimate_known"]) for p in t["partitions"]}
    assert est["metrics_p20240101"] == (None, False) and est["metrics_p20250101"] == (None, False)
    assert est["metrics_p20260101"] == (0, True)
    # /metrics: the sum says which partitions it leaves out
    scrape = Metrics(load_settings(), lambda fn: (fn(conn), None), lambda: False).render().decode()
    assert 'partman_rows_estimate{table="public.metrics"} 0.0' in scrape, scrape
    assert 'partman_rows_estimate_unknown_partitions{table="public.metrics"} 2.0' in scrape, scrape

    conn.execute("ANALYZE metrics")
    (t,) = json.loads(partman("status", "metrics", "--json").out)["tables"]
    est = {p["name"]: (p["rows_estimate"], p["rows_estimate_known"]) for p in t["partitions"]}
    assert est["metrics_p20240101"] == (1440, True) and est["metrics_p20250101"] == (1440, True)
    assert "no estimate" not in partman("status", "metrics").out
    scrape = Metrics(load_settings(), lambda fn: (fn(conn), None), lambda: False).render().decode()
    assert 'partman_rows_estimate{table="public.metrics"} 2880.0' in scrape, scrape
    assert 'partman_rows_estimate_unknown_partitions{table="public.metrics"} 0.0' in scrape, scrape


def test_status_from_another_terminal_says_how_fast_a_running_conversion_goes(ledger, conn, env, partman):
    """A DBA watching a paced conversion with `partman status` elsewhere sees its rows/s, the time
    left and the throttle's pause (written with the copy's batches); the verification records its
    progress too."""
    points = "convert.copy.after_batch=6:sleep(5),convert.verify.after_range=1:sleep(2.5)"
    proc = subprocess.Popen([sys.executable, "-m", "partman.cli", "convert", "public.audit_log_ledger", "--column",
                             "event_timestamp", "--batch-size", "100", "--yes"],
                            env={**env, "PARTMAN_FAILPOINTS": points}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the copy is held after its sixth batch
            r = partman("status", "--json")
            assert r.code == 0, r.err
            running = json.loads(r.out)["conversions_running"]
            pace = (running[0].get("pace") or {}) if running else {}
            if pace.get("phase") == "copy" and pace["rows"] >= 500:
                break
            assert time.monotonic() < deadline and proc.poll() is None, (r.out, proc.poll())
            time.sleep(0.2)
        assert running[0]["phase"] == "copy" and running[0]["active"]
        assert pace["rows_per_s"] > 0 and pace["eta_s"] > 0 and pace["pause_s"] > 0, pace
        text = partman("status").out
        assert "Conversion of public.audit_log_ledger running: phase copy" in text
        assert "rows/s, about" in text and "left, pause" in text and " ago)" in text, text
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    (verifying,) = conn.execute("SELECT pace FROM partman_catalog.conversion ORDER BY id DESC LIMIT 1").fetchone()
    assert verifying["phase"] == "verify" and verifying["rows"] >= 2000 and verifying["rows_per_s"] > 0, verifying
