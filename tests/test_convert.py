"""`partman convert` on a real PostgreSQL, with real concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import psycopg
import pytest

from partman.db import QualifiedName
from partman.sample_ledger import verify_chain

from helpers import (LEDGER, Writers, partman_command, ids, is_partitioned, latest_phase, log_events, make_ledger, relations_in,
                     wait_for_partman_sessions_to_end, wait_for_phase)

pytestmark = pytest.mark.conversion

CONVERT = ["convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "year"]


def test_ledger_converts_under_live_writers_losing_nothing(conn, dsn, partman):
    make_ledger(conn, 3000)
    with Writers(dsn, LEDGER, threads=2) as w:
        r = partman(*CONVERT, "--batch-size", "250", "--sleep", "0.02", "--retention", "10 years")
        w.stop()
    assert r.code == 0, r.err
    assert not w.errors, w.errors[:3]
    assert w.committed, "the writers never got a row in"
    assert is_partitioned(conn, LEDGER)
    # every committed row exactly once, byte-identical to the original for the seeded ones
    got = ids(conn, LEDGER)
    assert len(got) == len(set(got)) == 3000 + len(w.committed)
    assert set(w.committed) <= set(got)
    diff = conn.execute(
        "SELECT count(*) FROM audit_log_ledger_old o LEFT JOIN audit_log_ledger n USING (id) "
        "WHERE n.id IS NULL OR (o.*)::text <> (n.*)::text"
    ).fetchone()[0]
    assert diff == 0
    # the chain is intact and new rows chain onto the last copied one
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) VALUES ('t', 'after', '', '')")
    assert verify_chain(conn, LEDGER)["ok"]
    # the append-only trigger came along, enabled
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM audit_log_ledger WHERE id = 1")
    # partitions cover every row's key plus premake future years, and a default partition
    names = relations_in(conn, "public")
    assert "audit_log_ledger_p20140101" in names and "audit_log_ledger_default" in names
    assert "audit_log_ledger_p20290101" in names  # 2026 + 3
    assert conn.execute("SELECT count(*) FROM audit_log_ledger_default").fetchone()[0] == 0
    # registered, with retention
    reg = conn.execute(
        "SELECT \"interval\", premake, retention::text, old_table_name, verified_at IS NOT NULL "
        "FROM partman_catalog.managed_table"
    ).fetchone()
    assert reg == ("year", 3, "10 years", "audit_log_ledger_old", True)
    # the primary key was widened to include the key, and the plan said so
    pk = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'audit_log_ledger'::regclass AND contype = 'p'"
    ).fetchone()[0]
    assert "event_timestamp" in pk and "id" in pk
    assert "key widened        primary key audit_log_ledger_pkey (id) becomes (id, event_timestamp)" in r.out


SHADOW_PARTITION_INDEXES = (
    "SELECT count(*) FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname LIKE 'partman_catalog_w%' AND t.relispartition"
)


@pytest.mark.parametrize("sleep, before_copy", [("0.01", True), ("0", False)], ids=["paced", "full-speed"])
def test_paced_conversion_indexes_the_empty_partitions_before_the_copy(conn, partman, partman_proc, sleep, before_copy):
    """Paced (--sleep > 0), the partitions get their indexes while empty and the copy keeps them
    up to date, so no index build runs after the copy; at --sleep 0 they are built after it. Either
    way the new table has each of the original's indexes once, on every partition."""
    make_ledger(conn, 2000)
    indexes = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'audit_log_ledger'::regclass").fetchone()[0]
    killed = partman_proc(*CONVERT, "--batch-size", "200", "--sleep", sleep,
                          extra_env={"PARTMAN_FAILPOINTS": "convert.copy.after_batch=2:kill"})
    assert killed.code == -9, killed.err[-500:]
    assert latest_phase(conn) == "copy"
    partitions = conn.execute(
        "SELECT count(*) FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname LIKE 'partman_catalog_w%' AND t.relispartition AND t.relkind = 'r'"
    ).fetchone()[0]
    assert partitions > 10
    during_copy = conn.execute(SHADOW_PARTITION_INDEXES).fetchone()[0]
    assert during_copy == (partitions * indexes if before_copy else 0)

    r = partman(*CONVERT, "--batch-size", "200", "--sleep", sleep)
    assert r.code == 0, r.err
    assert len(ids(conn, LEDGER)) == 2000
    per_partition = conn.execute(
        "SELECT count(DISTINCT i.inhrelid), min(n), max(n) FROM pg_inherits i "
        "CROSS JOIN LATERAL (SELECT count(*) AS n FROM pg_index x WHERE x.indrelid = i.inhrelid) c "
        "WHERE i.inhparent = 'audit_log_ledger'::regclass"
    ).fetchone()
    assert per_partition == (partitions, indexes, indexes)
    names = sorted(r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = 'audit_log_ledger'::regclass"))
    old_names = sorted(r[0] for r in conn.execute(
        "SELECT replace(c.relname, '_old', '') FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "WHERE x.indrelid = 'audit_log_ledger_old'::regclass"))
    assert names == old_names


@pytest.mark.parametrize("workers", ["2", "1"])
def test_the_analyze_reads_every_partition_once_however_many_connections_share_it(conn, partman, monkeypatch, workers):
    """At full speed two connections share the ANALYZE: one analyzes its half of the partitions,
    the other the partitioned table's own sample and the other half, passing over the first
    half's. Every partition is analyzed exactly once and the new table has its whole-table
    statistics, as with one connection."""
    make_ledger(conn, 3000)
    monkeypatch.setenv("PARTMAN_CONVERT_WORKERS", workers)
    r = partman(*CONVERT, "--sleep", "0", "--yes")
    assert r.code == 0, r.err
    counts = conn.execute(
        "SELECT c.relname, s.analyze_count, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE i.inhparent = 'audit_log_ledger'::regclass").fetchall()
    assert len(counts) > 10 and all(n == 1 for _, n, _ in counts), counts
    assert sum(rows for *_, rows in counts) == 3000
    whole = conn.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'audit_log_ledger' "
                         "AND inherited").fetchone()[0]
    assert whole == 7  # every column of the ledger


def test_the_analyze_halves_weigh_the_partitions_by_the_rows_they_hold(conn):
    """The two ANALYZE jobs are split by each partition's live rows (the activity statistics the
    copy's sessions hand over): ten partitions of 5,000 rows and the parent's own sample of 30,000
    make 8 | 2 and the parent, where weighing the parent's sample like one partition made 6 | 4.
    Without those statistics the partitions' pages stand in for their rows."""
    if conn.info.server_version < 150000:
        pytest.skip("PostgreSQL 14 sends its statistics on its own schedule (no pg_stat_force_next_flush)")
    from partman.convert.indexes import analyze_halves
    from partman.db import flush_statistics

    conn.execute("CREATE TABLE halves (n int NOT NULL, v text) PARTITION BY RANGE (n)")
    for i in range(10):
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} PARTITION OF halves FOR VALUES FROM ({}) TO ({})").format(
            psycopg.sql.Identifier(f"halves_{i}"), i * 5000, (i + 1) * 5000))
    conn.execute("CREATE TABLE halves_future PARTITION OF halves FOR VALUES FROM (50000) TO (60000)")
    conn.execute("INSERT INTO halves SELECT g, md5(g::text) FROM generate_series(0, 49999) g")
    flush_statistics(conn)
    first, second = analyze_halves(conn, QualifiedName("public", "halves"))
    assert [p.name for p in first] == [f"halves_{i}" for i in range(8)]
    assert [p.name for p in second] == ["halves_8", "halves_9", "halves_future"]
    conn.execute("SELECT pg_stat_reset()")  # as after a crash: the pages stand in, the parent like one partition
    first, second = analyze_halves(conn, QualifiedName("public", "halves"))
    assert [p.name for p in first] == [f"halves_{i}" for i in range(5)] and len(second) == 6


@pytest.mark.parametrize("pace", [["--sleep", "0"], ["--sleep", "0.001"]], ids=["full-speed", "paced"])
def test_the_partitions_activity_statistics_count_each_copied_row_once(conn, partman, pace):
    """A session hands the rows it inserted to the server's activity statistics when it goes
    idle, at most once a second. The copy's connections hand theirs over before the ANALYZE, so
    after the conversion (its sessions gone) each partition's `n_live_tup` is its row count, not
    twice it, and no row counts as changed since its ANALYZE (autovacuum would analyze those
    partitions again right after the conversion)."""
    if conn.info.server_version < 150000:
        pytest.skip("PostgreSQL 14 sends its statistics on its own schedule (no pg_stat_force_next_flush)")
    make_ledger(conn, 3000)
    r = partman(*CONVERT, "--batch-size", "100", *pace, "--yes")
    assert r.code == 0, r.err
    if pace[1] == "0":  # the copy was split between two connections
        assert len([line for line in r.err.splitlines() if '"copy_range"' in line]) == 2, r.err
    wait_for_partman_sessions_to_end(conn)
    stats = conn.execute(
        "SELECT c.relname, s.n_live_tup, s.n_mod_since_analyze, s.analyze_count FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE i.inhparent = 'audit_log_ledger'::regclass ORDER BY 1").fetchall()
    rows = {name: conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(name)))
            .fetchone()[0] for name, *_ in stats}
    assert sum(rows.values()) == 3000
    assert [(name, live, changed, analyzed) for name, live, changed, analyzed in stats] == \
        [(name, rows[name], 0, 1) for name, *_ in stats]


def test_batches_of_wide_rows_keep_their_wal_within_the_wal_buffers(conn, partman):
    """At full speed a batch of 10,000 rows of ~1.5 kB writes ~16 MB of WAL, more than the server's
    WAL buffers hold: a batch that fills them waits inside its transaction for the WAL writer's
    fsync. The copy holds a batch's WAL to half of the buffers (the first batch by the table's
    bytes per row, the others by the WAL the last one wrote), and waits for room between its
    transactions instead (walroom.py)."""
    buffers = conn.execute("SELECT pg_size_bytes(current_setting('wal_buffers'))").fetchone()[0]
    conn.execute(
        """
        CREATE TABLE wide (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v text NOT NULL);
        INSERT INTO wide SELECT g, '2020-01-01'::timestamptz + g * interval '1 hour',
               (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 47) i)
        FROM generate_series(1, 30000) g;
        ANALYZE wide;
        """
    )
    r = partman("convert", "wide", "--column", "ts", "--interval", "year", "--sleep", "0", "--yes")
    assert r.code == 0, r.err
    ranges = [json.loads(line) for line in r.err.splitlines() if '"copy_range"' in line]
    assert len(ranges) == 1 and ranges[0]["wal_room"], ranges  # one worker (too few rows to split the range)
    # without the room: 10,000 + 10,000 + 10,000 rows, 3 batches; with it, the first one too, at
    # most half of the buffers' worth of WAL (rows of ~1.6 kB) per batch
    assert ranges[0]["batches"] >= 30000 // (buffers // 2 // 1600), (buffers, ranges)
    assert conn.execute("SELECT count(*) FROM wide").fetchone()[0] == 30000
    # the verification reports its progress too: rows of the original compared so far
    verifying = [e for e in map(json.loads, (x for x in r.err.splitlines() if '"progress"' in x)) if e["phase"] == "verify"]
    assert verifying and 0 < verifying[0]["rows"] <= 30000 and verifying[0]["total_estimate"] == 30000, verifying


@pytest.mark.parametrize("rows", [1000, 1037])
def test_batches_end_at_the_nth_key_across_gaps_in_a_composite_key(conn, partman, rows):
    """Each batch first looks up its last key (the n-th after the cursor, or the range's last)
    and then inserts up to it: with a composite key whose values jump and whose text part sorts
    by the column's collation, every row is copied once by the copy itself (nothing for the
    verification to repair), in exactly rows / batch-size batches when nothing is slow, whether
    the rows end on a batch's boundary (1000) or not (1037)."""
    conn.execute("CREATE TABLE gappy (tenant text, n bigint, ts timestamptz NOT NULL, v text, PRIMARY KEY (tenant, n))")
    conn.execute(
        "INSERT INTO gappy SELECT (ARRAY['b', 'B', 'a', 'Z', 'aa'])[1 + g %% 5], g::bigint * g * 7919 %% 1000003, "
        "'2021-01-01'::timestamptz + g * interval '7 hours', md5(g::text) FROM generate_series(1, %s) g", (rows,))
    r = partman("convert", "gappy", "--column", "ts", "--interval", "month", "--batch-size", "100",
                "--sleep", "0", "--yes", "--json")
    assert r.code == 0, r.err
    figures = json.loads(r.out)["verify"]
    assert figures["missing_or_different"] == 0 and figures["repaired"] == 0, figures
    ranges = [json.loads(line) for line in r.err.splitlines() if '"copy_range"' in line]
    assert len(ranges) == 1 and ranges[0]["batches"] >= -(-rows // 100), ranges  # more only if a batch was slow
    assert conn.execute("SELECT rows_copied FROM partman_catalog.conversion").fetchone()[0] == rows
    differ = conn.execute(
        "SELECT count(*) FROM gappy_old o FULL JOIN gappy n USING (tenant, n) "
        "WHERE o.n IS NULL OR n.n IS NULL OR (o.ts, o.v) IS DISTINCT FROM (n.ts, n.v)").fetchone()[0]
    assert differ == 0 and conn.execute("SELECT count(*) FROM gappy").fetchone()[0] == rows


def test_out_of_order_commits_are_not_lost(conn, dsn, partman):
    conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, note text)")
    conn.execute(
        "INSERT INTO events (ts, note) SELECT timestamptz '2020-01-01' + g * interval '1 hour', 'seed' "
        "FROM generate_series(1, 4000) g"
    )
    t = QualifiedName("public", "events")
    # some writers take an id, hold the transaction open, and commit after later ids are visible
    with Writers(dsn, t, threads=3, ledger=False, slow_every=3, slow_hold=0.25, pause=0.005) as w:
        r = partman("convert", "events", "--column", "ts", "--interval", "month", "--batch-size", "200", "--sleep", "0.03")
        w.stop()
    assert r.code == 0, r.err
    assert not w.errors
    got = ids(conn, t)
    assert len(got) == len(set(got)) == 4000 + len(w.committed)
    assert set(w.committed) <= set(got)


def test_dry_run_prints_the_plan_and_changes_nothing(conn, partman):
    make_ledger(conn, 500)
    conn.execute("ALTER TABLE audit_log_ledger ALTER COLUMN actor DROP NOT NULL")
    before = relations_in(conn, "public")
    r = partman(*CONVERT, "--dry-run")
    assert r.code == 0, r.err
    assert "audit_log_ledger_p20140101" in r.out and "CREATE TABLE" in r.out
    assert "PRIMARY KEY" in r.out and "event_timestamp" in r.out
    r2 = partman(*CONVERT, "--dry-run", "--json")
    plan = json.loads(r2.out)
    assert plan["widened_keys"] and plan["partitions"][0]["name"] == "audit_log_ledger_p20140101"
    assert plan["rows_estimate"] >= 0 and plan["disk_needed_bytes"] > 0
    # paced by default: the indexes come before the copy, and the plan says when they are made
    assert plan["indexes_before_copy"] is True and "-- indexes: on the empty partitions, before the copy" in r.out
    fast = partman(*CONVERT, "--dry-run", "--sleep", "0")
    assert "-- indexes: built after the copy" in fast.out
    # at full speed autovacuum stays off the partitions until the swap; paced, it is left alone
    assert "WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)" in fast.out
    assert "autovacuum_enabled = false" not in r.out
    assert "RESET (autovacuum_enabled" not in r.out and "autovacuum" not in json.dumps(plan["sql"])
    assert fast.out.count("RESET (autovacuum_enabled, toast.autovacuum_enabled)") == len(plan["partitions"]) + 1
    assert json.loads(partman(*CONVERT, "--dry-run", "--json", "--sleep", "0").out)["indexes_before_copy"] is False
    assert relations_in(conn, "public") == before
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman%'").fetchone()[0] == 0



def test_the_plan_names_the_partitions_already_past_retention_with_their_rows(conn, partman):
    """`--retention '10 years' --retention-action drop` on a ledger from 2014: the first maintenance
    pass after the swap drops 2014 and 2015 for good. The dry-run (text and JSON) names them, with
    their rows, what the action does, and how to keep one, by the rule maintain applies."""
    make_ledger(conn, 600)
    counts = dict(conn.execute("SELECT 'audit_log_ledger_p' || extract(year FROM event_timestamp AT TIME ZONE 'UTC') "
                               "|| '0101', count(*) FROM audit_log_ledger GROUP BY 1").fetchall())
    cutoff_year = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    due = [f"audit_log_ledger_p{y}0101" for y in range(2014, cutoff_year)]
    assert due == ["audit_log_ledger_p20140101", "audit_log_ledger_p20150101"]  # 2026: as the audit found
    r = partman(*CONVERT, "--retention", "10 years", "--retention-action", "drop", "--dry-run")
    assert r.code == 0, r.err
    (line,) = [x for x in r.out.splitlines() if x.startswith("-- PAST RETENTION: ")]
    for name in due:
        assert f"{name} ({counts[name]:,} rows)" in line, line
        assert f"{name} " in r.out and f"past retention: {counts[name]:,} rows, removed (drop) by the first pass" in r.out
    assert "audit_log_ledger_p20160101 (" not in line
    assert f"{sum(counts[n] for n in due):,} rows in all" in line
    assert "their rows are deleted for good" in line and "partman hold public.audit_log_ledger_p20140101" in line
    assert "partman register public.audit_log_ledger --column event_timestamp --interval year --retention '10 years'" in line
    plan = json.loads(partman(*CONVERT, "--retention", "10 years", "--retention-action", "archive", "--dry-run",
                              "--json").out)["past_retention"]
    assert [(p["partition"], p["rows"]) for p in plan["partitions"]] == [(n, counts[n]) for n in due]
    assert plan["action"] == "archive" and "S3" in plan["effect"] and plan["rows"] == sum(counts[n] for n in due)
    detach = partman(*CONVERT, "--retention", "10 years", "--retention-action", "detach", "--dry-run").out
    assert "detaches them: each is left as a plain table" in detach
    # none past it: said so, and nothing listed; no retention: nothing at all
    r = partman(*CONVERT, "--retention", "20 years", "--dry-run")
    assert "no planned partition is past it yet" in r.out and "PAST RETENTION" not in r.out
    assert json.loads(partman(*CONVERT, "--dry-run", "--json").out)["past_retention"] is None
    # what maintain removes after the conversion is what the plan named
    assert partman(*CONVERT, "--retention", "10 years", "--retention-action", "drop", "--yes", "--sleep", "0").code == 0
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["tables"]["public.audit_log_ledger"]["retention"]["removed"]
    assert [(x["partition"], x["rows"]) for x in removed] == [(n, counts[n]) for n in due]


def test_a_flags_own_name_is_an_environment_variable_too(conn, dsn, env, partman_proc, pg_server):
    """--lock-timeout sets lock_timeout_ms and --dsn database_url: PARTMAN_LOCK_TIMEOUT and PARTMAN_DSN
    count as well as PARTMAN_LOCK_TIMEOUT_MS and PARTMAN_DATABASE_URL (which win), the flag over all."""
    make_ledger(conn, 200)
    r = partman_proc(*CONVERT, "--dry-run", extra_env={"PARTMAN_LOCK_TIMEOUT": "1234"})
    assert r.code == 0 and "with lock_timeout 1234 ms per attempt" in r.out, r.err
    both = {"PARTMAN_LOCK_TIMEOUT": "1234", "PARTMAN_LOCK_TIMEOUT_MS": "777"}
    assert "with lock_timeout 777 ms per attempt" in partman_proc(*CONVERT, "--dry-run", extra_env=both).out
    assert "with lock_timeout 55 ms per attempt" in partman_proc(*CONVERT, "--dry-run", "--lock-timeout", "55",
                                                                 extra_env=both).out
    e = {k: v for k, v in env.items() if k != "PARTMAN_DATABASE_URL"}
    p = subprocess.run([partman_command(), *CONVERT, "--dry-run"], env={**e, "PARTMAN_DSN": dsn},
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    pg_server.outputs.extend([p.stdout, p.stderr])
    assert p.returncode == 0 and "audit_log_ledger_p20140101" in p.stdout, p.stderr


def _convert_on_a_terminal(env: dict[str, str], answer: bytes, *args: str) -> subprocess.CompletedProcess:
    """The real command with a terminal as stdin (as a user runs it) and stdout/stderr captured apart."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([partman_command(), *CONVERT, *args], stdin=slave, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
        os.close(slave)
        slave = -1
        os.write(master, answer)  # the terminal holds the line until the prompt reads it
        out, err = p.communicate(timeout=300)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_the_confirmation_goes_to_stderr_after_a_summary_and_stdout_stays_the_result(conn, env, pg_server):
    make_ledger(conn, 300)
    no = _convert_on_a_terminal(env, b"n\n", "--json")
    pg_server.outputs.extend([no.stdout, no.stderr])
    assert no.returncode == 1 and no.stdout == "" and "cancelled at the prompt" in no.stderr, no.stderr
    assert not is_partitioned(conn, LEDGER)
    yes = _convert_on_a_terminal(env, b"y\n", "--json", "--sleep", "0")
    pg_server.outputs.extend([yes.stdout, yes.stderr])
    assert yes.returncode == 0, yes.stderr
    assert "[y/N]" not in yes.stdout
    assert json.loads(yes.stdout)["status"] == "done"  # one JSON document, nothing else
    for r in (no, yes):  # what is confirmed comes before the question, on stderr
        summary = r.stderr.index("partman convert public.audit_log_ledger (--dry-run shows the whole plan):")
        assert summary < r.stderr.index("Convert public.audit_log_ledger into ") < r.stderr.index("[y/N] ")
        assert "year partitions from 2014-01-01 to " in r.stderr and "kept as public.audit_log_ledger_old" in r.stderr
    assert is_partitioned(conn, LEDGER)


def test_the_confirmation_summary_names_the_partitions_past_retention(conn, env, pg_server):
    """On a terminal, what is confirmed says which partitions the first pass removes at once."""
    make_ledger(conn, 300)
    no = _convert_on_a_terminal(env, b"n\n", "--retention", "10 years", "--retention-action", "archive")
    pg_server.outputs.extend([no.stdout, no.stderr])
    assert no.returncode == 1 and "cancelled at the prompt" in no.stderr, no.stderr
    summary = no.stderr[:no.stderr.index("[y/N] ")]
    assert "PAST RETENTION: 2 partitions of public.audit_log_ledger are already past its retention of 10 years" in summary
    assert "audit_log_ledger_p20140101 (" in summary and "audit_log_ledger_p20150101 (" in summary
    assert "archives each to S3" in summary and "partman hold" in summary
    assert not is_partitioned(conn, LEDGER)


def test_the_paced_estimate_counts_the_verifications_pauses(conn):
    """The dry-run's expected duration at the default pace covers the verification after the swap
    too: it pauses after each of its ranges (~2,000 rows each), as the copy does after each
    batch. For the 44M-row ledger that is ~22,000 pauses more than the copy's."""
    import dataclasses

    from partman.convert.plan import Options
    from partman.convert.run import make_plan
    from partman.settings import Settings

    make_ledger(conn, 500)
    ledger = dataclasses.replace(make_plan(conn, Settings(), LEDGER, Options(column="event_timestamp"))[0],
                                 rows_estimate=44_000_000)

    def at(sleep: float):
        return dataclasses.replace(ledger, options=dataclasses.replace(ledger.options, sleep=sleep))

    per_second_of_pause = at(1.1).expected_seconds - at(0.1).expected_seconds  # seconds per second of --sleep
    assert per_second_of_pause == pytest.approx(at(0.1)._batches() + 22_000)
    assert at(0.1).expected_seconds_max - at(0.1).expected_seconds == pytest.approx(1.9 * per_second_of_pause)

def test_sequences_identity_views_and_generated_columns_survive(conn, partman):
    conn.execute(
        """
        CREATE TABLE orders (
            id bigserial PRIMARY KEY,
            ref bigint GENERATED ALWAYS AS IDENTITY,
            created date NOT NULL DEFAULT current_date,
            amount numeric(10,2) NOT NULL CHECK (amount >= 0),
            doubled numeric GENERATED ALWAYS AS (amount * 2) STORED,
            note text DEFAULT 'none'
        );
        INSERT INTO orders (created, amount) SELECT date '2021-01-01' + g, g FROM generate_series(1, 900) g;
        CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 800;
        CREATE MATERIALIZED VIEW order_count AS SELECT count(*) AS n FROM orders;
        CREATE FUNCTION order_total() RETURNS numeric LANGUAGE sql BEGIN ATOMIC SELECT sum(amount) FROM orders; END;
        COMMENT ON TABLE orders IS 'the orders';
        """
    )
    plan = partman("convert", "orders", "--column", "created", "--interval", "quarter", "--dry-run").out
    assert "IDENTITY column ref of public.orders has no index" in plan  # the swap would read the table to set it
    r = partman("convert", "orders", "--column", "created", "--interval", "quarter", "--sleep", "0")
    assert r.code == 0, r.err
    conn.execute("DROP TABLE orders_old")
    conn.execute("INSERT INTO orders (amount) VALUES (5000)")
    row = conn.execute("SELECT id, ref, doubled, note FROM orders WHERE amount = 5000").fetchone()
    assert row[0] > 900 and row[1] > 900 and row[2] == 10000 and row[3] == "none"
    assert conn.execute("SELECT count(*) FROM big_orders").fetchone()[0] == 101
    assert conn.execute("SELECT n FROM order_count").fetchone()[0] == 900
    assert conn.execute("SELECT order_total()").fetchone()[0] == sum(range(1, 901)) + 5000  # BEGIN ATOMIC body re-bound
    conn.execute("REFRESH MATERIALIZED VIEW order_count")
    assert conn.execute("SELECT n FROM order_count").fetchone()[0] == 901
    assert conn.execute("SELECT obj_description('orders'::regclass)").fetchone()[0] == "the orders"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO orders (amount) VALUES (-1)")


@pytest.mark.parametrize(
    "setup, args, words",
    [
        ("", ["nosuch", "--column", "ts"], "does not exist"),
        ("CREATE TABLE t (id int PRIMARY KEY, ts timestamptz, n int)", ["t", "--column", "n"], "n"),
        ("CREATE TABLE t (id int PRIMARY KEY, ts timestamptz)", ["t", "--column", "nope"], "nope"),
        (
            "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz NOT NULL); "
            "CREATE TABLE child (id int PRIMARY KEY, t_id int REFERENCES t(id))",
            ["t", "--column", "ts"],
            "child",
        ),
        (
            "CREATE TABLE t (id int, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)",
            ["t", "--column", "ts"],
            "partitioned",
        ),
        (
            "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz NOT NULL); CREATE TABLE t_old (x int)",
            ["t", "--column", "ts"],
            "t_old already exist",
        ),
        (
            "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz NOT NULL); "
            "CREATE MATERIALIZED VIEW t_daily AS SELECT ts::date AS day, count(*) FROM t GROUP BY 1; "
            "CREATE VIEW t_busy AS SELECT * FROM t_daily WHERE count > 10",
            ["t", "--column", "ts"],
            "is read by public.t_busy",
        ),
        (  # PostgreSQL refuses it on a partitioned table: found in the plan, not in the swap hours later
            "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz NOT NULL); "
            "CREATE FUNCTION t_audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$; "
            "CREATE TRIGGER t_audit AFTER INSERT ON t REFERENCING NEW TABLE AS added FOR EACH ROW "
            "EXECUTE FUNCTION t_audit()",
            ["t", "--column", "ts"],
            "trigger t_audit is a FOR EACH ROW trigger with transition tables",
        ),
    ],
)
def test_bad_input_is_refused_cleanly(conn, partman, setup, args, words):
    if setup:
        conn.execute(setup)
    before = relations_in(conn, "public")
    r = partman("convert", *args, "--yes")
    assert r.code == 1
    assert words in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1  # one paragraph
    assert relations_in(conn, "public") == before


def test_wrong_password_is_reported_without_the_password(dsn, partman, pg_server):
    bad = psycopg.conninfo.make_conninfo(dsn, password="not-the-password-xyz")
    r = partman("convert", "t", "--column", "ts", "--dsn", bad)
    assert r.code == 1
    assert "not-the-password-xyz" not in r.err + r.out
    assert "Traceback" not in r.err


@pytest.mark.parametrize("command", [("status",), ("convert", "t", "--column", "ts", "--dry-run"), ("run",)])
def test_a_connection_string_libpq_cannot_parse_is_a_usage_error_without_the_password(partman, command):
    # libpq quotes an invalid percent-escape (here the whole password) in its error message
    r = partman(*command, "--dsn", "postgresql://postgres:Sec%ret-xyz@127.0.0.1:1/db")
    assert r.code == 2 and "is not valid" in r.err and "%25" in r.err
    assert "Sec%ret" not in r.err + r.out and "Traceback" not in r.err
    if command != ("run",):  # a key=value string that parses: a connection failure, still without the password
        r = partman(*command, "--dsn", "host=127.0.0.1 port=1 password='Sec%ret-xyz' connect_timeout=2")
        assert r.code == 1 and "Could not connect" in r.err
        assert "Sec%ret" not in r.err + r.out and "Traceback" not in r.err


@pytest.mark.parametrize("hosts", ["127.0.0.1", "127.0.0.1,127.0.0.1"])
def test_a_refused_connection_reads_as_sentences(hosts):
    # libpq's message has a line per sentence ("... Connection refused" / "Is the server running ...?")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    ports = ",".join([str(port)] * len(hosts.split(",")))
    p = subprocess.run([partman_command(), "status", "--dsn", f"host={hosts} port={ports} connect_timeout=5"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one paragraph
    assert "Connection refused. Is the server running" in p.stderr, p.stderr
    assert "?." not in p.stderr and ".." not in p.stderr and "\t" not in p.stderr, p.stderr
    assert p.stderr.rstrip().endswith("are right."), p.stderr


@pytest.mark.parametrize("flag, value, words", [("--retention", "bogus", "not a PostgreSQL interval"),
                                                ("--retention", "-1 year", "positive"),
                                                ("--drop-old-after", "bogus", "not a positive duration"),
                                                ("--drop-old-after", "0s", "not a positive duration")])
def test_a_bad_retention_or_drop_old_after_is_a_usage_error_before_anything_is_made(conn, partman, flag, value, words):
    make_ledger(conn, 50)
    before = relations_in(conn, "public")
    for extra in (["--dry-run"], ["--yes"]):
        r = partman(*CONVERT, flag, value, *extra)
        assert r.code == 2 and words in r.err and value in r.err, r.err
        assert r.out == "" and "Traceback" not in r.err
    assert relations_in(conn, "public") == before
    assert partman(*CONVERT, flag, {"--retention": "10 years", "--drop-old-after": "7d"}[flag], "--dry-run").code == 0


def test_too_many_partitions_are_refused_with_a_short_plan_that_names_both_causes(conn, partman):
    make_ledger(conn, 50)  # 2014 .. 2026: ~4,600 days
    r = partman("convert", "audit_log_ledger", "--column", "event_timestamp", "--interval", "day", "--dry-run")
    assert r.code == 1 and "at most 2000" in r.err and "longer --interval or a smaller --premake" in r.err
    assert len(r.out.splitlines()) < 200  # not one line per partition
    r = partman("convert", "audit_log_ledger", "--column", "event_timestamp", "--premake", "100000", "--dry-run")
    assert r.code == 2 and "premake" in r.err


def test_conversion_flags_have_env_vars_and_a_flag_wins(conn, partman, monkeypatch):
    make_ledger(conn, 50)
    monkeypatch.setenv("PARTMAN_INTERVAL", "month")
    monkeypatch.setenv("PARTMAN_RETENTION", "5 years")
    monkeypatch.setenv("PARTMAN_RETENTION_ACTION", "detach")
    monkeypatch.setenv("PARTMAN_DROP_OLD_AFTER", "7d")
    base = ["convert", "public.audit_log_ledger", "--column", "event_timestamp", "--dry-run", "--json"]
    plan = json.loads(partman(*base).out)
    assert (plan["interval"], plan["retention"], plan["retention_action"], plan["drop_old_after"]) == (
        "month", "5 years", "detach", "7d")
    plan = json.loads(partman(*base, "--interval", "quarter", "--retention", "10 years", "--drop-old-after", "1d").out)
    assert (plan["interval"], plan["retention"], plan["drop_old_after"]) == ("quarter", "10 years", "1d")
    monkeypatch.setenv("PARTMAN_DROP_OLD_AFTER", "bogus")
    r = partman(*base)
    assert r.code == 2 and "PARTMAN_DROP_OLD_AFTER) 'bogus'" in r.err


def test_an_interrupted_conversion_is_shown_resumed_only_as_it_was_started_or_abandoned(conn, partman, partman_proc):
    make_ledger(conn, 2000)
    killed = partman_proc(*CONVERT, "--batch-size", "200", "--sleep", "0",
                          extra_env={"PARTMAN_FAILPOINTS": "convert.copy.after_batch=2:kill"})
    assert killed.code == -9, killed.err[-500:]
    work_schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman_catalog_w%'"
    capture = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit_log_ledger'::regclass AND tgname = 'partman_capture'"
    assert conn.execute(work_schemas).fetchone()[0] == 1 and conn.execute(capture).fetchone()[0] == 1
    # status knows no process is working on it, and says what to do
    r = partman("status", "--json")
    assert [(c["phase"], c["active"]) for c in json.loads(r.out)["conversions_running"]] == [("copy", False)]
    r = partman("status")
    assert "interrupted" in r.out and "partman revert public.audit_log_ledger" in r.out
    # other partitions than the ones prepared: refused before anything runs, nothing changed
    r = partman("convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "month", "--sleep", "0")
    assert r.code == 2 and "--interval 'month' (it was started with 'year')" in r.err, r.err
    assert conn.execute(work_schemas).fetchone()[0] == 1 and latest_phase(conn) == "copy"
    r = partman(*CONVERT, "--sleep", "0", "--dry-run")
    assert r.code == 0 and "resumes the conversion in progress at its copy phase" in r.out
    # revert abandons it: the table as it was, partman's objects gone; a fresh conversion works
    r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 0 and "abandoned the conversion" in r.out, r.err
    assert conn.execute(work_schemas).fetchone()[0] == 0 and conn.execute(capture).fetchone()[0] == 0
    assert not is_partitioned(conn, LEDGER) and len(ids(conn, LEDGER)) == 2000
    assert json.loads(partman("status", "--json").out)["conversions_running"] == []
    r = partman("convert", "public.audit_log_ledger", "--column", "event_timestamp", "--interval", "month", "--sleep", "0")
    assert r.code == 0, r.err
    assert is_partitioned(conn, LEDGER) and len(ids(conn, LEDGER)) == 2000


def test_revert_carries_rows_written_since_the_swap(conn, dsn, partman):
    make_ledger(conn, 1000)
    assert partman(*CONVERT, "--sleep", "0").code == 0
    with Writers(dsn, LEDGER, threads=2) as w:
        import time

        time.sleep(0.5)
        r = partman("revert", "audit_log_ledger", "--yes")
        w.stop()
    assert r.code == 0, r.err
    assert not w.errors, w.errors[:3]
    assert not is_partitioned(conn, LEDGER)
    got = ids(conn, LEDGER)
    assert len(got) == len(set(got)) == 1000 + len(w.committed)
    assert verify_chain(conn, LEDGER)["ok"]
    assert is_partitioned(conn, QualifiedName("public", "audit_log_ledger_partitioned"))
    assert conn.execute("SELECT count(*) FROM partman_catalog.managed_table").fetchone()[0] == 0
    # the original table works as before: the chain continues, the sequence is its own again
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) VALUES ('t', 'x', '', '')")
    assert verify_chain(conn, LEDGER)["ok"]
    # converting again needs the names the kept partitioned table holds: the refusal says whose they are
    r = partman(*CONVERT, "--sleep", "0")
    assert r.code == 1 and "they belong to audit_log_ledger_partitioned" in r.err, r.err
    conn.execute("DROP TABLE audit_log_ledger_partitioned")
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) VALUES ('t', 'y', '', '')")


def test_after_a_revert_the_tables_activity_statistics_count_the_rows_carried_back_once(conn, partman):
    """The revert carries the rows written since the swap back into the original table and then
    analyzes it; its session hands those inserts to the activity statistics before the ANALYZE,
    so none counts as changed since it and `n_live_tup` is the table's row count."""
    if conn.info.server_version < 150000:
        pytest.skip("PostgreSQL 14 sends its statistics on its own schedule (no pg_stat_force_next_flush)")
    make_ledger(conn, 1000)
    assert partman(*CONVERT, "--sleep", "0", "--yes").code == 0
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) "
                 "SELECT 't', 'x', '', '' FROM generate_series(1, 50)")
    conn.execute("SELECT pg_stat_force_next_flush()")  # this test's own inserts, counted now
    r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 0, r.err
    wait_for_partman_sessions_to_end(conn)
    assert not is_partitioned(conn, LEDGER)
    assert conn.execute("SELECT n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables "
                        "WHERE relid = 'audit_log_ledger'::regclass").fetchone() == (1050, 0)


@pytest.mark.parametrize("action", ["drop", "detach"])
def test_revert_leaves_out_the_rows_retention_removed_since_the_swap(conn, partman, action):
    """Retention removing a partition after the swap changes no row, so the revert log has
    nothing of it, while <table>_old still holds those rows. Revert deletes them from it (the
    ledger's append-only trigger off) before swapping back and reports the rows per range. A row
    the partitioned table holds in a removed range (written since into the default partition, or
    a detached partition attached back by hand) is live and stays. A detached table keeps its rows."""
    make_ledger(conn, 1200)
    assert partman(*CONVERT, "--sleep", "0", "--retention", "10 years", "--retention-action", action).code == 0
    per_year = dict(conn.execute("SELECT extract(year FROM event_timestamp AT TIME ZONE 'UTC')::int, count(*) "
                                 "FROM audit_log_ledger_old GROUP BY 1").fetchall())
    cutoff = conn.execute("SELECT extract(year FROM now() - interval '10 years')::int").fetchone()[0]
    gone = sorted(y for y in per_year if y < cutoff)
    assert len(gone) >= 2, "the ledger starts in 2014: two years are due from 2026 on"
    r = partman("maintain", "--json")
    assert r.code == 0, r.err
    removed = json.loads(r.out)["tables"]["public.audit_log_ledger"]["retention"]["removed"]
    assert [x["partition"] for x in removed] == [f"audit_log_ledger_p{y}0101" for y in gone]
    anchor = conn.execute("SELECT last_row->>'current_hash' FROM partman_catalog.removal ORDER BY id DESC LIMIT 1").fetchone()[0]
    live_again = []
    if action == "detach":  # the DBA attaches the oldest back: its rows are the partitioned table's again
        conn.execute(f"ALTER TABLE audit_log_ledger ATTACH PARTITION audit_log_ledger_p{gone[0]}0101 "
                     f"FOR VALUES FROM ('{gone[0]}-01-01 00:00+00') TO ('{gone[0] + 1}-01-01 00:00+00')")
        live_again = [gone[0]]
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash, event_timestamp) "
                 "VALUES ('app', 'late', '', '', %s)", (f"{gone[-1]}-06-01 00:00+00",))  # lands in the default partition
    r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 0, r.err
    for y in gone:  # one line per removed range: its rows deleted from the original
        rows = 0 if y in live_again else per_year[y]
        assert f"  {rows} row(s) of audit_log_ledger_p{y}0101 [{y}-01-01" in r.out and f"({action})" in r.out, r.out
    assert not is_partitioned(conn, LEDGER)
    kept = dict(conn.execute("SELECT extract(year FROM event_timestamp AT TIME ZONE 'UTC')::int, count(*) "
                             "FROM audit_log_ledger WHERE action <> 'late' GROUP BY 1").fetchall())
    assert {y: n for y, n in kept.items() if y < cutoff} == {y: per_year[y] for y in live_again}
    assert {y: n for y, n in kept.items() if y >= cutoff} == {y: n for y, n in per_year.items() if y >= cutoff}
    assert conn.execute("SELECT count(*) FROM audit_log_ledger WHERE action = 'late'").fetchone()[0] == 1
    if action == "drop":  # the remaining chain verifies from the last removal's anchor, the late row chained on
        assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
    else:  # a detached table is left as it is
        assert conn.execute(f"SELECT count(*) FROM audit_log_ledger_p{gone[-1]}0101").fetchone()[0] == per_year[gone[-1]]
    # the original's triggers are on again: the ledger still refuses a DELETE
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM audit_log_ledger WHERE action = 'late'")


def test_writes_of_a_replication_session_are_captured_too(conn, dsn, partman):
    """A logical replication apply worker (the table is a subscription's target, as in a blue/green
    switchover) writes with session_replication_role = replica, where ordinary triggers do not
    fire. partman's capture fires anyway: none of those writes is missing from the new table at
    the swap (verification has nothing to repair), nor from the original after a revert."""
    conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, at date NOT NULL, v int NOT NULL);"
                 "INSERT INTO notes (at, v) SELECT date '2024-01-01' + g % 300, 0 FROM generate_series(1, 20000) g")
    stop, written = threading.Event(), []

    def apply_worker() -> None:
        with psycopg.connect(dsn, autocommit=True) as w:
            w.execute("SET session_replication_role = replica")
            while not stop.is_set():
                w.execute("INSERT INTO notes (at, v) VALUES ('2024-05-05', 1)")
                w.execute("UPDATE notes SET v = v + 1 WHERE id = 5")  # a row the copy has passed
                written.append(1)
                time.sleep(0.003)

    worker = threading.Thread(target=apply_worker)
    worker.start()
    try:
        r = partman("convert", "notes", "--column", "at", "--sleep", "0.02", "--batch-size", "1000", "--yes")
    finally:
        stop.set()
        worker.join()
    assert r.code == 0, r.err
    assert len(written) > 50
    verified = conn.execute("SELECT verify FROM partman_catalog.conversion").fetchone()[0]
    assert verified["missing_or_different"] == 0 and verified["repaired"] == 0, verified
    with psycopg.connect(dsn, autocommit=True) as w:  # after the swap: revert must carry these back
        w.execute("SET session_replication_role = replica")
        w.execute("INSERT INTO notes (at, v) VALUES ('2024-06-06', 7)")
        w.execute("UPDATE notes SET v = -1 WHERE id = 6")
    expected = conn.execute("SELECT count(*), sum(v) FROM notes").fetchone()
    r = partman("revert", "notes", "--yes")
    assert r.code == 0, r.err
    assert not is_partitioned(conn, QualifiedName("public", "notes"))
    assert conn.execute("SELECT count(*), sum(v) FROM notes").fetchone() == expected


def test_revert_waits_for_a_stopped_default_move_to_be_finished(conn, partman, partman_proc):
    """Rows written after the swap into the default partition, then moved by a maintenance pass
    killed before its ATTACH, sit in a staging table that is part of neither table: a revert then
    would leave them behind. It refuses, naming the table and `partman maintain`; after that
    pass it carries them into the original."""
    make_ledger(conn, 300)
    assert partman(*CONVERT, "--sleep", "0").code == 0
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash, event_timestamp) "
                 "SELECT 'app', 'late', '', '', timestamptz '2040-03-01' + g * interval '1 day' FROM generate_series(1, 40) g")
    killed = partman_proc("maintain", extra_env={"PARTMAN_FAILPOINTS": "maintain.default.attach=1:kill",
                                                 "PARTMAN_BATCH_SIZE": "10"})
    assert killed.code == -9, killed.err[-500:]
    r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 1 and "audit_log_ledger_p20400101" in r.err and "partman maintain" in r.err, r.err
    assert is_partitioned(conn, LEDGER)
    assert partman("maintain").code == 0
    r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 0, r.err
    assert not is_partitioned(conn, LEDGER)
    assert conn.execute("SELECT count(*) FROM audit_log_ledger WHERE action = 'late'").fetchone()[0] == 40
    assert len(ids(conn, LEDGER)) == 340


def test_revert_waits_for_a_maintenance_pass_on_the_table(conn, dsn, partman, monkeypatch):
    """A maintenance pass (moving default rows, dropping <table>_old) and a revert must not
    interleave: revert waits for the table's maintenance lock, and says so when it stays taken."""
    from partman.convert import revert

    make_ledger(conn, 200)
    assert partman(*CONVERT, "--sleep", "0").code == 0
    key = "partman:maintain:public:audit_log_ledger"
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        monkeypatch.setattr(revert, "MAINTENANCE_WAIT_S", 1)
        r = partman("revert", "audit_log_ledger", "--yes")
        assert r.code == 1 and "A maintenance pass has been working on public.audit_log_ledger" in r.err, r.err
        assert is_partitioned(conn, LEDGER)
        monkeypatch.setattr(revert, "MAINTENANCE_WAIT_S", 30)
        threading.Timer(1.0, lambda: other.execute("SELECT pg_advisory_unlock_all()")).start()
        r = partman("revert", "audit_log_ledger", "--yes")
    assert r.code == 0, r.err
    assert not is_partitioned(conn, LEDGER)


def test_rerun_after_success_is_a_no_op(conn, partman):
    make_ledger(conn, 300)
    r = partman(*CONVERT, "--sleep", "0", "--retention", "10 years", "--retention-action", "archive")
    assert r.code == 0, r.err
    assert "archive_bucket_missing" in r.err  # said at once, not first when maintain refuses to archive
    r = partman(*CONVERT, "--sleep", "0")
    assert r.code == 0, r.err
    assert "already" in r.out
    for extra in ([], ["--dry-run"]):  # --json answers in JSON here too, with the conversion's figures
        r = partman(*CONVERT, "--json", *extra)
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        assert doc["already_converted"] is True and doc["status"] == "done" and doc["rows_copied"] == 300
        assert doc["widened_keys"] and "becomes (id, event_timestamp)" in doc["widened_keys"][0]
    # another interval cannot be had by converting again: said, and refused
    r = partman("convert", "audit_log_ledger", "--column", "event_timestamp", "--interval", "month", "--yes")
    assert r.code == 1 and "--interval month (it has year)" in r.err and "partman revert" in r.err, r.err
    # another premake is the registration's business: said, and nothing done
    r = partman(*CONVERT, "--premake", "5")
    assert r.code == 0 and "--premake 5 (it has 3)" in r.out and "partman register" in r.out, r.out


def _convert_while_writing(partman, point: str, action: str, write):
    """`partman convert --sleep 0 --json`, failpoint `point` armed with `action`, while `write`
    runs on a thread (it waits for its moment itself)."""
    import threading

    from partman import failpoints

    failpoints.arm(point, action)
    t = threading.Thread(target=write)
    t.start()
    try:
        return partman(*CONVERT, "--sleep", "0", "--json")
    finally:
        failpoints.disarm()
        t.join()


def test_rows_caught_up_counts_every_catch_up_round_not_only_the_swaps(conn, dsn, partman):
    """Rows written during the copy are replayed by the catch-up rounds before the swap; the
    result's "rows caught up" (and status) counts them, not only the few the swap replays."""
    make_ledger(conn, 1000)
    written: list[int] = []

    def write_during() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_for_phase(c, "indexes")  # the copy is done; partman sleeps at its failpoint
            written.extend(r[0] for r in c.execute(
                "INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) "
                "SELECT 'during', 'write', '', '' FROM generate_series(1, 300) RETURNING id").fetchall())

    r = _convert_while_writing(partman, "convert.after_copy", "sleep(2)", write_during)
    assert r.code == 0, r.err
    assert len(written) == 300
    assert json.loads(r.out)["rows_caught_up"] >= 300
    assert len(ids(conn, LEDGER)) == 1300
    (caught_up,) = log_events(r.err, "caught_up")
    assert caught_up["rows"] >= 300 and caught_up["rounds"] == 1  # full speed: one round of up to 10,000


def test_a_paced_catch_up_replays_in_short_rounds_with_the_throttles_pause_after_each(conn, dsn, partman):
    """With default settings the writes of the copy's hours wait in the change log; they are
    replayed in rounds of about a thousand entries (sized as the copy's batches are), the
    throttle's pause after each, not in rounds of 10,000 back to back: nothing lost, none twice."""
    import threading

    from partman import failpoints

    make_ledger(conn, 1000)
    written: list[int] = []

    def write_during() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_for_phase(c, "indexes")  # the copy is done; partman sleeps at its failpoint
            for _ in range(6):
                written.extend(r[0] for r in c.execute(
                    "INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) "
                    "SELECT 'during', 'write', '', '' FROM generate_series(1, 500) RETURNING id").fetchall())

    failpoints.arm("convert.after_copy", "sleep(3)")
    t = threading.Thread(target=write_during)
    t.start()
    try:
        r = partman(*CONVERT, "--batch-size", "500", "--json")
    finally:
        failpoints.disarm()
        t.join()
    assert r.code == 0, r.err
    assert len(written) == 3000 and json.loads(r.out)["rows_caught_up"] >= 3000
    assert sorted(ids(conn, LEDGER)) == sorted(set(ids(conn, LEDGER))) and len(ids(conn, LEDGER)) == 4000
    (caught_up,) = log_events(r.err, "caught_up")
    assert caught_up["rows"] >= 3000 and caught_up["rounds"] >= 3, caught_up
    assert [e for e in log_events(r.err, "throttle") if e["paces"] == "catchup"], r.err


@pytest.mark.parametrize("pipelines", [True, False], ids=["pipelined", "one-by-one"])
def test_rows_written_in_the_final_catch_up_window_are_replayed_under_the_swap_lock(conn, dsn, partman, monkeypatch,
                                                                                   pipelines):
    """A burst of writes between the last catch-up round and the swap's lock waits in the change
    log and is replayed inside the swap: none lost, none twice, the chain intact. The swap sends
    its statements in pipelines; where libpq has no pipeline mode, one by one, with the same result."""
    if not pipelines:
        monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    make_ledger(conn, 2000)
    burst: list[int] = []

    def write_burst() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_for_phase(c, "swap")
            # into the failpoint's sleep, past the swap's replay before the lock (which would take
            # rows written right at the phase change: they must wait for the lock to count here)
            time.sleep(1.0)
            for _ in range(10):
                burst.extend(r[0] for r in c.execute(
                    "INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) "
                    "SELECT 'burst', 'write', '', '' FROM generate_series(1, 50) RETURNING id").fetchall())

    # the failpoint comes after the last replay without the lock
    r = _convert_while_writing(partman, "convert.swap.before_lock", "sleep(3)", write_burst)
    assert r.code == 0, r.err
    assert len(burst) == 500
    summary = json.loads(r.out)
    assert summary["rows_caught_up"] >= 500  # replayed inside the swap, under its lock
    got = ids(conn, LEDGER)
    assert len(got) == len(set(got)) == 2500 and set(burst) <= set(got)
    assert verify_chain(conn, LEDGER)["ok"]


def test_a_lock_on_a_shadow_partition_delays_the_swap_without_blocking_the_application(conn, dsn, partman):
    """Autovacuum likes freshly loaded partitions. The swap takes the shadow's locks before the
    application's table, so waiting for them (here: a session holding one, as autovacuum would)
    blocks no writer and costs no retry."""
    import threading

    from partman import failpoints

    make_ledger(conn, 2000)
    held = threading.Event()

    def hold_a_partition() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_for_phase(c, "swap")
            part = c.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname LIKE 'partman_catalog_w%' AND c.relname LIKE 'audit_log_ledger_p2020%'"
            ).fetchone()[0]
            with c.transaction():
                c.execute(f"LOCK TABLE {part} IN SHARE UPDATE EXCLUSIVE MODE")  # what a VACUUM takes
                held.set()
                threading.Event().wait(2.5)

    failpoints.arm("convert.swap.before", "sleep(1)")
    t = threading.Thread(target=hold_a_partition)
    t.start()
    try:
        with Writers(dsn, LEDGER, threads=2, pause=0.005) as w:
            r = partman(*CONVERT, "--sleep", "0", "--lock-timeout", "200", "--json")
            w.stop()
    finally:
        failpoints.disarm()
        t.join()
    assert r.code == 0, r.err
    assert held.is_set()
    assert json.loads(r.out)["swap_attempts"] == 1
    assert not w.errors and max(w.latencies) < 0.5, max(w.latencies)  # the 2.5 s hold never reached a writer
    assert len(set(ids(conn, LEDGER))) == 2000 + len(w.committed)


def test_updates_that_move_rows_between_partitions_deletes_and_inserts_during_the_copy_are_replayed_exactly(
        conn, dsn, partman):
    """A mutable table (not the append-only ledger): while the copy and catch-up run, a writer
    updates values, moves rows to another year (another partition), deletes and inserts. The
    replay alone must make the new table equal to the old one: the verification finds nothing to
    repair."""
    import random
    import threading

    from partman import failpoints

    conn.execute(
        """
        CREATE TABLE public.events (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, v int NOT NULL);
        INSERT INTO public.events (ts, v)
        SELECT timestamptz '2016-01-01' + g * interval '1 day', g FROM generate_series(1, 3650) g;
        """
    )
    done = {"ops": 0, "moves": 0}

    def mutate() -> None:
        rnd = random.Random(7)
        with psycopg.connect(dsn, autocommit=True) as c:
            while True:
                if latest_phase(c) in ("swap", "verify", "done") or done["ops"] > 20000:
                    return
                i = rnd.randint(1, 3700)
                op = rnd.random()
                if op < 0.35:
                    c.execute("UPDATE public.events SET v = v + 1 WHERE id = %s", (i,))
                elif op < 0.7:
                    c.execute("UPDATE public.events SET ts = ts + interval '400 days' * %s WHERE id = %s",
                              (rnd.choice([-3, -1, 1, 2]), i))
                    done["moves"] += 1
                elif op < 0.8:
                    c.execute("DELETE FROM public.events WHERE id = %s", (i,))
                else:
                    c.execute("INSERT INTO public.events (ts, v) VALUES (timestamptz '2018-06-01' + %s * interval '1 day', 0)",
                              (rnd.randint(0, 2000),))
                done["ops"] += 1

    failpoints.arm("convert.swap.before", "sleep(1)")  # the writer stops before the swap's lock
    t = threading.Thread(target=mutate)
    t.start()
    try:
        r = partman("convert", "public.events", "--column", "ts", "--batch-size", "100", "--sleep", "0.02", "--json")
    finally:
        failpoints.disarm()
        t.join()
    assert r.code == 0, r.err
    assert done["moves"] > 50, done
    figures = json.loads(r.out)["verify"]
    assert figures["missing_or_different"] == 0 and figures["repaired"] == 0, figures
    differ = conn.execute(
        "SELECT count(*) FROM public.events_old o FULL JOIN public.events n USING (id) "
        "WHERE o.id IS NULL OR n.id IS NULL OR (o.ts, o.v) IS DISTINCT FROM (n.ts, n.v)"
    ).fetchone()[0]
    assert differ == 0


def test_planning_reads_an_unindexed_key_column_in_one_pass(conn):
    """The plan needs the key column's range, NULL and infinite rows: four index scans when an
    index leads with the column, else one pass over the table (not four), with the same figures."""
    from partman.convert.plan import Options
    from partman.convert.run import key_stats, make_plan
    from partman.settings import Settings

    conn.execute(
        """
        CREATE TABLE keyscan (id bigint PRIMARY KEY, ts timestamptz, v text);
        INSERT INTO keyscan SELECT g, '2020-01-01'::timestamptz + g * interval '1 day', 'x' FROM generate_series(1, 2000) g;
        INSERT INTO keyscan VALUES (-1, NULL, 'null'), (-2, 'infinity', 'inf'), (-3, '-infinity', 'ninf');
        ANALYZE keyscan;
        """
    )
    qn = QualifiedName("public", "keyscan")

    def table_scans(fn):  # the function's result, and how many times it read the whole table
        count = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'keyscan'"
        with conn.transaction():
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            before = conn.execute(count).fetchone()[0]
            result = fn()
            scans = conn.execute(count).fetchone()[0] - before
        return result, scans

    def figures(stats):
        return stats.min_key, stats.max_key, stats.null_keys, stats.infinite_keys

    _, scans = table_scans(lambda: make_plan(conn, Settings(), qn, Options(column="ts")))
    assert scans == 1
    one_pass, scans = table_scans(lambda: key_stats(conn, qn, "ts", indexed=False))
    assert scans == 1 and figures(one_pass)[2:] == (1, 2)
    assert figures(one_pass) == figures(key_stats(conn, qn, "ts", indexed=True))
    conn.execute("CREATE INDEX ON keyscan (ts)")
    _, scans = table_scans(lambda: make_plan(conn, Settings(), qn, Options(column="ts")))
    assert scans == 0


@pytest.mark.parametrize("first,second", [("0", "0"), ("0", "0.01"), ("0.01", "0"), ("0", "legacy")],
                         ids=["two connections", "two, resumed paced", "paced, resumed at full speed",
                              "a low-watermark cursor of an earlier version"])
def test_a_killed_copy_resumes_from_exact_cursors_and_deletes_nothing(conn, partman_proc, first, second):
    """Killed during the copy: the catalog's total is exactly the rows committed, and so is each
    cursor (two connections: one per half of the key range, the split recorded), so the rerun goes
    on from them at either pace and deletes nothing; for the 44M-row ledger a delete beyond one
    cursor would scan the unindexed shadow. A conversion begun by an earlier version (one
    low-watermark cursor, no `exact_cursor`) still resumes right, by deleting beyond it first."""
    make_ledger(conn, 6000)
    args = [*CONVERT, "--batch-size", "200"]
    # 15 batches a half at full speed: by the 20th both halves have committed some, neither all
    killed = partman_proc(*args, "--sleep", first, extra_env={"PARTMAN_FAILPOINTS": "convert.copy.after_batch=20:kill"})
    assert killed.code == -9, killed.err[-500:]
    cid, total, lower, split, upper, exact, schema = conn.execute(
        "SELECT id, rows_copied, last_key, upper_from, upper_key, exact_cursor, options->>'work_schema' "
        "FROM partman_catalog.conversion ORDER BY id DESC LIMIT 1"
    ).fetchone()
    shadow = QualifiedName(schema, "audit_log_ledger_partman_new")
    copied = ids(conn, shadow)
    source = ids(conn, LEDGER)
    below = [i for i in source if i <= int(lower[0])]
    assert exact and total == len(copied) > 0
    if first == "0":  # each half's rows up to its cursor, and nothing else
        assert split is not None and upper is not None and int(lower[0]) <= int(split[0]) < int(upper[0])
        assert copied == below + [i for i in source if int(split[0]) < i <= int(upper[0])]
    else:
        assert split is None and copied == below
    resume = second
    if second == "legacy":  # as an earlier version left it: the low watermark, with rows beyond it copied
        conn.execute("UPDATE partman_catalog.conversion SET upper_from = NULL, upper_key = NULL, exact_cursor = false "
                     "WHERE id = %s", (cid,))
        resume = "0"
    done = partman_proc(*args, "--sleep", resume)
    assert done.code == 0, done.err[-2000:]
    assert ids(conn, LEDGER) == source and verify_chain(conn, LEDGER)["ok"]
    assert conn.execute("SELECT rows_copied FROM partman_catalog.conversion WHERE id = %s", (cid,)).fetchone()[0] == 6000
    stats = ("SELECT sum(n_tup_ins), sum(n_tup_del) FROM pg_stat_user_tables WHERE relid IN "
             "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'audit_log_ledger'::regclass)")
    deadline = time.monotonic() + 10
    while True:  # partman's backends report their counts as they exit
        conn.execute("SELECT pg_stat_clear_snapshot()")
        inserted, deleted = conn.execute(stats).fetchone()
        if inserted >= 6000 and (deleted or second != "legacy") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inserted >= 6000
    assert deleted == (len(copied) - len(below) if second == "legacy" else 0)


def test_a_catalog_made_by_an_earlier_version_is_migrated_in_place(conn, partman):
    """A catalog at version 1 (what earlier versions made), with a conversion recorded: the next
    command brings it to the current version in place, and that conversion is marked as kept with
    one low-watermark cursor (exact_cursor false), which its resume relies on."""
    from partman.catalog import migrations

    first = dict(migrations())[1]
    conn.execute("CREATE SCHEMA partman_catalog")
    conn.execute("CREATE TABLE partman_catalog.schema_version "
                 "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    with conn.transaction():
        conn.execute("SET LOCAL search_path TO partman_catalog")
        conn.execute(first.read_text())
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO conversion (schema_name, table_name, column_name, options, phase, last_key) "
                     "VALUES ('public', 'elsewhere', 'at', '{}', 'copy', '{42}')")
    r = partman("maintain")
    assert r.code == 0, r.err
    versions = [v for (v,) in conn.execute("SELECT version FROM partman_catalog.schema_version ORDER BY 1")]
    assert versions == [v for v, _ in migrations()] and len(versions) >= 2
    assert conn.execute("SELECT last_key, exact_cursor, upper_from FROM partman_catalog.conversion").fetchall() == [
        (["42"], False, None)]
