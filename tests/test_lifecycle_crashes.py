"""The crash matrix of the partition lifecycle: the real `partman maintain` is SIGKILLed at every
lifecycle / archive failpoint while an application keeps appending to a hash-chained ledger,
then run again. After the rerun: every committed row is present exactly once (in the table or,
for archived partitions, in exactly one verified S3 object), the chain verifies from the last
removal record's anchor, no partition was ever dropped without a verified archive (checked
right after the kill too), removal records are right, and nothing is left behind (staging
tables, unfinished catalog rows, unfinished multipart uploads)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import time

import psycopg
import pytest
from psycopg import sql

from partman.db import QualifiedName
from partman.sample_ledger import Ledger, verify_chain

from helpers import LEDGER, Writers, ids, make_ledger, matrix_entry, relations_in

pytestmark = pytest.mark.lifecycle

PREFIX = "partman/public.audit_log_ledger/"
SKIP_YEAR = 2019  # no partition: its rows sit in the default partition until maintain moves them
ROWS = 600


def partitions(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_log_ledger'::regclass")}


def this_year(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int").fetchone()[0]


def build(conn: psycopg.Connection, partman, action: str) -> dict:
    """A hash-chained ledger partitioned by year from 2012 to this year, one year's rows in the
    default partition, no future partitions, registered with premake 3 and retention 10 years."""
    seed = Ledger(QualifiedName("public", "ledger_seed"))
    seed.create(conn)
    now = conn.execute("SELECT (now() - interval '1 day')::text").fetchone()[0]
    seed.seed(conn, ROWS, "2012-01-01", now)
    y = this_year(conn)
    conn.execute("CREATE TABLE audit_log_ledger (LIKE ledger_seed INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                 "PRIMARY KEY (id, event_timestamp)) PARTITION BY RANGE (event_timestamp)")
    for yy in range(2012, y + 1):
        if yy == SKIP_YEAR:
            continue
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF audit_log_ledger FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"audit_log_ledger_p{yy}0101"), sql.Literal(f"{yy}-01-01 00:00+00"),
            sql.Literal(f"{yy + 1}-01-01 00:00+00")))
    conn.execute("CREATE TABLE audit_log_ledger_default PARTITION OF audit_log_ledger DEFAULT")
    conn.execute("INSERT INTO audit_log_ledger SELECT * FROM ledger_seed")
    conn.execute("DROP TRIGGER ledger_chain ON ledger_seed")
    # the application's triggers: chain every insert onto the table's last row; refuse changes
    Ledger(LEDGER).add_triggers(conn, sequence="public.ledger_seed_id_seq")
    assert verify_chain(conn, LEDGER)["ok"]
    r = partman("register", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year",
                "--premake", "3", "--retention", "10 years", "--retention-action", action)
    assert r.code == 0, r.err
    cutoff_year = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    by_year: dict[int, set[int]] = {}
    for i, yy in conn.execute("SELECT id, extract(year FROM event_timestamp AT TIME ZONE 'UTC')::int FROM ledger_seed"):
        by_year.setdefault(yy, set()).add(i)
    assert by_year.get(SKIP_YEAR) and conn.execute("SELECT count(*) FROM audit_log_ledger_default").fetchone()[0] > 0
    return {"y": y, "cutoff_year": cutoff_year, "by_year": by_year,
            "due": [f"audit_log_ledger_p{yy}0101" for yy in range(2012, cutoff_year)],
            "due_years": list(range(2012, cutoff_year)),
            "public_before": relations_in(conn, "public")}


def objects(s3: dict) -> dict[str, bytes]:
    c, b = s3["client"], s3["bucket"]
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=b).get("Contents", [])]
    return {k: c.get_object(Bucket=b, Key=k)["Body"].read() for k in keys}


def unfinished_uploads(s3: dict) -> list[str]:
    r = s3["client"].list_multipart_uploads(Bucket=s3["bucket"])
    return [u["Key"] for u in r.get("Uploads", [])]


def removals(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM partman_catalog.removal ORDER BY id").fetchall()


def check_nothing_dropped_unverified(conn: psycopg.Connection, s3: dict | None, w: dict, action: str) -> None:
    """At any moment (right after a kill included): a due partition that is gone from the table
    has exactly one removal record and, for archive, a stored object whose sha256 matches it."""
    parts = partitions(conn)
    recs = {r["partition_name"]: r for r in removals(conn)} if _catalog(conn) else {}
    store = objects(s3) if s3 is not None else {}
    for name in w["due"]:
        if name in parts:
            continue
        assert name in recs, f"{name} is gone without a removal record"
        if action == "archive":
            r = recs[name]
            key = r["archive_uri"].split("/", 3)[3]
            assert key in store, f"{name} dropped, its archive {key} is missing"
            assert hashlib.sha256(store[key]).hexdigest() == r["archive_sha256"]
            manifest = json.loads(store[key[: -len(".csv.gz")] + ".manifest.json"])
            assert manifest["sha256"] == r["archive_sha256"] and manifest["row_count"] == r["row_count"]


def _rows_hidden(conn: psycopg.Connection, w: dict) -> int:
    """Seed rows that are neither visible through the table nor removed by retention (with a record)."""
    visible = set(ids(conn, LEDGER))
    removed = {p for p in w["due"] if p not in partitions(conn)}
    gone = {i for yy, p in zip(w["due_years"], w["due"]) if p in removed for i in w["by_year"][yy]}
    seeded = {i for s in w["by_year"].values() for i in s}
    return len(seeded - visible - gone)


def _catalog(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('partman_catalog.removal') IS NOT NULL").fetchone()[0]


def check_final(conn: psycopg.Connection, s3: dict | None, w: dict, action: str, committed: list[int]) -> str:
    y, by_year = w["y"], w["by_year"]
    parts = partitions(conn)
    # retention done, everything else kept; the default move and premake finished
    assert not set(w["due"]) & parts
    keep = {f"audit_log_ledger_p{yy}0101" for yy in range(w["cutoff_year"], y + 4)} | {"audit_log_ledger_default"}
    assert parts == keep, (sorted(parts ^ keep))
    assert conn.execute("SELECT count(*) FROM audit_log_ledger_default").fetchone()[0] == 0
    # no orphans: no staging table, no new relation beyond the new partitions (and detached ones)
    assert not conn.execute("SELECT c.relname FROM pg_class c WHERE obj_description(c.oid, 'pg_class') LIKE 'partman:%'").fetchall()
    new = relations_in(conn, "public") - w["public_before"]
    allowed = keep | (set(w["due"]) if action == "detach" else set())
    assert {n for n in new if not n.endswith(("_pkey", "_idx", "_key"))} <= allowed, sorted(new)
    # removal records: one per due partition, in order, with the right counts and id ranges
    recs = removals(conn)
    assert [r["partition_name"] for r in recs] == w["due"]
    for r, yy in zip(recs, w["due_years"]):
        assert r["action"] == action
        assert r["row_count"] == len(by_year[yy])
        assert (int(r["min_id"]), int(r["max_id"])) == (min(by_year[yy]), max(by_year[yy]))
        assert r["last_row"]["id"] == max(by_year[yy])
    # every committed row exactly once: in the table, in a detached table, or in one archive
    table_ids = ids(conn, LEDGER)
    elsewhere: list[int] = []
    if action == "archive":
        store = objects(s3)
        expected_keys = {f"{PREFIX}{p}.csv.gz" for p in w["due"]} | {f"{PREFIX}{p}.manifest.json" for p in w["due"]}
        assert set(store) == expected_keys, sorted(set(store) ^ expected_keys)  # exactly one object per partition
        for r, p in zip(recs, w["due"]):
            body = store[f"{PREFIX}{p}.csv.gz"]
            manifest = json.loads(store[f"{PREFIX}{p}.manifest.json"])
            sha = hashlib.sha256(body).hexdigest()
            assert sha == r["archive_sha256"] == manifest["sha256"]
            assert r["archive_uri"] == f"s3://{s3['bucket']}/{PREFIX}{p}.csv.gz" and r["archive_bytes"] == len(body)
            rows = list(csv.DictReader(io.StringIO(gzip.decompress(body).decode())))
            assert len(rows) == manifest["row_count"] == r["row_count"]
            elsewhere += [int(x["id"]) for x in rows]
        states = conn.execute("SELECT DISTINCT state FROM partman_catalog.archive").fetchall()
        assert states == [("removed",)], states
    elif action == "detach":
        for p in w["due"]:
            elsewhere += [x[0] for x in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(p)))]
    else:  # drop: those rows are gone by design; the removal record accounts for them
        elsewhere += [i for yy in w["due_years"] for i in by_year[yy]]
    everything = table_ids + elsewhere
    expected = {i for s in by_year.values() for i in s} | set(committed)
    assert len(everything) == len(set(everything)), "a row is duplicated"
    assert set(everything) == expected, f"lost {sorted(expected - set(everything))[:5]}, extra {sorted(set(everything) - expected)[:5]}"
    # the chain verifies from the anchor the last removal record keeps
    anchor = recs[-1]["last_row"]["current_hash"]
    assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
    return (f"ok: {len(everything)} rows exactly once ({len(committed)} written meanwhile, 0 failed inserts), "
            f"chain valid, {len(recs)} {action} records" + (", 1 verified object each" if action == "archive" else "")
            + ", no orphans")


# (matrix name, PARTMAN_FAILPOINTS, retention action, extra env for the killed pass)
POINTS = [
    ("maintain", "maintain.premake.before_ddl=2:kill", "archive", {}),
    ("maintain", "maintain.default.batch=2:kill", "archive", {"PARTMAN_BATCH_SIZE": "10"}),
    ("maintain", "maintain.default.attach=1:kill", "archive", {"PARTMAN_BATCH_SIZE": "10"}),
    ("maintain", "retention.detach=2:kill", "drop", {}),
    ("maintain", "retention.drop=2:kill", "drop", {}),
    ("maintain", "retention.detach=2:kill", "detach", {}),
    ("archive", "archive.upload=2:kill", "archive", {}),
    ("archive", "archive.after_upload=2:kill", "archive", {}),
    ("archive", "archive.verify=2:kill", "archive", {}),
    ("archive", "archive.manifest=2:kill", "archive", {}),
    ("archive", "archive.detach=2:kill", "archive", {}),
    ("archive", "archive.drop=2:kill", "archive", {}),
]


@pytest.mark.parametrize("op,point,action,extra", POINTS,
                         ids=[f"{p.split('=')[0]}-{a}" for _, p, a, _ in POINTS])
def test_maintain_killed_at_each_point_the_rerun_finishes(conn, dsn, partman, partman_proc, s3, op, point, action, extra):
    label = point.split("=")[0] + ("" if action in ("archive",) or op == "archive" else f" [{action}]")
    with matrix_entry(op, label) as entry:
        w = build(conn, partman, action)
        with Writers(dsn, LEDGER, threads=1, pause=0.01) as wr:
            first = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": point, **extra})
            assert first.code == -9, f"expected the failpoint to kill partman: {first.code} {first.err[-800:]}"
            # right after the crash: nothing gone without its record (and verified archive)
            check_nothing_dropped_unverified(conn, s3, w, action)
            hidden = _rows_hidden(conn, w)  # rows the crash left where queries on the table cannot see them
            time.sleep(0.2)  # the application keeps writing between the crash and the rerun
            second = partman_proc("maintain", "--json")
            time.sleep(0.1)
            wr.stop()
        assert second.code == 0, second.err[-2000:]
        assert not wr.errors, wr.errors[:3]
        assert wr.committed
        summary = json.loads(second.out)["tables"]["public.audit_log_ledger"]
        assert summary["error"] is None
        entry.outcome = check_final(conn, s3 if action == "archive" else None, w, action, wr.committed)
        worst = max(wr.latencies)
        entry.outcome += f"; slowest insert {worst:.2f}s"
        if hidden:
            entry.outcome += f"; {hidden} default-partition rows invisible between crash and rerun (staging table)"
        assert worst < 5.0, f"an application insert waited {worst:.1f}s"
        # and a third pass has nothing left to do
        third = partman_proc("maintain", "--json")
        assert third.code == 0, third.err[-1000:]
        t = json.loads(third.out)["tables"]["public.audit_log_ledger"]
        assert t["created"] == [] and t["retention"]["removed"] == [] and t["default_rows_moved"] == 0
        if action == "archive":  # last, so that every other check above has run
            left = unfinished_uploads(s3)
            if left:
                entry.outcome = "BUG: " + entry.outcome[4:] + f"; but {len(left)} unfinished multipart upload(s) left in S3"
            assert left == [], f"the killed pass left unfinished multipart uploads in S3: {left}"


def test_maintain_killed_before_dropping_the_old_table(conn, dsn, partman, partman_proc):
    """finish.before_drop_old: the revert window closes (`<table>_old` dropped) in a rerun."""
    with matrix_entry("maintain", "finish.before_drop_old") as entry:
        make_ledger(conn, ROWS)
        r = partman("convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year",
                    "--drop-old-after", "1s", "--sleep", "0", "--yes")
        assert r.code == 0, r.err
        before = set(ids(conn, LEDGER))
        time.sleep(1.2)
        with Writers(dsn, LEDGER, threads=1, pause=0.01) as wr:
            first = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": "finish.before_drop_old=1:kill"})
            assert first.code == -9, first.err[-800:]
            assert conn.execute("SELECT to_regclass('public.audit_log_ledger_old')").fetchone()[0] is not None
            time.sleep(0.2)
            second = partman_proc("maintain", "--json")
            wr.stop()
        assert second.code == 0, second.err[-2000:]
        assert not wr.errors, wr.errors[:3]
        assert json.loads(second.out)["tables"]["public.audit_log_ledger"]["dropped_old"] == "public.audit_log_ledger_old"
        assert conn.execute("SELECT to_regclass('public.audit_log_ledger_old')").fetchone()[0] is None
        got = ids(conn, LEDGER)
        assert len(got) == len(set(got)) and set(got) == before | set(wr.committed)
        assert verify_chain(conn, LEDGER)["ok"]
        # no orphans: no work schema, no revert capture trigger, old_table cleared in the registry
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman_catalog_w%'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'partman%'").fetchone()[0] == 0
        assert conn.execute("SELECT old_table_name FROM partman_catalog.managed_table").fetchone()[0] is None
        assert not [n for n in relations_in(conn, "public") if n.endswith("_old") or "partman" in n]
        entry.outcome = (f"ok: {len(got)} rows exactly once ({len(wr.committed)} written meanwhile), chain valid, "
                         "_old dropped by the rerun, no work schema or capture trigger left")
