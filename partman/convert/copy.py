"""The batched, throttled copy: keyset pagination over the copy key, one short transaction per
batch that inserts the rows and advances the cursor recorded in the catalog, so a killed run
resumes at the last committed batch and no row is copied twice.

Where the time goes (measured with bench/convert_bench.py and the backend's CPU time, PG 15,
~480-byte ledger rows): each batch first finds its last key in the key's index (the n-th key
after the cursor: `ORDER BY key OFFSET n-1 LIMIT 1`, or the range's last key when fewer are
left), then runs one in-server `INSERT ... SELECT ... WHERE key > cursor AND key <= last`, whose
row count is the batch's rows. The form before it, `WITH ins AS (INSERT ... ORDER BY key LIMIT n
RETURNING key) SELECT count(*), <last key> FROM ins`, spent 10-30% more of the backend's CPU on
the rows it returned through the CTE (the more, the smaller the batch) than the lookup costs;
an earlier form still materialized whole rows in the CTE and cost ~35% more again.
Inserting straight into the target partition instead of routing through the partitioned parent
was measured too and did not pay on PG 15 (finding the partition first costs what routing
saves), nor did batches larger than 10,000 rows: per-batch overhead is already small.

Each batch commits asynchronously (synchronous_commit off for its transaction): its rows and the
cursor are lost or kept together, so a crash can only make a resumed run copy the last few
batches again, and no batch waits for its WAL to reach the disk.

At full speed (--sleep 0, a single integer copy key) two connections copy the lower and the
upper half of the key range at once, each half with its own cursor in the catalog (last_key,
upper_key; the split in upper_from), each committed with the half's batch: a resumed run goes on
from both exactly, at either pace, and deletes nothing (for the 44M-row ledger, a delete beyond
one cursor would scan the unindexed shadow and remove up to half of what was copied).

Throttled (the default, --sleep > 0), batches aim at GENTLE_BATCH_MS instead: measured with the
bench's writer at 300k rows, 2,000-row batches kept its p99 during the copy at ~2x idle where
10,000-row batches gave ~4x, at the same pause between them.

The batch size adapts downwards: a batch that took longer than TARGET_BATCH_MS shrinks the
next one in proportion (wide rows, TOAST, a busy disk), and it grows back up to the configured
size once batches are fast again, so no copy transaction runs long. Before each batch, outside
its transaction, the copy waits for room in the server's WAL buffers and keeps the batch's WAL
within it (walroom.py): otherwise a batch that fills them waits inside its transaction while the
WAL writer's fsync holds the write lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import catalog, db, failpoints, log
from ..db import QualifiedName
from ..settings import Settings
from .capture import KeyColumn, single_integer
from .throttle import Throttle
from .walroom import WalRoom

TARGET_BATCH_MS = 150.0  # well under the 250 ms a copy transaction may take
GENTLE_BATCH_MS = 25.0  # throttled: short batches, so an application insert seldom meets one
GENTLE_FIRST_BATCH = 1000
MIN_BATCH = 100


def _key_conditions(key: list[KeyColumn], after: list[str] | None,
                    upto: list[str] | None) -> tuple[sql.Composable, list[str]]:
    """`WHERE (k...) > (after) AND (k...) <= (upto)` (either side optional) and its params."""
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    typed = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(k.type)) for k in key)
    params: list[str] = []
    conds: list[sql.Composable] = []
    if after is not None:
        conds.append(sql.SQL("({}) > ({})").format(keycols, typed))
        params += list(after)
    if upto is not None:
        conds.append(sql.SQL("({}) <= ({})").format(keycols, typed))
        params += list(upto)
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    return where, params


def bound_statement(source: QualifiedName, key: list[KeyColumn], *, after: list[str] | None,
                    upto: list[str] | None, rows: int | None) -> tuple[sql.Composed, list[str]]:
    """The key (as text[]) of the `rows`-th row after `after` (not beyond `upto`), found in the key's
    index; with `rows` None the last key in that range. No row: fewer rows (or none) are left."""
    where, params = _key_conditions(key, after, upto)
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    last_key = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in key))
    order = sql.SQL(", ").join(sql.SQL("{}{}").format(sql.Identifier(k.name), sql.SQL(" DESC") if rows is None else sql.SQL(""))
                               for k in key)
    offset = sql.SQL(" OFFSET {}").format(sql.Literal(rows - 1)) if rows is not None else sql.SQL("")
    # the key as text for the one row kept only: in the scan's own target list it was computed for
    # each of the rows the OFFSET skips (twice the lookup's time)
    return sql.SQL("SELECT {} FROM (SELECT {} FROM {} {} ORDER BY {}{} LIMIT 1) b").format(
        last_key, keycols, source.ident(), where, order, offset), params


def batch_statement(
    source: QualifiedName,
    target: QualifiedName,
    key: list[KeyColumn],
    columns: list[str],
    *,
    overriding: bool,
    after: list[str] | None,
    upto: list[str],
) -> tuple[sql.Composed, list[str]]:
    """INSERT the rows after the cursor `after` up to the key `upto` (inclusive), found first by
    bound_statement; returns (statement, params). Its row count is the batch's rows. A plain
    INSERT: returning the keys through a CTE, to count them and take the last, cost 10-30% more
    of the copy's CPU, the lookup of the bound a small part of that (bench/RESULTS.md, "The
    batch's bound looked up first")."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    where, params = _key_conditions(key, after, upto)
    stmt = sql.SQL("INSERT INTO {target} ({cols}) {overriding} SELECT {cols} FROM {source} {where} ORDER BY {keycols}").format(
        cols=cols,
        source=source.ident(),
        where=where,
        keycols=keycols,
        target=target.ident(),
        overriding=sql.SQL("OVERRIDING SYSTEM VALUE") if overriding else sql.SQL(""),
    )
    return stmt, params


def next_batch_size(current: int, ceiling: int, ms: float, target_ms: float = TARGET_BATCH_MS) -> int:
    """Shrink in proportion when a batch overran the target; grow back (at most doubling, at
    most to the configured size) when it took less than half of it."""
    if ms > target_ms:
        return max(min(MIN_BATCH, ceiling), int(current * target_ms / ms))
    if ms < target_ms / 2 and current < ceiling:
        return min(ceiling, current * 2)
    return current


def run_copy(
    conn: psycopg.Connection,
    settings: Settings,
    conversion_id: int,
    source: QualifiedName,
    target: QualifiedName,
    key: list[KeyColumn],
    columns: list[str],
    *,
    overriding: bool,
    start_after: list[str] | None,
    rows_done: int,
    batch_size: int,
    sleep: float,
    on_progress: Callable[[int, float], None],
    work_schema: str | None = None,
    workers: int = 1,
    upper: tuple[list[str], list[str] | None] | None = None,
    exact: bool = True,
    on_pacing: Callable[[Callable[[], dict[str, Any]]], None] | None = None,
    figures: Callable[[], dict[str, Any]] | None = None,
) -> tuple[int, float]:
    """Copy until the source is exhausted. Returns (rows copied in total, longest batch ms).
    Between batches: `sleep` seconds, stretched by the adaptive throttle (throttle.py) when the
    application's probe suffers; `--sleep 0` is full speed, no throttle, and with `workers` > 1
    and a single integer copy key, two connections copy the two halves of the key range.

    Resuming: `start_after` is the cursor of the range (its lower half's when it was split),
    `upper` the upper half's start and cursor (catalog upper_from, upper_key). Every cursor is
    exact, so nothing is deleted; a conversion begun by a version that kept one low-watermark
    cursor (`exact` false) first deletes what lies beyond it. `on_pacing` is handed the
    throttle's `pacing` when it is on (the progress lines show it); what `figures()` gives
    (progress.Progress.figures) goes with each batch to the catalog's `pace`."""
    common = dict(source=source, target=target, key=key, columns=columns, overriding=overriding, batch_size=batch_size,
                  figures=figures)
    if not exact and (start_after is not None or rows_done):
        rows_done = _discard_beyond(conn, settings, conversion_id, target, key, start_after, rows_done)
    with Throttle(settings, work_schema, sleep, enabled=settings.throttle) as throttle:
        gentle = throttle.enabled
        if gentle and on_pacing is not None:
            on_pacing(throttle.pacing)
        parallel = workers > 1 and not gentle
        if upper is None and parallel:
            split = _split_point(conn, source, key, start_after, batch_size)
            if split is not None:
                with conn.transaction():
                    catalog.update_conversion(conn, settings, conversion_id, upper_from=split)
                upper = (split, None)

        def one_range(after: list[str] | None, upto: list[str] | None, done: int,
                      cursor: str) -> tuple[int, float, list[str] | None]:
            return _copy(conn, settings, conversion_id, after=after, upto=upto, rows_done=done,
                         pause=throttle.pause, on_progress=on_progress, cursor=cursor,
                         target_ms=GENTLE_BATCH_MS if gentle else TARGET_BATCH_MS,
                         first=min(batch_size, GENTLE_FIRST_BATCH) if gentle else batch_size, **common)

        if upper is None:
            rows_done, longest, last = one_range(start_after, None, rows_done, "last_key")
        elif parallel:
            rows_done, longest, last = _copy_parallel(conn, settings, conversion_id, start_after, upper, rows_done,
                                                      on_progress, common)
        else:  # a split copy resumed at a gentle pace: the lower half, then the upper
            rows_done, longest0, _ = one_range(start_after, upper[0], rows_done, "last_key")
            rows_done, longest, last = one_range(upper[1] or upper[0], None, rows_done, "upper_key")
            longest = max(longest, longest0)
    db.flush_statistics(conn)  # before the ANALYZE reads the partitions
    with conn.transaction():  # one range again, copied up to its last key
        extra = {"last_key": last} if last is not None else {}
        catalog.update_conversion(conn, settings, conversion_id, longest_batch_ms=longest, rows_copied=rows_done,
                                  upper_from=None, upper_key=None, **extra)
    return rows_done, longest


def _split_point(conn: psycopg.Connection, source: QualifiedName, key: list[KeyColumn], after: list[str] | None,
                 batch_size: int) -> list[str] | None:
    """The middle of the remaining key range, for a single integer copy key with enough rows."""
    if not single_integer(key):
        return None
    k = sql.Identifier(key[0].name)
    where = sql.SQL("WHERE {} > %s::bigint").format(k) if after is not None else sql.SQL("")
    lo, hi = conn.execute(
        sql.SQL("SELECT min({k})::bigint, max({k})::bigint FROM {t} {w}").format(k=k, t=source.ident(), w=where),
        list(after or []),
    ).fetchone()
    if lo is None or hi - lo < 8 * batch_size:
        return None
    return [str(lo + (hi - lo) // 2)]


def _discard_beyond(conn: psycopg.Connection, settings: Settings, conversion_id: int, target: QualifiedName,
                    key: list[KeyColumn], after: list[str] | None, rows_copied: int) -> int:
    """For a conversion begun by a version whose two copy workers kept one low-watermark cursor:
    delete the target's rows beyond the cursor (all of them when there is none); returns the
    rows that remain, and records it. The catalog's total counts every committed batch exactly
    (catalog.add_copied), so the rows that remain are that total less those deleted: no count of
    the whole target (for the 44M-row ledger, a resumed paced conversion would read tens of GB
    at once)."""
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    with conn.transaction():
        if after is None:
            conn.execute(sql.SQL("DELETE FROM {}").format(target.ident()))
            remaining = 0
        else:
            deleted = conn.execute(
                sql.SQL("DELETE FROM {} WHERE ({}) > ({})").format(
                    target.ident(), keycols,
                    sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(k.type)) for k in key),
                ),
                list(after),
            ).rowcount
            remaining = max(rows_copied - deleted, 0)
        catalog.update_conversion(conn, settings, conversion_id, rows_copied=remaining)
    return remaining


def _copy(
    conn: psycopg.Connection, settings: Settings, conversion_id: int, *, source: QualifiedName,
    target: QualifiedName, key: list[KeyColumn], columns: list[str], overriding: bool, after: list[str] | None,
    upto: list[str] | None, rows_done: int, batch_size: int, pause: Callable[[], float],
    on_progress: Callable[[int, float], None], cursor: str = "last_key",
    committed: Callable[[int, list[str] | None], None] | None = None, stop: threading.Event | None = None,
    target_ms: float = TARGET_BATCH_MS, first: int | None = None,
    figures: Callable[[], dict[str, Any]] | None = None,
) -> tuple[int, float, list[str] | None]:
    """Batches from `after` to `upto` (inclusive; None: to the end). Each batch adds its rows to
    the catalog's total and sets the catalog column `cursor` to its last key (and `pace` to
    `figures()`, when given), in its own transaction; `committed(n, last)` runs after each commit.
    Returns (rows, longest batch ms, last key)."""
    longest = 0.0
    size = first or batch_size
    room = WalRoom(conn)
    size = min(size, room.first_cap(source.literal) or size)
    n = batches = gave_up = 0
    waited_ms = 0.0
    reading: tuple[int, int] | None = None  # the WAL positions as the last batch committed
    while stop is None or not stop.is_set():
        found = room.before_batch(n, reading)  # outside the transaction: any wait for the WAL writer is here
        waited_ms += found.waited_ms
        gave_up += found.gave_up
        if found.cap is not None:
            size = min(size, found.cap)
        t0 = time.perf_counter()
        n, positions = 0, None
        # three round trips a batch (db.pipeline): BEGIN, the setting and the lookup of its last
        # key; the INSERT (for its row count); the catalog's update, the WAL positions and COMMIT.
        # Its seven statements one by one made a 2M-row copy 1.6 s longer with a server 1.3 ms
        # away, three round trips 1.1-1.6 s (bench/swap_bench.py)
        with db.pipeline(conn), conn.transaction():
            # the batch and its cursor commit together, so losing the last few to a crash (what an
            # asynchronous commit risks) only means copying them again: no wait for the WAL flush
            conn.execute("SET LOCAL synchronous_commit = off")
            # the batch's last key first (the size-th row after the cursor, or the range's last)
            last_batch = False
            found_key = conn.execute(*bound_statement(source, key, after=after, upto=upto, rows=size)).fetchone()
            if found_key is None:
                last_batch = True
                found_key = conn.execute(*bound_statement(source, key, after=after, upto=upto, rows=None)).fetchone()
            if found_key is None:
                last = None
            else:
                last = list(found_key[0])
                with db.pipeline(conn):  # its end: the INSERT's row count
                    inserted = conn.execute(*batch_statement(source, target, key, columns, overriding=overriding,
                                                             after=after, upto=last))
                n = inserted.rowcount
                pace = figures() if figures is not None else None
                catalog.add_copied(conn, settings, conversion_id, n, **{cursor: last},
                                   **({"pace": Jsonb(pace)} if pace else {}))
                positions = room.queue_reading()
        reading = positions.fetchone() if positions is not None else None
        ms = (time.perf_counter() - t0) * 1000
        longest = max(longest, ms)
        if last is None:
            break
        batches += 1
        rows_done += n
        after = last
        if committed:
            committed(n, last)
        else:
            on_progress(rows_done, ms)
        failpoints.hit("convert.copy.after_batch")
        if last_batch:
            break
        size = next_batch_size(size, batch_size, ms, target_ms)
        if pause() > 0:
            reading = None  # read again after a pause
    log.get().info("copy_range", cursor=cursor, batches=batches, longest_batch_ms=round(longest, 1),
                   wal_wait_s=round(waited_ms / 1000, 2), wal_waits_given_up=gave_up, wal_room=room.enabled)
    return rows_done, longest, after


def _copy_parallel(
    conn: psycopg.Connection, settings: Settings, conversion_id: int, start_after: list[str] | None,
    upper: tuple[list[str], list[str] | None], rows_done: int, on_progress: Callable[[int, float], None],
    common: dict,
) -> tuple[int, float, list[str] | None]:
    """Two connections: the lower half (start_after, upper_from] on `conn`, its cursor in
    last_key; the upper half after upper_key (or upper_from) on a second one, its cursor in
    upper_key. Each batch commits its rows with its own half's cursor, so both stay exact."""
    split, upper_after = upper
    lock = threading.Lock()
    total = [rows_done]
    stop = threading.Event()

    def committed(n: int, last: list[str] | None) -> None:
        with lock:
            total[0] += n
            on_progress(total[0], None)  # type: ignore[arg-type]

    def half(c: psycopg.Connection, after: list[str] | None, upto: list[str] | None,
             cursor: str) -> tuple[int, float, list[str] | None]:
        try:
            return _copy(c, settings, conversion_id, after=after, upto=upto, rows_done=0, pause=lambda: 0.0,
                         on_progress=on_progress, cursor=cursor, committed=committed,
                         stop=stop, **common)
        except BaseException:
            stop.set()
            raise

    def upper_half() -> tuple[int, float, list[str] | None]:
        c = db.connect(settings, "partman convert worker")
        try:
            result = half(c, upper_after or split, None, "upper_key")
            db.flush_statistics(c)  # now, not as the session ends: maybe after the ANALYZE
            return result
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="partman-copy") as ex:
        f1 = ex.submit(upper_half)
        f0 = ex.submit(half, conn, start_after, split, "last_key")
        wait([f0, f1], return_when=FIRST_EXCEPTION)
        r0 = f0.result()
        r1 = f1.result()
    if stop.is_set():
        raise RuntimeError("a copy worker stopped early")  # unreachable: its exception was raised above
    return total[0], max(r0[1], r1[1]), r1[2]
