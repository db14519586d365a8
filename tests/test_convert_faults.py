"""Crashes and lock contention during `partman convert`: real SIGKILLs of the real command at
each phase while writers keep inserting, then the same command again; and a long transaction
holding the table while the swap wants its lock."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from partman.sample_ledger import verify_chain

from helpers import LEDGER, Writers, ids, is_partitioned, make_ledger, matrix_entry, relations_in

pytestmark = pytest.mark.conversion

CONVERT = ["convert", "public.audit_log_ledger", "--column", "event_timestamp", "--batch-size", "300", "--sleep", "0.01"]

CRASH_POINTS = [
    "convert.prepare.before_trigger=1:kill",
    "convert.copy.after_batch=3:kill",
    "convert.after_copy=1:kill",
    "convert.indexes.after_index=1:kill",
    "convert.catchup.after_round=1:kill",
    "convert.swap.before=1:kill",
    "convert.swap.before_lock=1:kill",
    "convert.swap.locked=1:kill",
    "convert.swap.before_commit=1:kill",
    "convert.swap.after_commit=1:kill",
    "convert.verify.before=1:kill",
    "convert.verify.after_range=1:kill",
    # a convert that failed, killed inside its rollback: the rollback is one transaction, so the
    # rerun resumes with its capture trigger in place (before, the trigger could be gone already)
    "convert.after_copy=1:raise,convert.rollback.after_trigger=1:kill",
]


@pytest.mark.parametrize("point", CRASH_POINTS, ids=[p.split(",")[-1].split("=")[0] for p in CRASH_POINTS])
def test_killed_at_each_phase_the_rerun_finishes_the_job(conn, dsn, partman_proc, point):
    with matrix_entry("convert", point.split("=")[0]) as entry:
        _killed_and_rerun(conn, dsn, partman_proc, point, entry)


@pytest.mark.parametrize("point", ["convert.copy.after_batch=4:kill", "convert.indexes.after_index=2:kill"],
                         ids=["copy.after_batch", "indexes.after_index"])
def test_full_speed_parallel_copy_and_index_builds_killed_the_rerun_finishes(conn, dsn, partman_proc, point):
    """--sleep 0: two connections copy disjoint key ranges and build indexes partition by partition."""
    with matrix_entry("convert", point.split("=")[0] + " (--sleep 0, 2 workers)") as entry:
        _killed_and_rerun(conn, dsn, partman_proc, point, entry, args=("--sleep", "0", "--batch-size", "200"))


# an extended statistics object: made with the shadow, handed over in the swap (and back in revert)
STATISTICS = "CREATE STATISTICS ledger_actor_action (dependencies) ON actor, action FROM audit_log_ledger"
STATISTICS_ON = ("SELECT stxrelid::regclass::text, stxname FROM pg_statistic_ext "
                 "WHERE stxname LIKE 'ledger_actor_action%' ORDER BY 1")


def _killed_and_rerun(conn, dsn, partman_proc, point, entry, args=()):
    make_ledger(conn, 2500)
    conn.execute(STATISTICS)
    with Writers(dsn, LEDGER, threads=2, pause=0.005) as w:
        first = partman_proc(*CONVERT, *args, extra_env={"PARTMAN_FAILPOINTS": point})
        assert first.code == -9, f"expected the failpoint to kill partman: {first.code} {first.err[-500:]}"
        time.sleep(0.3)  # the application keeps writing between the crash and the rerun
        second = partman_proc(*CONVERT, *args)
        time.sleep(0.2)
        w.stop()
    assert second.code == 0, second.err[-2000:]
    assert not w.errors, w.errors[:3]
    assert is_partitioned(conn, LEDGER)
    got = ids(conn, LEDGER)
    assert len(got) == len(set(got)) == 2500 + len(w.committed)
    assert verify_chain(conn, LEDGER)["ok"]
    leftovers = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'partman_capture'"
    ).fetchone()[0]
    assert leftovers == 0
    # no orphans: nothing of partman's in the table's schema, one work schema (the revert window)
    assert not [n for n in relations_in(conn, "public") if "partman" in n]
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman_catalog_w%'").fetchone()[0] == 1
    partitions = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_log_ledger'::regclass").fetchone()[0]
    assert conn.execute(STATISTICS_ON).fetchall() == [
        ("audit_log_ledger", "ledger_actor_action"), ("audit_log_ledger_old", "ledger_actor_action_old")]
    on_partitions = conn.execute(
        "SELECT count(*), count(DISTINCT s.stxrelid) FROM pg_statistic_ext s JOIN pg_inherits i ON i.inhrelid = s.stxrelid "
        "WHERE i.inhparent = 'audit_log_ledger'::regclass").fetchone()
    assert on_partitions == (partitions, partitions)  # one each, none twice
    entry.outcome = (f"ok: {len(got)} rows exactly once ({len(w.committed)} written meanwhile, 0 failed inserts), "
                     "chain valid, no orphans")


REVERT_POINTS = ["revert.after_removed_range=1:kill", "revert.after_round=1:kill", "revert.swap.locked=1:kill",
                 "revert.swap.before_commit=1:kill", "revert.after_swap=1:kill"]


@pytest.mark.parametrize("point", REVERT_POINTS, ids=[p.split("=")[0] for p in REVERT_POINTS])
def test_revert_killed_at_each_step_the_rerun_finishes_it(conn, dsn, partman_proc, point):
    """After the swap retention drops the oldest years (two ranges): the revert takes their rows
    out of <table>_old, one range per transaction, then carries the rows written since."""
    with matrix_entry("revert", point.split("=")[0]) as entry:
        make_ledger(conn, 1500)
        conn.execute(STATISTICS)
        assert partman_proc(*CONVERT, "--sleep", "0", "--retention", "10 years").code == 0
        assert partman_proc("maintain").code == 0
        ranges, removed, upper, anchor = conn.execute(
            "SELECT count(*), sum(row_count), max(upper_bound), (array_agg(last_row->>'current_hash' ORDER BY id DESC))[1] "
            "FROM partman_catalog.removal").fetchone()
        assert ranges >= 2 and removed > 0
        with Writers(dsn, LEDGER, threads=2, pause=0.005) as w:
            time.sleep(0.3)
            first = partman_proc("revert", "audit_log_ledger", "--yes", extra_env={"PARTMAN_FAILPOINTS": point})
            assert first.code == -9, first.err[-500:]
            time.sleep(0.3)
            second = partman_proc("revert", "audit_log_ledger", "--yes")
            w.stop()
        assert second.code == 0, second.err[-2000:]
        assert not w.errors, w.errors[:3]
        assert not is_partitioned(conn, LEDGER)
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman_catalog_w%'").fetchone()[0] == 0
        again = partman_proc("revert", "audit_log_ledger", "--yes")  # done: nothing to do, said
        assert again.code == 0 and "already reverted" in again.out, again.err[-500:]
        got = ids(conn, LEDGER)
        assert len(got) == len(set(got)) == 1500 - removed + len(w.committed)
        assert conn.execute("SELECT count(*) FROM audit_log_ledger WHERE event_timestamp < %s::timestamptz",
                            (upper,)).fetchone()[0] == 0
        assert verify_chain(conn, LEDGER, anchor=anchor)["ok"]
        assert conn.execute(STATISTICS_ON).fetchall() == [
            ("audit_log_ledger", "ledger_actor_action"),
            ("audit_log_ledger_partitioned", "ledger_actor_action_partitioned")]
        entry.outcome = (f"ok: {len(got)} rows exactly once in the original table, the {removed} rows retention "
                         f"removed ({ranges} partitions) not among them, chain valid from the anchor")


def test_a_conversion_whose_capture_trigger_was_dropped_is_not_resumed(conn, dsn, partman_proc):
    """Killed after its copy, then someone drops partman's capture trigger: the changes since
    were not recorded, so resuming would lose them. The rerun refuses, rolls back and says so;
    the run after that converts the table afresh, every row there."""
    make_ledger(conn, 1000)
    assert partman_proc(*CONVERT, extra_env={"PARTMAN_FAILPOINTS": "convert.after_copy=1:kill"}).code == -9
    conn.execute("DROP TRIGGER partman_capture ON audit_log_ledger")
    conn.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) VALUES ('late', 'x', '', '')")
    r = partman_proc(*CONVERT)
    assert r.code == 1 and "partman_capture is missing" in r.err and "rolled back" in r.err, r.err[-1000:]
    assert not is_partitioned(conn, LEDGER)
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'partman_catalog_w%'").fetchone()[0] == 0
    r = partman_proc(*CONVERT)
    assert r.code == 0, r.err[-1000:]
    assert len(ids(conn, LEDGER)) == 1001 and verify_chain(conn, LEDGER)["ok"]


def test_swap_gives_up_cleanly_behind_a_long_transaction(conn, dsn, partman_proc):
    make_ledger(conn, 800)
    before = relations_in(conn, "public")
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT count(*) FROM audit_log_ledger")  # holds ACCESS SHARE until it ends
    latencies: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.execute("INSERT INTO audit_log_ledger (actor, action, prev_hash, current_hash) VALUES ('w','x','','')")
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.01)

    t = threading.Thread(target=writer)
    t.start()
    released = threading.Timer(6.0, blocker.close)
    released.start()
    try:
        r = partman_proc(*CONVERT, "--lock-timeout", "100", extra_env={"PARTMAN_LOCK_RETRIES": "4"})
    finally:
        stop.set()
        t.join()
        released.join()
    assert r.code == 1
    assert "lock" in r.err.lower() and "Traceback" not in r.err
    # the application was never blocked for much longer than one lock timeout
    assert max(latencies) < 1.0, max(latencies)
    # the original table is as it was: not partitioned, no trigger of ours, no new relation
    assert not is_partitioned(conn, LEDGER)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'partman_capture'").fetchone()[0] == 0
    assert relations_in(conn, "public") == before
    assert verify_chain(conn, LEDGER)["ok"]


def test_a_rollback_that_cannot_finish_says_what_is_left_and_revert_removes_it(conn, dsn, partman, partman_proc):
    """The swap gives up behind a long transaction, and removing the capture trigger fails too
    (here a failpoint; in life the same transaction still holding the table). The message must
    not claim the table is as it was: it names the trigger still on it and the two ways on, and
    `partman revert` (abandon) leaves the table as it was."""
    make_ledger(conn, 300)
    before = relations_in(conn, "public")
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT count(*) FROM audit_log_ledger")  # holds ACCESS SHARE until it ends
    try:
        r = partman_proc(*CONVERT, "--lock-timeout", "100", extra_env={
            "PARTMAN_LOCK_RETRIES": "2", "PARTMAN_FAILPOINTS": "convert.rollback.before_trigger=1:raise"})
    finally:
        blocker.close()
    assert r.code == 1 and "Traceback" not in r.err
    message = r.err.strip().splitlines()[-1]
    assert "Gave up on the swap" in message and "did not finish either" in message, message
    assert "partman_capture is still on public.audit_log_ledger" in message and "partman revert" in message
    assert "is as it was" not in message
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'partman_capture'").fetchone()[0] == 1
    abandoned = partman("revert", "audit_log_ledger", "--yes")
    assert abandoned.code == 0, abandoned.err
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'partman_capture'").fetchone()[0] == 0
    assert relations_in(conn, "public") == before and not is_partitioned(conn, LEDGER)


def test_two_converts_of_one_table_never_overlap(conn, dsn, partman_proc):
    make_ledger(conn, 1500)
    import subprocess
    import sys

    slow = subprocess.Popen(
        [sys.executable, "-m", "partman.cli", *CONVERT],
        env={**__import__("os").environ, "PARTMAN_DATABASE_URL": dsn,
             "PARTMAN_FAILPOINTS": "convert.copy.after_batch=1:sleep(4)"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)
    second = partman_proc(*CONVERT)
    out, err = slow.communicate(timeout=120)
    assert second.code == 1 and "running" in second.err
    assert slow.returncode == 0, err[-1000:]
    assert len(ids(conn, LEDGER)) == 1500


@pytest.mark.parametrize("where", ["between batches", "waiting for a lock"])
def test_sigterm_gives_the_advice_sigint_gives_and_still_ends_by_the_signal(conn, dsn, env, partman_proc, pg_server, where):
    """A convert stopped by SIGTERM (a container stopped, `kill`) says, as one stopped by SIGINT does,
    that the same command resumes it, and still ends at once by the signal (exit -15, 143 in a
    shell), wherever it is: in Python between batches or inside a statement waiting for a lock."""
    import signal
    import subprocess

    from helpers import partman_command

    conn.execute("CREATE TABLE readings (id bigserial PRIMARY KEY, at date NOT NULL);"
                 "INSERT INTO readings (at) SELECT date '2024-01-01' + g % 300 FROM generate_series(1, 3000) g")
    e = {**env, "PARTMAN_FAILPOINTS": "convert.copy.after_batch=1:sleep(60)" if where == "between batches" else ""}
    args = ["convert", "readings", "--column", "at", "--batch-size", "500", "--sleep", "0.01", "--yes"]
    holder = psycopg.connect(dsn)
    try:
        if where == "waiting for a lock":  # CREATE TRIGGER needs SHARE ROW EXCLUSIVE: it waits its lock_timeout
            holder.execute("LOCK TABLE readings IN SHARE MODE")
        proc = subprocess.Popen([partman_command(), *args, "--lock-timeout", "60000"], env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            if where == "between batches":
                ready = conn.execute("SELECT to_regclass('partman_catalog.conversion') IS NOT NULL").fetchone()[0] and \
                    conn.execute("SELECT coalesce(max(rows_copied), 0) > 0 FROM partman_catalog.conversion").fetchone()[0]
            else:
                ready = conn.execute("SELECT count(*) FROM pg_locks WHERE relation = 'readings'::regclass AND NOT granted"
                                     ).fetchone()[0] > 0
            if ready:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        holder.close()
    pg_server.outputs.extend([out, err])
    assert proc.returncode == -signal.SIGTERM and took < 5, (proc.returncode, took, err[-1000:])
    assert err.splitlines()[-1] == "partman: Terminated. A conversion resumes where it stopped when run again.", err[-1000:]
    assert "Traceback" not in err
    r = partman_proc(*args)
    assert r.code == 0, r.err[-2000:]
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 3000
