"""The partition lifecycle on a real PostgreSQL: register, premake, the default partition,
retention (drop / detach), legal holds, concurrency, blocked DDL, bad input."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import psycopg
import pytest
from psycopg import sql

from partman import catalog
from partman.db import QualifiedName
from partman.settings import load_settings

from helpers import relations_in, standby_server, wait_for_partman_sessions_to_end

pytestmark = pytest.mark.lifecycle

EVENTS = QualifiedName("public", "events")


def make_events(conn: psycopg.Connection, years: tuple[int, ...] = (2024,), default: bool = True,
                name: str = "events") -> None:
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id bigserial, ts timestamptz NOT NULL, note text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
    ).format(sql.Identifier(name)))
    for y in years:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s)").format(
            sql.Identifier(f"{name}_p{y}0101"), sql.Identifier(name)).as_string(conn)
            % (sql.Literal(f"{y}-01-01 00:00+00").as_string(conn), sql.Literal(f"{y + 1}-01-01 00:00+00").as_string(conn)))
    if default:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            sql.Identifier(f"{name}_default"), sql.Identifier(name)))


def partitions(conn: psycopg.Connection, parent: str = "events") -> dict[str, str]:
    return dict(conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (parent,)).fetchall())


def this_year(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int").fetchone()[0]


def settings_for(dsn: str, **kw):
    from partman import log

    log.configure("json", "warning")  # a previous in-process CLI run may have bound a closed stream
    return load_settings({"database_url": dsn, **kw})


# ---------------------------------------------------------------- register / premake

def test_register_premake_makes_the_current_and_future_partitions_and_is_idempotent(conn, partman):
    """The current year's partition and `premake` beyond it; the past years between the table's
    one partition (2022) and now stay without one (test_a_stray_row_..._makes_one_partition)."""
    make_events(conn, years=(2022,))
    conn.execute("SET TimeZone TO 'UTC'")
    y = this_year(conn)
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "2")
    assert r.code == 0, r.err
    assert "registered public.events" in r.out and "registration_changed" not in r.err
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "2")
    assert r.code == 0 and "registration_changed" not in r.err  # the same again changes nothing
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "3")
    assert r.code == 0 and "registration_changed" in r.err and "3 -> 2" not in r.err and "2 -> 3" in r.err
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "2").code == 0
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    created = summary["tables"]["public.events"]["created"]
    expected = [f"events_p{yy}0101" for yy in range(y, y + 3)]
    assert sorted(created) == expected
    parts = partitions(conn)
    assert parts[f"events_p{y + 2}0101"] == (
        f"FOR VALUES FROM ('{y + 2}-01-01 00:00:00+00') TO ('{y + 3}-01-01 00:00:00+00')")
    assert summary["tables"]["public.events"]["analyzed"] is True
    # idempotent: the second pass changes nothing
    before = partitions(conn)
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    again = json.loads(r.out)["tables"]["public.events"]
    assert again["created"] == [] and again["analyzed"] is False
    assert partitions(conn) == before
    row = conn.execute("SELECT maintenance_last_run IS NOT NULL, maintenance_last_error FROM partman_catalog.managed_table").fetchone()
    assert row == (True, None)
    runs = conn.execute("SELECT count(*), bool_and(ok) FROM partman_catalog.maintenance_run").fetchone()
    assert runs == (2, True)


def daily_events(conn: psycopg.Connection, days_back: int, days_to: int, default: bool = False) -> None:
    """events by day (UTC), partitions made by hand from `days_back` days ago up to `days_to` days
    ago (0: today), six rows in each."""
    conn.execute("CREATE TABLE events (id bigserial, ts timestamptz NOT NULL, note text, PRIMARY KEY (id, ts)) "
                 "PARTITION BY RANGE (ts)")
    conn.execute("""DO $$ DECLARE d date; BEGIN
        FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - %s, (now() AT TIME ZONE 'UTC')::date - %s, '1 day')
        LOOP EXECUTE format('CREATE TABLE %%I PARTITION OF events FOR VALUES FROM (%%L) TO (%%L)',
                            'events_p' || to_char(d, 'YYYYMMDD'), d::text || ' 00:00+00', (d + 1)::text || ' 00:00+00');
             INSERT INTO events (ts) SELECT d + g * interval '4 hours' FROM generate_series(0, 5) g;
        END LOOP; END $$""" % (int(days_back), int(days_to)))
    if default:
        conn.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")


def day_name(conn: psycopg.Connection, days_ago: int) -> str:
    return conn.execute("SELECT 'events_p' || to_char((now() AT TIME ZONE 'UTC')::date - %s, 'YYYYMMDD')",
                        (days_ago,)).fetchone()[0]


def test_register_names_what_the_first_pass_removes_and_the_partitions_the_table_lacks(conn, partman):
    """A daily table adopted with a retention of 3 days: the partitions already past it (which the
    next pass removes: what the action does, their rows, how to keep one) and that it has no
    partition for today (INSERTs of now() fail until a pass makes it: run `partman maintain`), in
    register's text and --json output, before anything happens."""
    daily_events(conn, 8, 1)  # eight days ago .. yesterday: nothing for today, no default partition
    assert partman("hold", day_name(conn, 5), "--reason", "case 4711").code == 0
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--retention", "3 days",
                "--retention-action", "archive")
    assert r.code == 0, r.err
    assert r.out.startswith("registered public.events: day partitions on ts")
    due = [day_name(conn, n) for n in (8, 7, 6, 4)]  # whole days older than now - 3 days, but the held one
    (past,) = [w for w in r.err.splitlines() if "past its retention" in w]
    assert past.startswith("partman: warning: 4 partitions of public.events are already past its retention of 3 days")
    for name in due:
        assert f"{name} (6 rows)" in past
    assert day_name(conn, 3) not in past and "24 rows in all" in past
    assert "The next maintenance pass" in past and "archives each to S3 (uploaded and verified) and then drops it" in past
    assert f"partman hold public.{due[0]} --reason" in past and f"Under legal hold, so kept: {day_name(conn, 5)}" in past
    (gap,) = [w for w in r.err.splitlines() if "current day" in w]
    assert "public.events has no partition for the current day" in gap and "no default partition" in gap
    assert "no partition of relation ... found for row" in gap and "0 of the 3 future partitions" in gap
    assert "Run `partman maintain` now" in gap and "503" in gap and "also applies the retention" in gap
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition of relation"):
        conn.execute("INSERT INTO events (ts) VALUES (now())")  # as the warning says
    # --json: the same, as one document on stdout; with drop, what is lost is said
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--retention", "3 days",
                "--retention-action", "drop", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    listed = doc["past_retention"]["partitions"]
    assert [p["partition"] for p in listed if not p["held"]] == due and [p["rows"] for p in listed] == [6] * 5
    assert [p["partition"] for p in listed if p["held"]] == [day_name(conn, 5)]
    assert "deleted for good" in doc["past_retention"]["effect"] and doc["past_retention"]["rows"] == 24
    assert doc["coverage"]["current_partition"] is False and doc["coverage"]["partitions_ahead"] == 0
    assert doc["coverage"]["default_partition"] is None and "partman maintain" in doc["coverage"]["note"]
    assert len(doc["warnings"]) == 2
    # the pass removes what register named, and makes what it said was missing
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)["tables"]["public.events"]
    assert [x["partition"] for x in res["retention"]["removed"]] == due
    assert sorted(res["created"]) == [day_name(conn, -n) for n in range(0, 4)]
    # registered again, covered and nothing due: nothing to warn of
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--retention", "3 days",
                "--retention-action", "drop")
    assert r.code == 0 and "warning" not in r.err, r.err


def test_register_says_where_rows_for_now_go_when_a_default_partition_holds_them(conn, partman):
    daily_events(conn, 2, 0, default=True)  # today, but nothing ahead
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--premake", "2")
    assert r.code == 0, r.err
    assert "past its retention" not in r.err and "current day" not in r.err
    assert "public.events has 0 of the 2 future day partitions premake keeps" in r.err
    assert "Run `partman maintain` now" in r.err and "also applies the retention" not in r.err
    doc = json.loads(partman("register", "events", "--column", "ts", "--interval", "day", "--json").out)
    assert doc["past_retention"] is None and doc["coverage"]["default_partition"] == "events_default"
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(day_name(conn, 0))))
    r = partman("register", "events", "--column", "ts", "--interval", "day", "--premake", "2")
    assert "no partition for the current day" in r.err and "rows written for now land in its default partition" in r.err


def test_a_stray_row_far_in_the_past_makes_one_partition_not_thousands(conn, partman):
    """A daily table, and one row with a mistyped year (or an epoch-zero timestamp from a bug)
    lands in the default partition. The pass moves it into a partition of its own day, and makes
    none of the thousands of empty days between it and the others: past ranges get a partition
    only when rows arrive for them."""
    conn.execute("SET TimeZone TO 'UTC'")
    conn.execute("CREATE TABLE daily (id bigserial, ts timestamptz NOT NULL, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts);"
                 "CREATE TABLE daily_default PARTITION OF daily DEFAULT")
    assert partman("register", "daily", "--column", "ts", "--interval", "day", "--premake", "2").code == 0
    first = partman("maintain", "--json")
    assert first.code == 0, first.err
    made = sorted(json.loads(first.out)["tables"]["public.daily"]["created"])
    assert len(made) == 3  # today and two ahead
    conn.execute("INSERT INTO daily (ts) VALUES ('1970-01-01 12:00+00'), (now())")
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)["tables"]["public.daily"]
    assert result["created"] == ["daily_p19700101"] and result["default_rows_moved"] == 1
    assert sorted(partitions(conn, "daily")) == sorted(["daily_default", "daily_p19700101", *made])
    again = partman("maintain", "--json")
    assert again.code == 0 and json.loads(again.out)["tables"]["public.daily"]["created"] == []


def test_maintain_analyzes_the_parent_once_its_partitions_grew_past_autovacuums_threshold(conn, partman):
    """Autovacuum analyzes each partition as rows arrive, never the partitioned parent, whose
    statistics the planner uses for the table as a whole. A pass analyzes it when the partitions'
    rows (as their own last ANALYZE counted them) moved away from the parent's count by more than
    autovacuum's analyze threshold (50 + 10% here), and not before."""
    make_events(conn, years=(2024,))
    conn.execute("INSERT INTO events (ts) SELECT timestamptz '2024-01-01 00:00+00' + g * interval '1 hour' "
                 "FROM generate_series(1, 2000) g")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "1").code == 0

    def parent_rows() -> float:
        return conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass").fetchone()[0]

    def grow(rows: int) -> bool:
        conn.execute("INSERT INTO events (ts) SELECT timestamptz '2024-06-01 00:00+00' + g * interval '1 second' "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("ANALYZE events_p20240101")  # as autovacuum does, the partition alone
        r = partman("maintain", "--json")
        assert r.code == 0, r.err
        return json.loads(r.out)["tables"]["public.events"]["analyzed"]

    assert grow(0) is True and parent_rows() == 2000  # partitions made: analyzed anyway
    assert grow(0) is False
    assert grow(200) is False and parent_rows() == 2000  # 200 of a threshold of 250
    assert grow(100) is True and parent_rows() == 2300
    assert grow(0) is False


def test_new_partitions_get_the_newest_partitions_storage_options(conn, partman):
    """A partitioned parent cannot carry fillfactor or autovacuum settings; the partitions maintain
    makes (premade, or attached by the default move) take the newest partition's, TOAST's too."""
    make_events(conn, years=(2022,))
    conn.execute("ALTER TABLE events_p20220101 SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05, "
                 "toast.autovacuum_enabled = false)")
    conn.execute("INSERT INTO events (ts, note) VALUES ('2023-06-01 00:00+00', 'lands in the default partition')")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "1").code == 0
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    options = dict(conn.execute(
        "SELECT c.relname, coalesce(c.reloptions, '{}') || coalesce((SELECT array_agg('toast.' || o) "
        "FROM unnest(t.reloptions) o), '{}') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE i.inhparent = 'events'::regclass "
        "AND c.relname <> 'events_default'").fetchall())
    y = this_year(conn)
    assert set(options) == {f"events_p{yy}0101" for yy in (2022, 2023, y, y + 1)}
    expected = ["autovacuum_vacuum_scale_factor=0.05", "fillfactor=90", "toast.autovacuum_enabled=false"]
    assert all(sorted(o) == expected for o in options.values()), options
    assert conn.execute("SELECT count(*) FROM events_p20230101").fetchone()[0] == 1  # moved out of the default


def test_monthly_bounds_in_a_time_zone_and_long_names(conn, partman):
    long = "t" * 63
    conn.execute(sql.SQL("CREATE TABLE {} (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)").format(sql.Identifier(long)))
    r = partman("register", long, "--column", "ts", "--interval", "month", "--premake", "1",
                "--timezone", "Europe/Berlin")
    assert r.code == 0, r.err
    r = partman("maintain")
    assert r.code == 0, r.err
    conn.execute("SET TimeZone TO 'Europe/Berlin'")
    parts = partitions(conn, f'"{long}"')
    assert len(parts) == 2
    for name, bound in parts.items():
        assert len(name.encode()) <= 63 and name.endswith("01") and "_p" in name
        # bounds on local midnights of the 1st, whatever the DST offset
        assert " 00:00:00+0" in bound and "-01 00:00:00" in bound


def test_date_key_and_week_interval(conn, partman):
    conn.execute("CREATE TABLE d (day date NOT NULL, v int) PARTITION BY RANGE (day)")
    r = partman("register", "public.d", "--column", "day", "--interval", "week", "--premake", "2")
    assert r.code == 0, r.err
    assert partman("maintain").code == 0
    parts = partitions(conn, "d")
    assert len(parts) == 3
    for bound in parts.values():
        lo = bound.split("'")[1]
        assert datetime.fromisoformat(lo).weekday() == 0  # weeks start on Monday


# ---------------------------------------------------------------- the default partition

def test_default_rows_are_moved_while_a_writer_keeps_inserting(conn, dsn, partman, monkeypatch):
    make_events(conn, years=())
    y = this_year(conn)
    conn.execute("INSERT INTO events (ts, note) SELECT %s::timestamptz + g * interval '1 minute', 'old' FROM generate_series(1, 300) g",
                 ("2011-03-01 00:00+00",))
    conn.execute("INSERT INTO events (ts, note) SELECT %s::timestamptz + g * interval '1 minute', 'future' FROM generate_series(1, 400) g",
                 (f"{y + 5}-02-01 00:00+00",))
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 700
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "1")
    assert r.code == 0, r.err
    from partman.lifecycle import default_rows
    mt = catalog.get_managed(conn, settings_for(dsn), "public", "events")
    assert default_rows.count(conn, mt) == 700

    stop = threading.Event()
    committed: list[int] = []
    errors: list[str] = []

    def writer() -> None:  # keeps writing rows whose range is still only in the default partition
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET lock_timeout = '20s'")
            while not stop.is_set():
                try:
                    committed.append(c.execute(
                        "INSERT INTO events (ts, note) VALUES (%s, 'live') RETURNING id", (f"{y + 5}-06-01 12:00+00",)).fetchone()[0])
                except psycopg.Error as exc:
                    errors.append(str(exc))
                time.sleep(0.002)

    monkeypatch.setenv("PARTMAN_BATCH_SIZE", "50")
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.3)
    try:
        r = partman("maintain", "--json")
    finally:
        time.sleep(0.3)
        stop.set()
        t.join(30)
    assert r.code == 0, r.err
    res = json.loads(r.out)["tables"]["public.events"]
    assert res["default_rows_moved"] >= 700
    assert f"events_p{y + 5}0101" in res["created"] and "events_p20110101" in res["created"]
    assert not errors, errors[:3]
    assert committed
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 700 + len(committed)
    got = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} WHERE note = 'live'").format(
        sql.Identifier(f"events_p{y + 5}0101")))}
    assert got == set(committed)
    assert conn.execute("SELECT count(*) FROM events_p20110101").fetchone()[0] == 300
    # no staging leftovers, every partition attached
    assert not conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'events_p%' AND relkind = 'r' "
                            "AND NOT relispartition").fetchall()
    assert partman("maintain", "--json").code == 0


def test_default_move_resumes_after_a_crash(conn, dsn, partman_proc, partman):
    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) SELECT '2013-05-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 200) g")
    # an append-only guard like the ledger's: moving rows must not trip it (rows are moved, not deleted)
    conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'append-only'; END $$")
    conn.execute("CREATE TRIGGER guard BEFORE UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION refuse()")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    r = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": "maintain.default.batch=2:kill", "PARTMAN_BATCH_SIZE": "50"})
    assert r.code != 0
    # the killed pass left a staging table holding the moved batch, invisible through the parent:
    # status and /health say so until a pass attaches it
    assert conn.execute("SELECT count(*) FROM events_p20130101").fetchone()[0] == 50
    r = partman("status", "--json")
    assert json.loads(r.out)["tables"][0]["stranded_default_rows"] == [{"staging": "events_p20130101", "rows": 50}]
    from partman.health import judge

    body = judge(conn, settings_for(dsn), leader=False)
    assert body["status"] == "unhealthy" and "50 rows in events_p20130101" in " ".join(body["reasons"]), body
    from partman.lifecycle import table_lock_key
    from partman.lifecycle.default_rows import stranded

    mt = catalog.get_managed(conn, settings_for(dsn), "public", "events")
    with psycopg.connect(dsn, autocommit=True) as pass_at_work:  # a pass on the table: its rows are on their way
        pass_at_work.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (table_lock_key(mt),))
        assert stranded(conn, mt) == []
    r = partman("maintain")
    assert r.code == 0, r.err
    assert json.loads(partman("status", "--json").out)["tables"][0]["stranded_default_rows"] == []
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 200
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
    assert "events_p20130101" in partitions(conn)
    with pytest.raises(psycopg.errors.RaiseException):  # the guard came along to the new partition
        conn.execute("DELETE FROM events_p20130101")


def test_a_stray_row_stays_in_sight_while_it_is_moved_and_after_a_kill(conn, partman_proc, partman):
    """A late row in the default partition, the table's newest: moving it must never take it out of
    sight of queries on the table (a ledger's chain trigger links the next insert to the newest row
    it sees). It moves in the attach's own transaction; a pass killed there leaves it where it was."""
    make_events(conn, years=())
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    assert partman("maintain").code == 0
    late = conn.execute("INSERT INTO events (ts, note) VALUES ('2013-05-01', 'late') RETURNING id").fetchone()[0]
    r = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": "maintain.default.attach=1:kill"})
    assert r.code != 0
    assert conn.execute("SELECT max(id) FROM events").fetchone()[0] == late  # still seen, still the newest
    r = partman("maintain")
    assert r.code == 0, r.err
    assert conn.execute("SELECT tableoid::regclass::text FROM events WHERE id = %s", (late,)).fetchone()[0] == "events_p20130101"


def test_a_failed_default_move_does_not_stop_premake(conn, partman):
    """Rows that cannot leave the default partition (here a failure injected into the move) are
    reported, but the pass goes on to make the current and future partitions: coverage must not
    run out because of one stray row."""
    from partman import failpoints

    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) VALUES ('2013-05-01')")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "2").code == 0
    failpoints.arm("maintain.default.attach", "raise")
    try:
        r = partman("maintain", "--json")
    finally:
        failpoints.disarm()
    assert r.code == 1
    res = json.loads(r.out)["tables"]["public.events"]
    assert "moving rows out of the default partition failed" in res["error"], res
    y = this_year(conn)
    assert {f"events_p{y + i}0101" for i in range(3)} <= set(partitions(conn)), partitions(conn)
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 1
    assert partman("maintain").code == 0  # the next pass moves the row
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0


def test_a_published_tables_default_rows_move_in_one_transaction_up_to_a_limit(conn, partman, monkeypatch):
    """A published table's rows leave the default partition in one transaction, which its writers
    wait for; a range with more than 10 batches' worth stays there, said in the pass's error with
    its size and the knob, and moves on a pass with larger batches."""
    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) SELECT '2013-05-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 300) g;"
                 "INSERT INTO events (ts) SELECT '2014-05-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 50) g;"
                 "CREATE PUBLICATION events_feed FOR TABLE events WITH (publish_via_partition_root = true)")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    monkeypatch.setenv("PARTMAN_BATCH_SIZE", "10")
    r = partman("maintain")
    assert r.code == 1
    assert "events_p20130101 (300 rows)" in r.err and "PARTMAN_BATCH_SIZE" in r.err, r.err
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 300  # 2014's 50 moved
    assert conn.execute("SELECT count(*) FROM events_p20140101").fetchone()[0] == 50
    monkeypatch.setenv("PARTMAN_BATCH_SIZE", "30")
    r = partman("maintain")
    assert r.code == 0, r.err
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM events_p20130101").fetchone()[0] == 300


# ---------------------------------------------------------------- retention: drop / detach / holds

def test_retention_drop_with_a_legal_hold(conn, dsn, partman):
    y = this_year(conn)
    make_events(conn, years=tuple(range(2012, y + 1)))
    conn.execute("INSERT INTO events (ts) SELECT make_timestamptz(yy, 6, 1, 0, 0, 0, 'UTC') FROM generate_series(2012, %s) yy, "
                 "generate_series(1, 3)", (y,))
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--retention", "10 years",
                "--retention-action", "drop", "--premake", "1")
    assert r.code == 0, r.err
    r = partman("hold", "events_p20130101", "--reason", "case 4711: court order")
    assert r.code == 0, r.err
    assert partman("hold", "events_p20130101", "--reason", "case 4711: court order").code == 0  # the same again
    r = partman("hold", "events_p20130101", "--reason", "case 4712")  # never replaces the first unseen
    assert r.code == 1 and "already under legal hold for 'case 4711: court order'" in r.err
    assert conn.execute("SELECT reason FROM partman_catalog.hold").fetchall() == [("case 4711: court order",)]
    from partman.lifecycle import retention
    mt = catalog.get_managed(conn, settings_for(dsn), "public", "events")
    due = retention.due(conn, settings_for(dsn), mt)
    cutoff_year = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    assert sorted(d["partition"] for d in due) == [f"events_p{yy}0101" for yy in range(2012, cutoff_year)]
    assert [d["held"] for d in due if d["partition"] == "events_p20130101"] == [True]

    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)["tables"]["public.events"]
    assert res["retention"]["held"] == ["events_p20130101"]
    names = set(partitions(conn))
    assert "events_p20130101" in names and "events_p20120101" not in names
    assert f"events_p{cutoff_year}0101" in names and f"events_p{y + 1}0101" in names
    rec = conn.execute("SELECT partition_name, row_count, min_id, max_id, last_row->>'id', action, removed_by "
                       "FROM partman_catalog.removal ORDER BY id").fetchall()
    assert rec[0][0] == "events_p20120101" and rec[0][1] == 3 and rec[0][5] == "drop"
    assert rec[0][4] == rec[0][3]  # the last row is the one with the highest id
    # append-only
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM partman_catalog.removal")
    # a released hold lets retention remove it on the next pass
    r = partman("release", "public.events_p20130101")
    assert r.code == 0, r.err
    assert partman("maintain").code == 0
    assert "events_p20130101" not in partitions(conn)
    ev = conn.execute("SELECT event, reason, actor FROM partman_catalog.hold_event ORDER BY id").fetchall()
    assert [e[0] for e in ev] == ["hold", "release"] and ev[0][1] == "case 4711: court order" and ev[0][2]
    # the current and future partitions are never touched, even with a tiny retention
    conn.execute("UPDATE partman_catalog.managed_table SET retention = '1 second'")
    assert partman("maintain").code == 0
    names = set(partitions(conn))
    assert f"events_p{y}0101" in names and f"events_p{y + 1}0101" in names


def test_retention_detach_moves_to_a_retention_schema(conn, partman):
    make_events(conn, years=(2010, 2011, 2025))
    conn.execute("INSERT INTO events (ts) VALUES ('2010-05-05'), ('2011-05-05')")
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--retention", "5 years",
                "--retention-action", "detach", "--retention-schema", "archive_tables", "--premake", "0")
    assert r.code == 0, r.err
    assert partman("maintain").code == 0
    assert "events_p20100101" not in partitions(conn)
    assert relations_in(conn, "archive_tables") >= {"events_p20100101", "events_p20110101"}
    assert conn.execute("SELECT count(*) FROM archive_tables.events_p20100101").fetchone()[0] == 1


@pytest.mark.parametrize("schema", ["public", "archive_tables"])
def test_restore_of_a_detached_partition_names_the_table_holding_its_rows_and_how_to_attach_it(conn, partman, schema):
    """No archive, but the catalog records the detach: restore says so, names the plain table
    (beside the parent or in the retention schema), gives the ATTACH with the recorded bounds and
    never advises dropping it, the only copy. Renamed away, it still answers from the catalog."""
    make_events(conn, years=(2010, 2011, 2025))
    conn.execute("INSERT INTO events (ts) VALUES ('2010-05-05'), ('2011-05-05'), ('2011-06-06')")
    extra = ["--retention-schema", schema] if schema != "public" else []
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--retention", "5 years",
                   "--retention-action", "detach", "--premake", "0", *extra).code == 0
    assert partman("maintain").code == 0
    r = partman("restore", "events", "events_p20110101")
    assert r.code == 1 and "Traceback" not in r.err
    assert "already exists" not in r.err and "drop or rename" not in r.err and "No archive" not in r.err, r.err
    assert "was not archived" in r.err and "retention detached it from public.events" in r.err and "(2 rows" in r.err
    held = f"{schema}.events_p20110101"
    assert f"Its rows are in {held}" in r.err and f"Do not drop {held}: it is the only copy" in r.err, r.err
    assert f"partman hold {held} --reason" in r.err
    attach = r.err.split("run `", 1)[1].split("`", 1)[0]
    assert attach == (f"ALTER TABLE public.events ATTACH PARTITION {held} "
                      "FOR VALUES FROM ('2011-01-01 00:00:00+00:00') TO ('2012-01-01 00:00:00+00:00')")
    conn.execute(attach)  # the advice works: its rows are the table's again
    assert "events_p20110101" in partitions(conn)
    assert conn.execute("SELECT count(*) FROM events WHERE ts < '2012-01-01'").fetchone()[0] == 2
    # renamed away: the catalog's record still answers, not "no archive recorded"
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO kept_2010").format(sql.Identifier(schema, "events_p20100101")))
    r = partman("restore", "events", "events_p20100101")
    assert r.code == 1 and "No archive" not in r.err, r.err
    assert "retention detached it" in r.err and "No plain table named events_p20100101 exists any more" in r.err
    assert "attach it back with its new name in place of events_p20100101" in r.err and "drop" not in r.err.replace("dropped, or renamed", "")


def test_restore_of_a_partition_dropped_without_an_archive_says_its_rows_are_gone(conn, partman):
    make_events(conn, years=(2010, 2025))
    conn.execute("INSERT INTO events (ts) SELECT '2010-05-05'::timestamptz + g * interval '1 day' FROM generate_series(1, 3) g")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--retention", "5 years",
                   "--retention-action", "drop", "--premake", "0").code == 0
    assert partman("maintain").code == 0
    when = conn.execute("SELECT to_char(removed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
                        "FROM partman_catalog.removal").fetchone()[0]
    conn.execute("CREATE TABLE events_p20100101 (note text)")  # someone's table of that name: not partman's to advise on
    r = partman("restore", "events", "events_p20100101")
    assert r.code == 1 and "Traceback" not in r.err
    assert f"retention dropped it from public.events without an archive at {when}" in r.err, r.err
    assert "(3 rows" in r.err and "Its rows are gone" in r.err and "No archive" not in r.err
    assert "already exists" not in r.err and "drop or rename" not in r.err and "Drop it" not in r.err


# ---------------------------------------------------------------- safety: concurrency, locks, leadership

def test_two_maintain_processes_never_act_on_one_table(conn, partman, partman_proc, dsn):
    make_events(conn, years=())
    assert partman("register", "events", "--column", "ts", "--interval", "month", "--premake", "3").code == 0
    results = {}

    def run(tag: str, env: dict) -> None:
        results[tag] = partman_proc("maintain", "--json", extra_env=env)

    a = threading.Thread(target=run, args=("a", {"PARTMAN_FAILPOINTS": "maintain.premake.before_ddl=1:sleep(5)"}))
    a.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until A holds the table's lock (it then sleeps in its first DDL)
        if conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()[0]:
            break
        time.sleep(0.05)
    run("b", {})
    a.join(60)
    ra, rb = results["a"], results["b"]
    assert ra.code == 0 and rb.code == 0, (ra.err, rb.err)
    sa, sb = json.loads(ra.out), json.loads(rb.out)
    assert len(sa["tables"]["public.events"]["created"]) == 4
    assert "public.events" in sb["skipped"] and "another partman process" in sb["skipped"]["public.events"]
    assert "public.events" not in sb["tables"]


def test_blocked_ddl_skips_the_table_and_reports_it(conn, dsn, partman, monkeypatch):
    make_events(conn, years=())
    assert partman("register", "events", "--column", "ts", "--interval", "year").code == 0
    monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "2")
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT count(*) FROM events")  # holds ACCESS SHARE in an open transaction
        t0 = time.monotonic()
        r = partman("maintain", "--lock-timeout", "100")
        elapsed = time.monotonic() - t0
        blocker.rollback()
    assert r.code == 1
    assert "blocked" in r.out and "Gave up" in r.err
    assert elapsed < 10
    row = conn.execute("SELECT maintenance_last_run, maintenance_last_error, maintenance_last_attempt IS NOT NULL "
                       "FROM partman_catalog.managed_table").fetchone()
    assert row[0] is None and "blocked" in row[1] and row[2]
    assert partitions(conn) == {"events_default": "DEFAULT"}
    assert partman("maintain").code == 0  # unblocked: the next pass does the work


def test_leader_check_and_no_tables(conn, dsn):
    from partman.lifecycle.maintain import maintain

    s = settings_for(dsn)
    empty = maintain(s)
    assert empty["ok"] and empty["tables"] == {} and not empty["standby"]
    make_events(conn, years=())
    catalog.ensure(conn, s)
    from partman.lifecycle.registry import register

    register(conn, s, "events", column="ts", interval="year")
    out = maintain(s, leader_check=lambda: False)
    assert out["skipped"] == {"public.events": "not the leader"}
    assert partitions(conn) == {"events_default": "DEFAULT"}
    out = maintain(s, conn=conn, leader_check=lambda: True)
    assert out["ok"] and len(out["tables"]["public.events"]["created"]) == 4


# ---------------------------------------------------------------- bad input

def test_bad_input_is_refused_with_a_clear_message(conn, partman):
    conn.execute("CREATE TABLE plain (ts timestamptz)")
    make_events(conn, years=())
    cases = [
        (("register", "nope", "--column", "ts", "--interval", "year"), 1, "does not exist"),
        (("register", "plain", "--column", "ts", "--interval", "year"), 1, "not a partitioned table"),
        (("register", "events", "--column", "note", "--interval", "year"), 2, "partitioned by column"),
        (("register", "events", "--column", "ts", "--interval", "year", "--retention", "forever"), 2, "not a PostgreSQL interval"),
        (("register", "events", "--column", "ts", "--interval", "year", "--retention", "-1 year"), 2, "positive"),
        (("register", "events", "--column", "ts", "--interval", "year", "--timezone", "Mars/Base"), 2, "time zone"),
        (("unregister", "events"), 1, "not registered"),
        (("hold", "events_p19990101", "--reason", "x"), 1, "does not exist"),
        (("hold", "plain", "--reason", "x"), 1, "not a partition"),
        (("release", "events_default"), 1, "not under legal hold"),
        (("restore", "events", "events_p20100101"), 1, "nowhere to look"),
    ]
    for args, code, text in cases:
        r = partman(*args)
        assert r.code == code, (args, r.err)
        assert text in r.err, (args, r.err)
        assert "Traceback" not in r.err
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit 2
        partman("register", "events", "--column", "ts", "--interval", "decade")
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        partman("hold", "events_default")  # --reason is required
    assert partman("register", "events", "--column", "ts", "--interval", "year").code == 0
    r = partman("unregister", "events")
    assert r.code == 0 and "no longer maintains" in r.out
    assert partitions(conn) == {"events_default": "DEFAULT"}


def test_a_table_pg_partman_still_manages_is_refused(conn, partman):
    make_events(conn, years=())
    conn.execute("CREATE SCHEMA partman")
    conn.execute("CREATE TABLE partman.part_config (parent_table text)")
    conn.execute("INSERT INTO partman.part_config VALUES ('public.events')")
    r = partman("register", "events", "--column", "ts", "--interval", "year")
    assert r.code == 1 and "pg_partman" in r.err and "part_config" in r.err
    conn.execute("DELETE FROM partman.part_config")
    r = partman("register", "events", "--column", "ts", "--interval", "year")
    assert r.code == 0, r.err


def test_on_a_standby_maintain_does_nothing_and_says_so(pg_server, monkeypatch, partman, tmp_path):
    """A real standby: a fresh server started with standby.signal stays in recovery."""
    with standby_server(pg_server) as standby:
        monkeypatch.setenv("PARTMAN_DATABASE_URL", standby.dsn())
        from partman.lifecycle.maintain import maintain

        out = maintain(settings_for(standby.dsn()))
        assert out["standby"] is True and out["tables"] == {} and "standby" in out["message"]
        r = partman("maintain")
        assert r.code == 0, r.err
        assert "standby" in r.out and "nothing to do" in r.out


def test_a_range_partly_covered_by_a_misaligned_partition_is_reported_not_skipped(conn, partman):
    y = this_year(conn)
    make_events(conn, years=(y,), default=False)
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "2").code == 0
    assert partman("maintain").code == 0
    # someone replaces next year with a partition for its June only
    conn.execute(f"DROP TABLE events_p{y + 1}0101")
    conn.execute(f"CREATE TABLE events_june PARTITION OF events FOR VALUES FROM ('{y + 1}-06-01 00:00+00') "
                 f"TO ('{y + 1}-07-01 00:00+00')")
    r = partman("maintain")
    assert r.code == 1 and "have no partition" in r.err + r.out and "events_june" in r.err + r.out, r.out + r.err
    assert f"events_p{y + 1}0101" not in partitions(conn)
    # monthly partitions covering a yearly range are in nobody's way
    conn.execute("DROP TABLE events_june")
    for m in range(1, 13):
        nxt = f"{y + 1}-{m + 1:02d}-01" if m < 12 else f"{y + 2}-01-01"
        conn.execute(f"CREATE TABLE events_m{m} PARTITION OF events FOR VALUES FROM ('{y + 1}-{m:02d}-01 00:00+00') "
                     f"TO ('{nxt} 00:00+00')")
    r = partman("maintain")
    assert r.code == 0, r.out + r.err


def test_advice_names_an_odd_table_so_that_the_advised_command_works(conn, partman):
    import shlex

    make_events(conn, years=(2024,), name="dot.table")
    assert partman("register", 'public."dot.table"', "--column", "ts", "--interval", "year").code == 0
    conn.execute('DROP TABLE "dot.table"')
    r = partman("maintain")
    assert r.code == 1
    advised = next(line for line in (r.out + r.err).split("`") if line.startswith("partman unregister"))
    assert advised == """partman unregister 'public."dot.table"'"""
    r = partman(*shlex.split(advised)[1:])
    assert r.code == 0, r.err


def test_infinite_keys_stay_in_the_default_partition_and_the_pass_succeeds(conn, partman):
    """convert warns that +-infinity keys go to the default partition; maintenance must then leave
    them there (no range partition holds them) and report them, not fail every pass."""
    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) VALUES ('infinity'), ('-infinity'), ('2023-05-01')")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    for _ in range(2):
        r = partman("maintain")
        assert r.code == 0, r.err
    assert "2 rows remain in the default partition (2 with a NULL or infinite key" in r.out
    assert conn.execute("SELECT count(*) FROM events_p20230101").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 2
    r = partman("status", "events")  # no "run maintain" for rows maintenance cannot move
    assert "2 with a NULL or infinite key" in r.out and "run maintain" not in r.out
    assert json.loads(partman("status", "events", "--json").out)["tables"][0]["default_rows_unplaceable"] == 2


def test_timestamp_key_in_a_zone_moves_default_rows_and_reports_in_text(conn, partman):
    conn.execute("CREATE TABLE m (ts timestamp NOT NULL, v int) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE m_default PARTITION OF m DEFAULT")
    conn.execute("INSERT INTO m VALUES ('2024-02-29 23:30', 1), ('2024-03-01 00:00', 2), ('2024-03-31 23:59:59', 3)")
    r = partman("register", "m", "--column", "ts", "--interval", "month", "--premake", "0",
                "--timezone", "Europe/Berlin")
    assert r.code == 0, r.err
    r = partman("maintain")
    assert r.code == 0, r.err
    assert "moved 3 rows out of the default partition" in r.out and "m_p20240201" in r.out and "m_p20240301" in r.out
    parts = partitions(conn, "m")
    assert parts["m_p20240201"] == "FOR VALUES FROM ('2024-02-01 00:00:00') TO ('2024-03-01 00:00:00')"
    assert conn.execute("SELECT array_agg(v ORDER BY v) FROM m_p20240301").fetchone()[0] == [2, 3]
    assert conn.execute("SELECT count(*) FROM m_default").fetchone()[0] == 0


def test_blocked_default_move_puts_the_rows_back(conn, dsn, partman, monkeypatch):
    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) SELECT '2013-05-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 120) g")
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    monkeypatch.setenv("PARTMAN_LOCK_RETRIES", "2")
    monkeypatch.setenv("PARTMAN_BATCH_SIZE", "50")
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT count(*) FROM events_default")  # a long reader of the default partition
        r = partman("maintain", "--lock-timeout", "100")
        # the rows never disappeared from view, even for the reader's next statement
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 120
        reader.rollback()
    assert r.code == 1 and "blocked" in r.out
    assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 120
    assert conn.execute("SELECT to_regclass('public.events_p20130101')").fetchone()[0] is None
    r = partman("maintain")
    assert r.code == 0, r.err
    assert conn.execute("SELECT count(*) FROM events_p20130101").fetchone()[0] == 120


def test_rows_moved_out_of_the_default_count_once_in_the_activity_statistics_after_the_analyze(conn, partman):
    """The pass moves the default's rows and then analyzes the parent (and so its partitions). The
    session hands the moves to the server's activity statistics before that ANALYZE, so once it
    has ended the new partition's `n_live_tup` is its row count and nothing counts as changed
    since the ANALYZE (autovacuum would analyze both partitions again for nothing)."""
    if conn.info.server_version < 150000:
        pytest.skip("PostgreSQL 14 sends its statistics on its own schedule (no pg_stat_force_next_flush)")
    make_events(conn, years=())
    conn.execute("INSERT INTO events (ts) SELECT '2013-05-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 120) g")
    conn.execute("SELECT pg_stat_force_next_flush()")  # this test's own inserts, counted now
    assert partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "0").code == 0
    r = partman("maintain")
    assert r.code == 0, r.err
    wait_for_partman_sessions_to_end(conn)
    stats = conn.execute("SELECT relname, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables "
                         "WHERE relname IN ('events_p20130101', 'events_default') ORDER BY 1").fetchall()
    assert stats == [("events_default", 0, 0), ("events_p20130101", 120, 0)]


@pytest.mark.parametrize("published", [False, True], ids=["unpublished", "published"])
def test_default_rows_of_an_append_only_table_move_without_superuser(conn, dsn, partman, published):
    """The owner suffices: the default partition's triggers are off for the move's own
    transactions only, so an append-only guard does not refuse it and a BEFORE INSERT trigger
    (a hash chain) does not rewrite the rows. So they are on the new partition when a published
    table's rows are inserted there after its ATTACH (test_convert_carry has the subscriber)."""
    role = "ledger_owner_" + ("pub" if published else "plain")  # roles outlive the test's database
    conn.execute((
        """
        CREATE ROLE ledger_owner LOGIN PASSWORD 'owner-pw-1';
        GRANT CREATE ON SCHEMA public TO ledger_owner;
        GRANT CREATE ON DATABASE """ + conn.info.dbname + """ TO ledger_owner;
        SET ROLE ledger_owner;
        CREATE TABLE led (id bigint NOT NULL, ts timestamptz NOT NULL, stamp text) PARTITION BY RANGE (ts);
        CREATE TABLE led_default PARTITION OF led DEFAULT;
        CREATE FUNCTION led_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'append-only'; END $$;
        CREATE FUNCTION led_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.stamp := 'fired'; RETURN NEW; END $$;
        CREATE TRIGGER guard BEFORE UPDATE OR DELETE ON led FOR EACH ROW EXECUTE FUNCTION led_guard();
        CREATE TRIGGER stamp BEFORE INSERT ON led FOR EACH ROW EXECUTE FUNCTION led_stamp();
        ALTER TABLE led DISABLE TRIGGER stamp;
        INSERT INTO led SELECT g, timestamptz '2019-05-01' + g * interval '1 hour', 'original' FROM generate_series(1, 500) g;
        ALTER TABLE led ENABLE TRIGGER stamp;
        RESET ROLE;
        """).replace("ledger_owner", role)
    )
    if published:
        conn.execute("ALTER TABLE led ADD PRIMARY KEY (id, ts);"  # a replica identity, or no DELETE is allowed
                     "CREATE PUBLICATION led_feed FOR TABLE led WITH (publish_via_partition_root = true)")
    owner = psycopg.conninfo.make_conninfo(dsn, user=role, password="owner-pw-1")
    r = partman("register", "led", "--column", "ts", "--interval", "year", "--premake", "1", "--dsn", owner)
    assert r.code == 0, r.err
    r = partman("maintain", "--json", "--dsn", owner)
    assert r.code == 0, r.err
    moved = [json.loads(line) for line in r.err.splitlines() if "default_rows_moved" in line]
    assert [(m["rows"], m["published"]) for m in moved] == [(500, published)]
    assert conn.execute("SELECT count(*) FROM led_default").fetchone()[0] == 0
    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE stamp = 'original') FROM led_p20190101").fetchone() == (500, 500)
    # the guard and the stamp trigger are enabled again everywhere
    states = conn.execute("SELECT DISTINCT tgenabled::text FROM pg_trigger WHERE tgname IN ('guard', 'stamp')").fetchall()
    assert states == [("O",)]
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM led WHERE id = 1")


def test_a_publication_of_all_tables_is_named_when_the_catalog_is_made(conn, partman):
    """A publication FOR ALL TABLES publishes partman's catalog from its first row on, and a
    subscriber without those tables stops replicating: the command that makes the catalog says
    so, once."""
    make_events(conn, years=(2022,))
    conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    r = partman("register", "events", "--column", "ts", "--interval", "year")
    assert r.code == 0, r.err
    said = [json.loads(line) for line in r.err.splitlines() if "catalog_published" in line]
    assert len(said) == 1 and said[0]["publications"] == ["everything"]
    assert "pg_dump --schema-only --schema partman_catalog" in said[0]["warning"]
    r = partman("register", "events", "--column", "ts", "--interval", "year", "--premake", "4")
    assert r.code == 0 and "catalog_published" not in r.err


def test_maintain_with_nothing_registered_does_nothing(conn, partman):
    r = partman("maintain")
    assert r.code == 0 and "nothing to do" in r.out
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman%'").fetchone()[0] == 0
