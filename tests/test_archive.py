"""Retention with verified S3 archives (moto's server mode over HTTP, the real boto3 path),
removal records, and restore — on a real PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import time
import shlex
import zlib

import psycopg
import pytest
from psycopg import sql

from partman import archive, catalog, failpoints
from partman.db import QualifiedName
from partman.sample_ledger import Ledger, verify_chain
from partman.settings import load_settings

from helpers import LEDGER

pytestmark = pytest.mark.lifecycle

PREFIX = "partman/public.audit_log_ledger/"


def partitions(conn: psycopg.Connection, parent: str = "audit_log_ledger") -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        (parent,))}


def this_year(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int").fetchone()[0]


def keys(s3: dict) -> set[str]:
    out = s3["client"].list_objects_v2(Bucket=s3["bucket"]).get("Contents", [])
    return {o["Key"] for o in out}


def ledger_2012_to_now(conn: psycopg.Connection, partman, rows: int = 1500, action: str = "archive") -> Ledger:
    """A hash-chained ledger partitioned by year (built by hand, as a DBA or another tool would,
    so these tests do not depend on `convert`), registered with retention 10 years."""
    seed = Ledger(QualifiedName("public", "ledger_seed"))
    seed.create(conn)
    now = conn.execute("SELECT (now() - interval '1 day')::text").fetchone()[0]
    seed.seed(conn, rows, "2012-01-01", now)
    y = this_year(conn)
    conn.execute("CREATE TABLE audit_log_ledger (LIKE ledger_seed INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                 "PRIMARY KEY (id, event_timestamp)) PARTITION BY RANGE (event_timestamp)")
    for yy in range(2012, y + 1):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF audit_log_ledger FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"audit_log_ledger_p{yy}0101"), sql.Literal(f"{yy}-01-01 00:00+00"), sql.Literal(f"{yy + 1}-01-01 00:00+00")))
    conn.execute("CREATE TABLE audit_log_ledger_default PARTITION OF audit_log_ledger DEFAULT")
    conn.execute("INSERT INTO audit_log_ledger SELECT * FROM ledger_seed")
    conn.execute("CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON audit_log_ledger "
                 "FOR EACH ROW EXECUTE FUNCTION ledger_seed_append_only()")
    conn.execute("DROP TRIGGER ledger_chain ON ledger_seed")
    assert verify_chain(conn, LEDGER)["ok"]
    r = partman("register", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year",
                "--retention", "10 years", "--retention-action", action)
    assert r.code == 0, r.err
    return Ledger(LEDGER)


def year_counts(conn: psycopg.Connection) -> dict[int, int]:
    return dict(conn.execute(
        "SELECT extract(year FROM event_timestamp AT TIME ZONE 'UTC')::int, count(*) FROM audit_log_ledger GROUP BY 1").fetchall())


def test_contract_retention_example_archive_then_restore(conn, partman, s3):
    ledger_2012_to_now(conn, partman)
    y = this_year(conn)
    counts = year_counts(conn)
    cutoff_year = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    gone = [yy for yy in range(2012, cutoff_year)]  # whole years that ended more than ten years ago
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    removed = summary["tables"]["public.audit_log_ledger"]["retention"]["removed"]
    assert [x["partition"] for x in removed] == [f"audit_log_ledger_p{yy}0101" for yy in gone]
    names = partitions(conn)
    objects = keys(s3)
    for yy in gone:
        part = f"audit_log_ledger_p{yy}0101"
        assert part not in names
        assert f"{PREFIX}{part}.csv.gz" in objects and f"{PREFIX}{part}.manifest.json" in objects
        body = s3["client"].get_object(Bucket=s3["bucket"], Key=f"{PREFIX}{part}.csv.gz")["Body"].read()
        manifest = json.loads(s3["client"].get_object(Bucket=s3["bucket"], Key=f"{PREFIX}{part}.manifest.json")["Body"].read())
        assert isinstance(manifest["row_count"], int) and manifest["row_count"] == counts[yy]
        assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
        assert manifest["bounds"]["lower"].startswith(f"{yy}-01-01")
        assert [c["name"] for c in manifest["columns"]][:2] == ["id", "event_timestamp"]
        assert "CREATE TABLE" in manifest["ddl"] and manifest["first"]["id"] <= manifest["last"]["id"]
        csv_bytes = gzip.decompress(body)
        lines = csv_bytes.decode().splitlines()
        assert lines[0].startswith("id,event_timestamp") and len(lines) == counts[yy] + 1
        if shutil.which("gzip"):  # what a DBA opens it with: one standard gzip member
            assert subprocess.run(["gzip", "-dc"], input=body, capture_output=True, check=True).stdout == csv_bytes
        # compressed (ISA-L's deflate) about as small as zlib's level 6 would: not stored, not level 0
        assert len(body) <= 1.1 * len(zlib.compress(csv_bytes, 6)) + 64
    for yy in range(cutoff_year, y + 4):  # every later year and the future partitions remain
        assert f"audit_log_ledger_p{yy}0101" in names
    # removal records: anchors from which the remaining chain verifies
    recs = conn.execute("SELECT partition_name, row_count, last_row, archive_uri, archive_sha256, action, min_id, max_id "
                        "FROM partman_catalog.removal ORDER BY id").fetchall()
    assert [r[0] for r in recs] == [f"audit_log_ledger_p{yy}0101" for yy in gone]
    assert all(r[5] == "archive" and r[3].startswith(f"s3://{s3['bucket']}/{PREFIX}") for r in recs)
    anchor = recs[-1][2]["current_hash"]
    assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
    assert not verify_chain(conn, LEDGER)["ok"]  # without the anchor the chain start is unexplained
    # idempotent: a second pass changes nothing
    before = (partitions(conn), keys(s3))
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    again = json.loads(r.out)["tables"]["public.audit_log_ledger"]
    assert again["created"] == [] and again["retention"]["removed"] == []
    assert (partitions(conn), keys(s3)) == before
    assert conn.execute("SELECT count(*) FROM partman_catalog.removal").fetchone()[0] == len(gone)
    # status piped to a file names every removed partition's object and sha256 in full
    r = partman("status", "audit_log_ledger")
    assert r.code == 0, r.err
    for name, _, _, uri, sha, *_ in recs:
        assert any(name in line and uri in line and sha in line for line in r.out.splitlines()), (name, r.out)

    # restore the last removed year as a plain table: sha256 and row count checked, chain verifies
    last = f"audit_log_ledger_p{gone[-1]}0101"
    r = partman("restore", "audit_log_ledger", last)
    assert r.code == 0, r.err
    assert "sha256" in r.out
    restored = QualifiedName("public", last)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(restored.ident())).fetchone()[0] == counts[gone[-1]]
    assert last not in partitions(conn)
    prev_anchor = recs[-2][2]["current_hash"] if len(recs) > 1 else None
    assert verify_chain(conn, restored, anchor=prev_anchor)["ok"]
    # the same command again finds its work done (exit 0), and says how to attach the copy
    r = partman("restore", "audit_log_ledger", last)
    assert r.code == 0 and "was restored already" in r.out and "nothing to do" in r.out, r.err
    assert f"audit_log_ledger {last} --attach" in r.out
    # ... unless the copy was changed since: then it is not the archive's any more
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(restored.ident()))
    conn.execute(sql.SQL("CREATE TEMP TABLE kept AS SELECT * FROM {t} WHERE id = (SELECT max(id) FROM {t})").format(
        t=restored.ident()))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (SELECT id FROM kept)").format(restored.ident()))
    r = partman("restore", "audit_log_ledger", last)
    assert r.code == 1 and "was changed since" in r.err and "Nothing was changed" in r.err, r.err
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM kept").format(restored.ident()))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(restored.ident()))
    # restoring over any other table of that name is refused
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS 'a table of my own'").format(restored.ident()))
    r = partman("restore", "audit_log_ledger", last)
    assert r.code == 1 and "already exists" in r.err
    # --attach puts an archived partition back into the table
    first = f"audit_log_ledger_p{gone[0]}0101"
    r = partman("restore", "audit_log_ledger", first, "--attach")
    assert r.code == 0, r.err
    assert first in partitions(conn)
    assert "next maintenance pass archives and removes it again" in r.err
    # a live partition is not "in the way" of a restore: there is nothing to restore
    r = partman("restore", "audit_log_ledger", first)
    assert r.code == 1 and "is a live partition of public.audit_log_ledger" in r.err and "drop" not in r.err


def daily_events_archived(conn: psycopg.Connection, partman, retention: str = "3 days") -> list[str]:
    """The auditor's table: `events` by day (partitions made by hand, the last ten days and today),
    registered with a short archive retention, and one pass: returns the archived partitions."""
    conn.execute("CREATE TABLE events (id bigserial, ts timestamptz NOT NULL, note text, PRIMARY KEY (id, ts)) "
                 "PARTITION BY RANGE (ts)")
    conn.execute("""DO $$ DECLARE d date; BEGIN
        FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 10, (now() AT TIME ZONE 'UTC')::date, '1 day')
        LOOP EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                            'events_p' || to_char(d, 'YYYYMMDD'), d::text || ' 00:00+00', (d + 1)::text || ' 00:00+00');
        END LOOP; END $$""")
    conn.execute("INSERT INTO events (ts, note) SELECT now() - g * interval '2 hours', 'x' FROM generate_series(0, 120) g")
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--retention", retention,
                "--retention-action", "archive")
    assert r.code == 0, r.err
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    return [x["partition"] for x in json.loads(r.out)["tables"]["public.events"]["retention"]["removed"]]


def test_restore_attach_warns_of_the_pass_that_removes_it_again_also_when_it_is_not_due_yet(conn, partman, s3):
    """`partman restore events events_p<a week ago> --attach` on a daily table: retention takes it
    again, at the next pass when it is past the retention now, else at the first pass after the
    moment it will be (its range only gets older). Before, only the first case was warned of, so a
    partition due minutes after the restore went again at the daemon's next pass unannounced."""
    conn.execute("SET TimeZone TO 'UTC'")  # as partman's sessions (PARTMAN_TIMEZONE unset), for the time it names
    removed = daily_events_archived(conn, partman)
    week_ago = conn.execute("SELECT 'events_p' || to_char((now() AT TIME ZONE 'UTC')::date - 7, 'YYYYMMDD')").fetchone()[0]
    assert week_ago in removed and len(removed) == 7, removed
    # past the retention now: the next pass
    r = partman("restore", "events", removed[0], "--attach")
    assert r.code == 0, r.err
    assert "the next maintenance pass archives and removes it again" in r.err, r.err
    assert f"partman hold public.{removed[0]} --reason" in r.err
    # the retention is longer now (re-registered): a week ago's partition is due one hour from now
    retention = conn.execute("SELECT date_trunc('second', now() - (%s::date + 1)::timestamptz + interval '1 hour')::text",
                             (week_ago[len("events_p"):],)).fetchone()[0]
    assert partman("register", "events", "--column", "ts", "--interval", "day", "--retention", retention,
                   "--retention-action", "archive").code == 0
    r = partman("restore", "events", week_ago, "--attach")
    assert r.code == 0, r.err
    when = conn.execute("SELECT to_char((%s::date + 1)::timestamptz + %s::interval, 'YYYY-MM-DD HH24:MI')",
                        (week_ago[len("events_p"):], retention)).fetchone()[0]
    assert f"public.{week_ago} will be older than the retention of public.events ({retention}) from {when}" in r.err, r.err
    assert "the first maintenance pass after that archives and removes it again" in r.err
    assert f"partman hold public.{week_ago} --reason" in r.err
    r = partman("maintain", "--json")  # not yet: the warning's "from" is when
    assert r.code == 0, r.err
    assert week_ago not in [x["partition"] for x in json.loads(r.out)["tables"]["public.events"]["retention"]["removed"]]
    # an hour later (the retention two hours shorter, as good as time passing): taken again, as warned
    shorter = conn.execute("SELECT (%s::interval - interval '2 hours')::text", (retention,)).fetchone()[0]
    assert partman("register", "events", "--column", "ts", "--interval", "day", "--retention", shorter,
                   "--retention-action", "archive").code == 0
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    assert week_ago in [x["partition"] for x in json.loads(r.out)["tables"]["public.events"]["retention"]["removed"]]


def test_failed_upload_and_corrupted_object_keep_the_partition(conn, partman, s3, monkeypatch):
    ledger_2012_to_now(conn, partman, rows=600)
    cutoff_year = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    gone = [f"audit_log_ledger_p{yy}0101" for yy in range(2012, cutoff_year)]
    # 0. no bucket set: nothing is archived nor dropped; the reason is said once, naming every partition
    monkeypatch.delenv("PARTMAN_ARCHIVE_BUCKET", raising=False)
    r = partman("maintain")
    assert r.code == 1 and set(gone) <= partitions(conn)
    error = conn.execute("SELECT maintenance_last_error FROM partman_catalog.managed_table").fetchone()[0]
    assert error.count("no bucket is configured") == 1 and all(name in error for name in gone), error
    # 1. the bucket does not exist: every upload fails, nothing is dropped, the failure is reported
    monkeypatch.setenv("PARTMAN_ARCHIVE_BUCKET", "no-such-bucket-partman")
    r = partman("maintain", "--json")
    assert r.code == 1
    assert "Archive upload" in r.err and "NoSuchBucket" in r.err
    assert set(gone) <= partitions(conn)
    err = conn.execute("SELECT maintenance_last_error, maintenance_last_run FROM partman_catalog.managed_table").fetchone()
    assert "NoSuchBucket" in err[0]
    assert conn.execute("SELECT count(*) FROM partman_catalog.removal").fetchone()[0] == 0
    monkeypatch.setenv("PARTMAN_ARCHIVE_BUCKET", s3["bucket"])
    # 2. uploaded, then the pass dies before verifying; meanwhile the object gets corrupted
    failpoints.arm("archive.verify", "raise", 1)
    try:
        r = partman("maintain")
    finally:
        failpoints.disarm()
    assert r.code == 1 and gone[0] in partitions(conn)  # the others went through
    assert not set(gone[1:]) & partitions(conn)
    key = f"{PREFIX}{gone[0]}.csv.gz"
    assert key in keys(s3)
    s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body=b"\x1f\x8b corrupted")
    r = partman("maintain")
    assert r.code == 1
    assert "verification" in r.err
    assert gone[0] in partitions(conn)
    assert f"{PREFIX}{gone[0]}.manifest.json" not in keys(s3)
    # 3. the next pass uploads it again (same key, no duplicate object) and removes it
    r = partman("maintain")
    assert r.code == 0, r.err
    assert not set(gone) & partitions(conn)
    objects = [k for k in keys(s3) if k.startswith(PREFIX)]
    assert len(objects) == 2 * len(gone)
    body = s3["client"].get_object(Bucket=s3["bucket"], Key=key)["Body"].read()
    manifest = json.loads(s3["client"].get_object(Bucket=s3["bucket"], Key=f"{PREFIX}{gone[0]}.manifest.json")["Body"].read())
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert conn.execute("SELECT maintenance_last_error FROM partman_catalog.managed_table").fetchone()[0] is None


def test_corrupted_object_fails_restore(conn, partman, s3):
    ledger_2012_to_now(conn, partman, rows=400)
    assert partman("maintain").code == 0
    part = "audit_log_ledger_p20120101"
    key = f"{PREFIX}{part}.csv.gz"
    body = s3["client"].get_object(Bucket=s3["bucket"], Key=key)["Body"].read()
    s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body=body[:-8] + b"\0" * 8)
    r = partman("restore", "audit_log_ledger", part)
    assert r.code == 1 and "sha256" in r.err and "Nothing was restored" in r.err
    assert conn.execute("SELECT to_regclass('public.audit_log_ledger_p20120101')").fetchone()[0] is None


def orders_with_a_generated_column_archived(conn: psycopg.Connection, partman) -> list[str]:
    """orders (total = qty * price, stored) with its 2012 partition archived; returns its rows as text."""
    conn.execute(
        """
        CREATE TABLE orders (id bigint NOT NULL, ts timestamptz NOT NULL, qty int NOT NULL, price numeric NOT NULL,
            total numeric GENERATED ALWAYS AS (qty * price) STORED, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts);
        CREATE TABLE orders_p20120101 PARTITION OF orders FOR VALUES FROM ('2012-01-01 00:00+00') TO ('2013-01-01 00:00+00');
        CREATE TABLE orders_default PARTITION OF orders DEFAULT;
        INSERT INTO orders (id, ts, qty, price)
            SELECT g, timestamptz '2012-01-01' + g * interval '1 hour', g % 7, g / 3.0 FROM generate_series(1, 500) g;
        """
    )
    before = conn.execute("SELECT array_agg(o::text ORDER BY id) FROM orders o").fetchone()[0]
    r = partman("register", "orders", "--column", "ts", "--interval", "year", "--retention", "10 years",
                "--retention-action", "archive")
    assert r.code == 0, r.err
    assert partman("maintain").code == 0
    assert "orders_p20120101" not in partitions(conn, "orders")
    return before


def test_a_partition_with_generated_columns_is_restored_and_attached(conn, partman, s3):
    """A stored generated column cannot be written by COPY: the archive is loaded beside the new
    partition, and the values PostgreSQL computes must equal the archived ones."""
    before = orders_with_a_generated_column_archived(conn, partman)
    r = partman("restore", "orders", "orders_p20120101", "--attach")
    assert r.code == 0, r.err
    assert "orders_p20120101" in partitions(conn, "orders")
    assert conn.execute("SELECT attgenerated FROM pg_attribute WHERE attrelid = 'orders_p20120101'::regclass "
                        "AND attname = 'total'").fetchone()[0] == "s"
    assert conn.execute("SELECT array_agg(o::text ORDER BY id) FROM orders o").fetchone()[0] == before


def test_a_restored_partition_is_made_as_maintain_makes_one(conn, partman, s3):
    """Attached again, a restored partition is like the partitions `maintain` makes: the newest
    partition's storage options, column statistics targets, extended statistics and replica
    identity, the parent's column compression."""
    orders_with_a_generated_column_archived(conn, partman)
    newest = conn.execute("SELECT max(inhrelid::regclass::text) FROM pg_inherits WHERE inhparent = 'orders'::regclass "
                          "AND inhrelid::regclass::text <> 'orders_default'").fetchone()[0]
    conn.execute(sql.SQL(
        "ALTER TABLE orders ALTER COLUMN price SET COMPRESSION pglz; ALTER TABLE {n} SET (fillfactor = 80); "
        "ALTER TABLE {n} ALTER COLUMN qty SET STATISTICS 300; CREATE STATISTICS newest_qty_price ON qty, price FROM {n}; "
        "ALTER TABLE {n} REPLICA IDENTITY FULL").format(n=sql.Identifier(newest)))
    r = partman("restore", "orders", "orders_p20120101", "--attach")
    assert r.code == 0, r.err
    got = conn.execute(
        "SELECT c.reloptions, c.relreplident, (SELECT attstattarget FROM pg_attribute WHERE attrelid = c.oid "
        "AND attname = 'qty'), (SELECT attcompression FROM pg_attribute WHERE attrelid = c.oid AND attname = 'price'), "
        "(SELECT array_agg(stxname) FROM pg_statistic_ext WHERE stxrelid = c.oid) "
        "FROM pg_class c WHERE c.oid = 'orders_p20120101'::regclass").fetchone()
    assert got == (["fillfactor=80"], "f", 300, "p", ["orders_p20120101_qty_price_stat"])


def test_a_generated_column_that_computes_other_values_now_is_refused(conn, partman, s3):
    orders_with_a_generated_column_archived(conn, partman)
    conn.execute("ALTER TABLE orders DROP COLUMN total")
    conn.execute("ALTER TABLE orders ADD COLUMN total numeric GENERATED ALWAYS AS (qty * price * 2) STORED")
    r = partman("restore", "orders", "orders_p20120101")
    assert r.code == 1 and "expressions changed" in r.err and "Nothing was restored" in r.err, r.err
    assert "Traceback" not in r.err
    assert conn.execute("SELECT to_regclass('public.orders_p20120101')").fetchone()[0] is None


def test_archive_memory_is_bounded_by_the_part_size(conn, dsn, s3):
    conn.execute("CREATE TABLE big (id bigserial, ts timestamptz NOT NULL, blob text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE big_p20100101 PARTITION OF big FOR VALUES FROM ('2010-01-01 00:00+00') TO ('2011-01-01 00:00+00')")
    # ~12 MB of barely compressible text: several 5 MiB parts after gzip
    conn.execute("INSERT INTO big (ts, blob) SELECT '2010-02-01'::timestamptz + g * interval '1 second', "
                 "md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) "
                 "FROM generate_series(1, 90000) g")
    s = load_settings({"database_url": dsn, "archive_part_size_mb": 5})
    catalog.ensure(conn, s)
    from partman.lifecycle.registry import register
    from partman.partitions import list_partitions

    mt = register(conn, s, "big", column="ts", interval="year")
    part = [p for p in list_partitions(conn, QualifiedName("public", "big"), "timestamptz") if p.name == "big_p20100101"][0]
    key = archive.object_key(s, "public", "big", part.name)
    sha, size, info, peak = archive._upload(conn, s, archive.client(s), s3["bucket"], key, mt, part)
    assert size > archive.MIN_PART  # larger than the buffer: at least two parts
    assert peak < archive.MIN_PART + 1024 * 1024  # never more than one part (plus a COPY chunk) in memory
    assert info["row_count"] == 90000
    got_sha, got_size, records = archive.read_and_check(archive.client(s), s3["bucket"], key)
    assert (got_sha, got_size, records) == (sha, size, 90000)


def _ev_with_2012_archived(conn, partman) -> None:
    """public.ev by year with a default partition, retention 10 years (archive): 2012's 20 rows
    archived and removed by the first pass."""
    conn.execute("CREATE TABLE ev (id bigserial, ts timestamptz NOT NULL, note text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
    conn.execute("INSERT INTO ev (ts, note) SELECT '2012-03-01'::timestamptz + g * interval '1 day', 'first' FROM generate_series(1, 20) g")
    r = partman("register", "ev", "--column", "ts", "--interval", "year", "--retention", "10 years",
                "--retention-action", "archive", "--premake", "1")
    assert r.code == 0, r.err
    r = partman("maintain", "--json")  # moves the rows out of the default, then archives 2012
    assert r.code == 0, r.err
    res = json.loads(r.out)["tables"]["public.ev"]
    assert res["default_rows_moved"] == 20
    assert [x["partition"] for x in res["retention"]["removed"]] == ["ev_p20120101"]


def test_late_rows_are_archived_without_overwriting_the_first_archive(conn, partman, s3, monkeypatch):
    monkeypatch.setenv("PARTMAN_ARCHIVE_SSE", "AES256")
    _ev_with_2012_archived(conn, partman)
    first_key = "partman/public.ev/ev_p20120101.csv.gz"
    head = s3["client"].head_object(Bucket=s3["bucket"], Key=first_key)
    assert head["ServerSideEncryption"] == "AES256"
    first_body = s3["client"].get_object(Bucket=s3["bucket"], Key=first_key)["Body"].read()
    # a late row for 2012 lands in the default partition; the next pass archives it separately
    conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-24', 'late')")
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["tables"]["public.ev"]["retention"]["removed"]
    assert len(removed) == 1 and removed[0]["rows"] == 1 and removed[0]["uri"] != f"s3://{s3['bucket']}/{first_key}"
    assert s3["client"].get_object(Bucket=s3["bucket"], Key=first_key)["Body"].read() == first_body
    recs = conn.execute("SELECT row_count, archive_uri FROM partman_catalog.removal ORDER BY id").fetchall()
    assert [r[0] for r in recs] == [20, 1] and recs[0][1] != recs[1][1]
    # restore brings back the latest archive of that name
    r = partman("restore", "ev", "ev_p20120101")
    assert r.code == 0, r.err
    assert conn.execute("SELECT note FROM ev_p20120101").fetchall() == [("late",)]
    # and says that an earlier archive of the same range holds 20 more rows, and how to load them
    first_uri = f"s3://{s3['bucket']}/{first_key}"
    assert "ev_p20120101 was archived 2 times; this restored the latest archive" in r.err, r.err
    assert f"{first_uri} (20 rows" in r.err
    load = re.search(r"`(aws s3 cp .*?)`", r.err)
    argv = shlex.split(load.group(1)) if load else []  # as a shell splits it
    assert argv[:5] == ["aws", "s3", "cp", first_uri, "-"] and argv[5:9] == ["|", "gunzip", "|", "psql"], r.err
    assert argv[9] == "-c" and argv[10].startswith("\\copy "), argv
    with conn.cursor().copy(argv[10][1:]) as cp:  # the advice's \copy, as psql would run it
        cp.write(gzip.decompress(first_body))
    assert conn.execute("SELECT note, count(*) FROM ev_p20120101 GROUP BY 1 ORDER BY 1").fetchall() == [
        ("first", 20), ("late", 1)]


def test_killed_archive_resumes_without_a_second_upload(conn, partman, partman_proc, s3):
    conn.execute("CREATE TABLE ev (id bigserial, ts timestamptz NOT NULL, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE ev_p20100101 PARTITION OF ev FOR VALUES FROM ('2010-01-01 00:00+00') TO ('2011-01-01 00:00+00')")
    conn.execute("INSERT INTO ev (ts) SELECT '2010-03-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 100) g")
    assert partman("register", "ev", "--column", "ts", "--interval", "year", "--retention", "10 years",
                   "--retention-action", "archive", "--premake", "0").code == 0
    r = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": "archive.detach=1:kill"})
    assert r.code != 0
    key = "partman/public.ev/ev_p20100101.csv.gz"
    etag = s3["client"].head_object(Bucket=s3["bucket"], Key=key)["ETag"]
    assert conn.execute("SELECT state FROM partman_catalog.archive").fetchone()[0] == "manifest"
    assert conn.execute("SELECT count(*) FROM ev_p20100101").fetchone()[0] == 100  # still there
    uploads_before = s3["client"].list_objects_v2(Bucket=s3["bucket"])["KeyCount"]
    r = partman("maintain")
    assert r.code == 0, r.err
    assert conn.execute("SELECT to_regclass('public.ev_p20100101')").fetchone()[0] is None
    assert s3["client"].head_object(Bucket=s3["bucket"], Key=key)["ETag"] == etag
    assert s3["client"].list_objects_v2(Bucket=s3["bucket"])["KeyCount"] == uploads_before == 2
    assert conn.execute("SELECT state FROM partman_catalog.archive").fetchone()[0] == "removed"


def test_converted_ledger_end_to_end(conn, partman, s3):
    """`partman convert` registers the retention; `partman maintain` applies it."""
    led = Ledger(LEDGER)
    led.create(conn)
    now = conn.execute("SELECT (now() - interval '1 day')::text").fetchone()[0]
    led.seed(conn, 800, "2012-01-01", now)
    r = partman("convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year",
                "--retention", "10 years", "--retention-action", "archive", "--sleep", "0", "--yes")
    assert r.code == 0, r.err
    counts = year_counts(conn)
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["tables"]["public.audit_log_ledger"]["retention"]["removed"]
    assert removed and removed[0]["partition"] == "audit_log_ledger_p20120101"
    assert removed[0]["rows"] == counts[2012]
    anchor = conn.execute("SELECT last_row->>'current_hash' FROM partman_catalog.removal ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
    led.insert(conn)  # the application keeps appending, chained onto the remaining rows
    assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
    assert conn.execute("SELECT to_regclass('public.audit_log_ledger_old')").fetchone()[0] is not None


def test_restore_attach_takes_in_the_rows_written_for_its_range_since(conn, partman, s3):
    """A late row for 2012 waits in the default partition when 2012 is restored with --attach:
    the attach would fail on it ("updated partition constraint for default partition would be
    violated"), leaving a plain table that every later pass trips over. The restore moves it into
    the partition in the attach's transaction."""
    _ev_with_2012_archived(conn, partman)
    conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-24', 'late')")
    r = partman("restore", "ev", "ev_p20120101", "--attach")
    assert r.code == 0, r.err
    assert "with 1 rows written for its range since, moved in from the default partition" in r.out, r.out
    assert "ev_p20120101" in partitions(conn, "ev")
    assert conn.execute("SELECT note, count(*) FROM ONLY ev_p20120101 GROUP BY 1 ORDER BY 1").fetchall() == [
        ("first", 20), ("late", 1)]
    assert conn.execute("SELECT count(*) FROM ev_default").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'partman_range'").fetchone()[0] == 0


def test_a_pass_names_the_table_that_takes_a_partition_name_and_what_to_do(conn, partman, s3):
    """Restored without --attach, 2012 is a plain table named ev_p20120101; a late row for 2012 then
    needs that name for its partition. Each pass says so and what to do, rather than failing on
    'relation already exists'; following its advice (drop the copy, restore with --attach) ends it."""
    _ev_with_2012_archived(conn, partman)
    assert partman("restore", "ev", "ev_p20120101").code == 0
    conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-24', 'late')")
    r = partman("maintain")
    assert r.code == 1
    assert "public.ev_p20120101 (1 rows of [2012-01-01" in r.err, r.err
    assert "is no partition of public.ev" in r.err and "--attach" in r.err and "never drop it" in r.err, r.err
    assert "already exists" not in r.err
    r = partman("restore", "ev", "ev_p20120101", "--attach")  # as the advice says: the restored copy is attached
    assert r.code == 0, r.err
    assert "attached public.ev_p20120101 to public.ev: the copy of" in r.out and "with 1 rows written" in r.out, r.out
    assert conn.execute("SELECT count(*) FROM ONLY ev_p20120101").fetchone()[0] == 21
    assert "ev_p20120101" in partitions(conn, "ev")
    assert partman("maintain").code == 0


def test_a_removal_within_the_same_second_as_the_last_gets_its_own_archive_key(conn, partman, s3):
    """Removed, filled again by late rows and removed again: each removal's archive gets its own key,
    `<partition>.<UTC second>.csv.gz`. Two such removals within one second took the same key, and
    the second overwrote the first's rows (found by a random-kill soak: rows lost, chain broken)."""
    _ev_with_2012_archived(conn, partman)
    s = load_settings()
    with conn.transaction():  # one now(): the second the key is stamped with
        stamp = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS')").fetchone()[0]
        folder = f"s3://{s3['bucket']}/partman/public.ev/"
        conn.execute("INSERT INTO partman_catalog.removal (schema_name, table_name, partition_name, row_count, action, "
                     "archive_uri, removed_by) VALUES ('public', 'ev', 'ev_p20120101', 1, 'archive', %s, 'test')",
                     (f"{folder}ev_p20120101.{stamp}.csv.gz",))
        key = archive._free_key(conn, s, archive.client(s), s3["bucket"], "public", "ev", "ev_p20120101")
    assert key == f"partman/public.ev/ev_p20120101.{stamp}-2.csv.gz"


def test_an_archive_given_up_after_its_upload_is_uploaded_again_under_its_own_key(conn, partman, s3):
    """Rows written to a partition after its upload: the attempt is given up and the next pass
    archives it again. It overwrites its own object rather than leaving it behind under a new name
    (a re-archive's keys carry the second: each retry left one more object holding rows no removal
    record names)."""
    _ev_with_2012_archived(conn, partman)
    conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-24', 'late')")
    failpoints.arm("archive.after_upload", "raise")
    try:
        assert partman("maintain").code == 1  # 2012 made again for the late row, uploaded, then stopped
    finally:
        failpoints.disarm()
    conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-25', 'later')")  # after the upload
    r = partman("maintain")
    assert r.code == 1 and "rows were written to it after the upload" in r.err, r.err
    time.sleep(1.1)  # the next attempt's second differs from the first's
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["tables"]["public.ev"]["retention"]["removed"]
    assert [x["rows"] for x in removed] == [2]
    uris = [u for (u,) in conn.execute("SELECT archive_uri FROM partman_catalog.removal ORDER BY id")]
    objects = sorted(k for k in keys(s3) if k.endswith(".csv.gz"))
    assert objects == sorted(u.split(f"s3://{s3['bucket']}/", 1)[1] for u in uris), (objects, uris)
    assert not s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads")


def test_quick_removals_of_one_range_each_keep_their_own_verified_archive(conn, partman, s3):
    """Three passes in quick succession, a late row for 2012 before each: every removal's record
    names its own object, and each object still has the sha256 its record says (none overwritten)."""
    _ev_with_2012_archived(conn, partman)
    for n in range(3):
        conn.execute("INSERT INTO ev (ts, note) VALUES ('2012-12-24', %s)", (f"late {n}",))
        assert partman("maintain").code == 0
    recs = conn.execute("SELECT archive_uri, archive_sha256, row_count FROM partman_catalog.removal ORDER BY id").fetchall()
    assert [r[2] for r in recs] == [20, 1, 1, 1] and len({r[0] for r in recs}) == 4
    for uri, sha, _rows in recs:
        body = s3["client"].get_object(Bucket=s3["bucket"], Key=uri.split(f"s3://{s3['bucket']}/", 1)[1])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha, uri


def test_restore_attach_run_again_attaches_the_copy_an_interrupted_one_left(conn, dsn, partman, s3, monkeypatch):
    """`restore --attach` stopped between its restore and its attach (killed, or the attach was
    blocked) left a plain table: the same command again attaches that copy instead of refusing a
    table in the way; a copy changed since is not taken for the archive's."""
    _ev_with_2012_archived(conn, partman)
    blocker = psycopg.connect(dsn, autocommit=False)
    try:
        blocker.execute("LOCK TABLE ev_default IN ACCESS SHARE MODE")  # the attach needs it exclusively
        monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT_MS", "50")
        monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "2")
        r = partman("restore", "ev", "ev_p20120101", "--attach")
        monkeypatch.delenv("PARTMAN_LOCK_TIMEOUT_MS")
        monkeypatch.delenv("PARTMAN_LOCK_RETRIES")
        assert r.code == 1 and "run `partman restore public.ev ev_p20120101 --attach` again" in r.err, r.err
    finally:
        blocker.close()
    assert "ev_p20120101" not in partitions(conn, "ev")
    r = partman("restore", "ev", "ev_p20120101", "--attach")
    assert r.code == 0, r.err
    assert "the copy of s3://" in r.out and "restored earlier (20 rows)" in r.out, r.out
    assert "ev_p20120101" in partitions(conn, "ev")
    assert conn.execute("SELECT obj_description('ev_p20120101'::regclass, 'pg_class')").fetchone()[0] is None
    # a copy changed since its restore is not attached as the archive's
    conn.execute("ALTER TABLE ev DETACH PARTITION ev_p20120101")
    conn.execute("COMMENT ON TABLE ev_p20120101 IS %s" % sql.Literal(
        'partman:restored {"table": ["public", "ev"], "uri": "s3://b/k.csv.gz", "sha256": "x", "rows": 19, '
        '"lower": "2012-01-01", "upper": "2013-01-01"}'
    ).as_string(conn))
    r = partman("restore", "ev", "ev_p20120101", "--attach")
    assert r.code == 1 and "with 19 rows but holds 20 now" in r.err, r.err


def test_a_restored_copy_is_attached_only_to_the_table_its_archive_came_from(conn, partman, s3):
    """A plain table restored from one table's archive is not attached to another table of the
    same shape that happens to be named in the command (the rows would join the wrong ledger)."""
    _ev_with_2012_archived(conn, partman)
    conn.execute("CREATE TABLE twin (id bigserial, ts timestamptz NOT NULL, note text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE twin_default PARTITION OF twin DEFAULT")
    assert partman("register", "twin", "--column", "ts", "--interval", "year").code == 0
    r = partman("restore", "ev", "ev_p20120101")
    assert r.code == 0, r.err
    r = partman("restore", "twin", "ev_p20120101", "--attach")
    assert r.code == 1, r.out
    assert "a restored copy of an archive of public.ev" in r.err and "partman restore public.ev ev_p20120101 --attach" in r.err, r.err
    assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'ev_p20120101'::regclass").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM twin").fetchone()[0] == 0
    r = partman("restore", "twin", "ev_p20120101")  # without --attach: no advice to attach it to twin
    assert r.code == 1 and "--attach`" in r.err and "restore public.twin" not in r.err, r.err
    r = partman("restore", "ev", "ev_p20120101", "--attach")
    assert r.code == 0, r.err
    assert "ev_p20120101" in partitions(conn, "ev")
