"""The copy's pacing: the throttle's decision (pure: synthetic probe latencies, no server), its
probe on a real server, and the room the copy keeps in the server's WAL buffers."""

from __future__ import annotations

import pytest

from partman.convert.throttle import MAX_PAUSE, Throttle
from partman.settings import Settings

pytestmark = pytest.mark.conversion


def _throttle(**kw) -> Throttle:
    t = Throttle(Settings(**kw), "work", 0.1, enabled=True)
    t.baseline_ms = 2.0  # the idle p99: target 2.0 x 1.3 + 0.2 = 2.8 ms
    return t


def _probes(t: Throttle, latencies: list[float]) -> None:
    t.samples = (t.samples + latencies)[-200:]
    t.fresh, t.fresh_max = len(latencies), max(latencies)


def test_the_pause_grows_while_the_tail_is_slow_and_decays_back_to_sleep():
    t = _throttle()
    _probes(t, [1.0] * 100)
    assert t.decide() == pytest.approx(0.1)  # idle: the configured --sleep
    _probes(t, [1.0] * 97 + [9.0] * 3)  # the median untouched, 3% of probes slow
    first = t.decide()
    assert first > 0.1
    pauses = [first]
    for _ in range(20):
        _probes(t, [1.0] * 9 + [9.0])
        pauses.append(t.decide())
    assert pauses == sorted(pauses) and pauses[-1] == MAX_PAUSE  # grows, capped
    for _ in range(200):
        _probes(t, [1.0] * 10)
        t.decide()
    assert t.current == pytest.approx(0.1)  # back to --sleep once the slow probes are gone
    assert t.slowdowns == 21


def test_a_single_slow_probe_or_old_news_does_not_slow_down():
    t = _throttle()
    _probes(t, [1.0] * 199 + [50.0])  # 0.5% of the window: within the p99
    assert t.decide() == pytest.approx(0.1)
    _probes(t, [1.0] * 180 + [9.0] * 20)
    t.fresh, t.fresh_max = 5, 1.0  # the slow ones are old: nothing slow since the last decision
    assert t.decide() == pytest.approx(0.1)


def test_replica_lag_slows_down_even_when_probes_are_fast():
    t = _throttle(throttle_max_replica_lag=5)
    _probes(t, [1.0] * 100)
    t.observe_lag(12.0)
    assert t.decide() > 0.1
    t.observe_lag(1.0)
    _probes(t, [1.0] * 10)
    before = t.current
    assert t.decide() < before
    t.observe_lag(None)  # no replica shows a lag now
    assert (t.replica_slowdowns, t.slowdowns, t.replica_lag_max_s) == (1, 1, 12.0)


def test_the_copys_progress_lines_say_its_pace_and_what_slowed_it(capsys):
    import json

    from partman import log
    from partman.convert.progress import Progress

    log.configure("json")  # onto this test's stderr (not a terminal: log lines, no bar)
    t = _throttle(throttle_max_replica_lag=5)
    _probes(t, [1.0] * 100)
    t.observe_lag(12.0)
    t.decide()
    with Progress(10_000, "public.t") as progress:
        progress.set_phase("copy")
        progress.watch(t.pacing)
        progress.update(1_000, 20.0)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if '"progress"' in x]
    assert len(lines) == 1
    line = lines[0]
    assert (line["rows"], line["slowed_by"], line["replica_lag_s"]) == (1_000, "replica", 12.0)
    assert line["pause_s"] == round(t.current, 2) > 0.1
    assert Progress.pace_text(t.pacing()) == f"pause {t.current:.2f} s (replica 12.0 s behind)"
    # slowed by the application's probe; then back at --sleep: the pause alone
    t2 = _throttle()
    _probes(t2, [1.0] * 97 + [9.0] * 3)
    t2.decide()
    assert Progress.pace_text(t2.pacing()).endswith("(application slower)")
    for _ in range(100):
        _probes(t2, [1.0] * 10)
        t2.decide()
    assert Progress.pace_text(t2.pacing()) == "pause 0.10 s"


def test_the_probe_measures_a_real_insert_and_leaves_its_table_in_the_work_schema(conn, env, capsys):
    from partman import log

    log.configure("json")  # onto this test's stderr
    conn.execute("CREATE SCHEMA work_t")
    settings = Settings()
    with Throttle(settings, "work_t", 0.05, enabled=True) as t:
        assert t.enabled and t.baseline_ms is not None and t.baseline_ms > 0
        paused = t.pause()
    assert paused >= 0.05
    assert conn.execute("SELECT count(*) FROM work_t.partman_probe").fetchone()[0] >= 80
    assert '"event": "throttle"' in capsys.readouterr().err  # its summary is logged


@pytest.mark.parametrize("gentle", [True, False])
def test_a_paced_analyze_reads_at_autovacuums_pace(conn, dsn, env, gentle):
    """The shadow's ANALYZE is one statement the throttle cannot split: paced, it runs with
    autovacuum's cost-based delay (the backend is seen waiting in VacuumDelay); at full speed not."""
    import threading

    import psycopg

    from partman.convert import indexes
    from partman.db import QualifiedName

    conn.execute(
        """
        CREATE TABLE shadow_a (id bigint NOT NULL, ts timestamptz NOT NULL, v text) PARTITION BY RANGE (ts);
        CREATE TABLE shadow_a_1 PARTITION OF shadow_a FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
        CREATE TABLE shadow_a_2 PARTITION OF shadow_a FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
        INSERT INTO shadow_a SELECT g, '2020-01-01'::timestamptz + g * interval '5 minutes', repeat('x', 100)
        FROM generate_series(1, 200000) g;
        """
    )
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as w:
            while not done.is_set():
                seen.update(r[0] for r in w.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'ANALYZE%%' AND state = 'active' "
                    "AND wait_event IS NOT NULL"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done_analyze = indexes.build(conn, Settings(), [], workers=1 if gentle else 2, gentle=gentle,
                                     pause=(lambda: None) if gentle else None,
                                     shadow=QualifiedName("public", "shadow_a"), analyze=True)
    finally:
        done.set()
        watcher.join()
    assert done_analyze
    assert conn.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'shadow_a_2'").fetchone()[0] == 3
    assert ("VacuumDelay" in seen) == gentle
    assert conn.execute("SHOW vacuum_cost_delay").fetchone()[0] == "0"  # reset on partman's connection


def test_a_baseline_measured_at_a_busy_moment_comes_down(capsys):
    """The idle p99 was measured while something else loaded the server (3.5 ms): once a whole
    window of probes is much faster, the baseline drops to it, so the throttle holds the copy to
    the real idle latency instead of letting it press harder for the whole run."""
    from partman import log

    log.configure("json")
    t = _throttle()
    t.baseline_ms = 3.5  # target 3.5 x 1.3 + 0.2 = 4.75 ms
    _probes(t, [1.0] * 199 + [1.1])
    assert t.decide() == pytest.approx(0.1)
    assert t.baseline_ms == pytest.approx(1.0)  # target now 1.5 ms
    _probes(t, [1.0] * 190 + [2.5] * 10)  # 5% at 2.5 ms: under the old target, over the new one
    assert t.decide() > 0.1 and t.slowdowns == 1
    assert '"event": "throttle_rebaselined"' in capsys.readouterr().err
    t2 = _throttle()
    _probes(t2, [1.7] * 200)  # within 0.75 x of the baseline (2.0): noise, kept
    t2.decide()
    assert t2.baseline_ms == 2.0


def test_the_summary_says_what_the_probes_p99_was_window_by_window(capsys):
    """The throttle's closing log line tells a reader why it did or did not slow down: the target
    and the probes' p99, window by window (lowest, median, highest), and how many were over it."""
    import json

    from partman import log

    log.configure("json")
    t = _throttle()  # target 2.8 ms
    for latencies in ([1.8] * 200, [1.8] * 190 + [5.0] * 10, [2.0] * 200):  # none low enough to rebase
        _probes(t, latencies)
        t.decide()
    t.__exit__(None, None, None)
    line = next(json.loads(ln) for ln in capsys.readouterr().err.splitlines() if '"event": "throttle"' in ln)
    assert line["target_ms"] == 2.8 and line["slowdowns"] == 1
    assert (line["windows"], line["window_p99_ms"], line["windows_over_target"]) == (3, [1.8, 2.0, 5.0], 1)


def test_a_batch_is_capped_to_the_rows_whose_wal_fits_the_budget():
    from partman.convert.walroom import rows_within

    assert rows_within(4_000_000, 8_000_000, 10_000) == 5000  # twice the budget: half the rows
    assert rows_within(4_000_000, 1_000_000, 10_000) == 40000  # room for more: the size rules
    assert rows_within(4_000_000, 400_000_000, 10) == 1  # one huge row still goes
    assert rows_within(4_000_000, 0, 10_000) is None and rows_within(4_000_000, 100, 0) is None


def test_the_wal_room_caps_a_batch_by_the_wal_its_rows_took_and_starts_it_with_room(conn):
    from partman.convert.walroom import BATCH_SHARE, GATE_SHARE, WalRoom

    room = WalRoom(conn)
    assert room.enabled
    assert room.buffers == conn.execute("SELECT pg_size_bytes(current_setting('wal_buffers'))").fetchone()[0]
    conn.execute("CREATE TABLE wide (v text)")
    assert room.before_batch(0).cap is None  # nothing to go by yet
    lsn = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
    start = conn.execute(lsn).fetchone()[0]
    rows = room.buffers // 1500 * 2  # about twice the buffers' worth of WAL, in one transaction
    conn.execute(
        "INSERT INTO wide SELECT (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 47) i) "
        "FROM generate_series(1, %s) g", (rows,))
    wal = conn.execute(lsn).fetchone()[0] - start
    found = room.before_batch(rows)
    assert found.cap == pytest.approx(rows * room.buffers * BATCH_SHARE / wal, rel=0.05)
    assert found.cap < rows / 2
    assert found.unwritten <= room.buffers * GATE_SHARE


def test_the_first_batch_is_capped_by_the_tables_bytes_per_row(conn):
    from partman.convert.walroom import BATCH_SHARE, WalRoom

    conn.execute("CREATE TABLE wide (v text)")
    room = WalRoom(conn)
    assert room.first_cap("wide") is None  # no row estimate yet: nothing to go by
    conn.execute("INSERT INTO wide SELECT repeat(md5(g::text), 25) FROM generate_series(1, 2000) g")
    conn.execute("ANALYZE wide")
    size, rows = conn.execute("SELECT pg_table_size('wide'), reltuples FROM pg_class WHERE relname = 'wide'").fetchone()
    assert room.first_cap("wide") == pytest.approx(room.buffers * BATCH_SHARE / (size / rows), rel=0.01)
    # values TOAST stores out of line write their WAL there: they count in the bytes per row
    conn.execute("CREATE TABLE toasted (v text)")
    conn.execute("INSERT INTO toasted SELECT (SELECT string_agg(md5(g::text || '-' || i), '') "
                 "FROM generate_series(1, 250) i) FROM generate_series(1, 500) g")  # 8 kB each, out of line
    conn.execute("ANALYZE toasted")
    heap, whole, rows = conn.execute("SELECT pg_relation_size(oid), pg_table_size(oid), reltuples FROM pg_class "
                                     "WHERE relname = 'toasted'").fetchone()
    assert whole > 20 * heap
    assert room.first_cap("toasted") == pytest.approx(room.buffers * BATCH_SHARE / (whole / rows), rel=0.01)


def test_inside_a_transaction_the_wal_room_stays_off_and_touches_nothing(conn):
    from partman.convert.walroom import WalRoom

    with conn.transaction():
        conn.execute("SELECT 1")
        room = WalRoom(conn)
        assert not room.enabled and room.before_batch(10).cap is None


def test_a_wait_for_room_that_gives_up_is_not_repeated_for_a_while(conn, monkeypatch):
    """When other sessions keep the WAL writer behind, waiting gives the copy no room: after a
    wait that gave up, the copy does not wait again until the back-off is over."""
    from partman.convert import walroom

    monkeypatch.setattr(walroom, "GATE_SHARE", -1.0)  # never room, as beside a bulk load
    monkeypatch.setattr(walroom, "MAX_WAIT_S", 0.1)
    room = walroom.WalRoom(conn)
    first = room.before_batch(0)
    assert first.gave_up and first.waited_ms >= 100
    second = room.before_batch(0)
    assert not second.gave_up and second.waited_ms < 50
    room.no_wait_until = 0.0  # the back-off over: it waits again
    assert room.before_batch(0).gave_up


def test_the_positions_read_as_a_batch_commits_serve_the_next_batch_when_they_show_room(conn):
    """The copy reads the WAL positions in its batch's last round trip (queue_reading): a reading
    with room is used as it is (no query), one without room is read again until there is."""
    from partman.convert.walroom import BATCH_SHARE, WalRoom, rows_within

    room = WalRoom(conn)
    with conn.transaction():
        cursor = room.queue_reading()
    unwritten, position = cursor.fetchone()
    assert unwritten >= 0 and position > 0
    far = 10**15  # a position the server is nowhere near
    room.before_batch(0, (0, far))
    found = room.before_batch(4000, (0, far + 2_000_000))  # 2 MB since: the cap follows the reading
    assert found.cap == rows_within(room.buffers * BATCH_SHARE, 2_000_000, 4000)
    assert found.unwritten == 0 and found.waited_ms < 50
    # a reading with the buffers full is not trusted: the positions are read again
    found = room.before_batch(4000, (room.buffers, far + 4_000_000))
    assert found.unwritten <= room.buffers / 2
    assert room.position < far  # the server's own position, not the reading's
