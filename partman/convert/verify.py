"""After the swap: every row of `<table>_old` must be in the partitioned table with identical
content (a join on the copy key that compares every column, not a count). Rows changed in the new
table since the swap (recorded by the revert capture) are legitimately different and skipped.
What a bug could have missed is repaired without firing the table's triggers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .. import db, failpoints
from ..db import QualifiedName
from . import plan, triggers
from .capture import KeyColumn, single_integer
from .copy import next_batch_size

FAST_CHUNK = 50_000  # rows per range: a range's hash (~25 MB for the ledger) fits in work_mem
# Paced (default settings), a range's statement aims at GENTLE_RANGE_MS, each range sized by the
# last one's duration as the copy sizes its batches, so no statement of a paced verification runs
# long: measured with bench/verify_bench.py (ledger rows, fsync on), 6-8 ms each and 11-14 ms at
# most, where 20,000-row ranges took 33-61 ms and up to 89. Each range is followed by a whole
# throttle pause, so the verification works a small share of the time. In the benchmark's gentle
# runs (bench/RESULTS.md, "Gently"), an application writer's p99 during the verification against its p99
# with partman stopped in the same minutes: 1.11x (2.06x in the run before, 20,000-row ranges);
# with the pauses cut in proportion to the ranges' shorter work (tried, not kept), 2.44x its idle.
# The cost is time: 77 s and 496 s for 1M rows in two such runs (the pauses follow the throttle),
# against 60-100 s with 20,000-row ranges.
GENTLE_RANGE_MS = 10.0
RECORD_EVERY_S = 2.0  # how often a range also records the verification's progress (`record`)
GENTLE_FIRST_RANGE = plan.GENTLE_VERIFY_ROWS


# Types whose own equality is exact for a copied value (arrays of them too): compared as they are,
# which is about twice as fast as comparing text. Anything else (json, xml, geometric types,
# user types) is compared as text.
TYPED_EQUALITY = {
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean", "text", "character varying",
    "character", "name", "uuid", "bytea", "jsonb", "date", "timestamp with time zone", "timestamp without time zone",
    "time without time zone", "interval", "inet", "cidr", "macaddr", "oid", "money",
}


def typed_columns(model: Any) -> set[str]:
    """The columns of an introspected table that can be compared with their own equality."""
    return {c.name for c in model.columns if c.base_type.split("(")[0].removesuffix("[]") in TYPED_EQUALITY}


Range = tuple[list[str] | None, list[str] | None]  # (after, upto]: key values as text, None = open
Figures = tuple[int, int, int]  # a range's rows in old, rows in new, rows of old missing or different in new
Span = tuple[int | None, int | None, float]  # a single integer key's min, max (None: empty) and keys per row


class RangeRows:
    """Rows per range: fixed at full speed; with `target_ms` (paced) each range's duration sizes
    the next, as copy.next_batch_size sizes the copy's batches (ranges are cut as they are taken)."""

    def __init__(self, rows: int, target_ms: float | None = None, ceiling: int = FAST_CHUNK) -> None:
        self.rows, self.target_ms, self.ceiling = rows, target_ms, max(rows, ceiling)

    def took(self, ms: float) -> None:
        if self.target_ms is not None:
            self.rows = next_batch_size(self.rows, self.ceiling, ms, self.target_ms)


def _match(key: list[KeyColumn], partition_key: str | None) -> list[str]:
    """The columns a row of old and its copy in new share by equality: the copy key and, when the
    new table is partitioned by another column, the partition key too (so a lookup prunes to one
    partition)."""
    return [k.name for k in key] + ([partition_key] if partition_key and partition_key not in {k.name for k in key} else [])


def _same(columns: list[str], typed: set[str] | None) -> sql.Composed:
    """Every column of n (new) identical to o's (old): by the type's own equality where that is
    exact, as text otherwise."""
    typed = typed or set()
    return sql.SQL(" AND ").join(
        (sql.SQL("n.{0} IS NOT DISTINCT FROM o.{0}") if c in typed
         else sql.SQL("n.{0}::text IS NOT DISTINCT FROM o.{0}::text")).format(sql.Identifier(c))
        for c in columns
    )


def _unchanged(key: list[KeyColumn], changed: QualifiedName) -> sql.Composed:
    """o's key not logged as changed since the swap."""
    changed_key = sql.SQL(" AND ").join(sql.SQL("l.{0} = o.{0}").format(sql.Identifier(k.name)) for k in key)
    return sql.SQL("NOT EXISTS (SELECT 1 FROM {} l WHERE {})").format(changed.ident(), changed_key)


def _differs(key: list[KeyColumn], columns: list[str], new: QualifiedName, changed: QualifiedName,
             typed: set[str] | None = None, partition_key: str | None = None) -> sql.Composed:
    """Rows of old (alias o) without an identical row in new (alias n), not changed since the swap
    (the repair's condition, over the whole table)."""
    match_key = sql.SQL(" AND ").join(sql.SQL("n.{0} = o.{0}").format(sql.Identifier(c)) for c in _match(key, partition_key))
    return sql.SQL("NOT EXISTS (SELECT 1 FROM {new} n WHERE {match_key} AND {same}) AND {unchanged}").format(
        new=new.ident(), match_key=match_key, same=_same(columns, typed), unchanged=_unchanged(key, changed))


def _range_counts(old: QualifiedName, new: QualifiedName, changed: QualifiedName, key: list[KeyColumn],
                  columns: list[str], typed: set[str] | None, partition_key: str | None, r: Range) -> sql.Composed:
    """One statement for the range r: the rows of old in it, the rows of new in it, and the rows
    of old without an identical row in new that were not changed since the swap. A full join of
    the two sides' rows in the range (hashed on the key), so no statement of the verification
    reads a whole table: the counts come range by range, paced like the comparison."""
    def side(t: QualifiedName, alias: str) -> sql.Composed:
        bounds = _bounds(alias, key, r)
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(bounds) if bounds else sql.SQL("")
        return sql.SQL("(SELECT * FROM {} {}{}) {}").format(t.ident(), sql.Identifier(alias), where, sql.Identifier(alias))

    match_key = sql.SQL(" AND ").join(sql.SQL("n.{0} = o.{0}").format(sql.Identifier(c)) for c in _match(key, partition_key))
    k = sql.Identifier(key[0].name)
    return sql.SQL(
        "SELECT count(o.{k}), count(n.{k}), "
        "count(*) FILTER (WHERE o.{k} IS NOT NULL AND (n.{k} IS NULL OR NOT ({same})) AND {unchanged}) "
        "FROM {old} FULL JOIN {new} ON {match_key}"
    ).format(k=k, same=_same(columns, typed), unchanged=_unchanged(key, changed), old=side(old, "o"),
             new=side(new, "n"), match_key=match_key)


def verify(
    conn: psycopg.Connection,
    old: QualifiedName,
    new: QualifiedName,
    changed: QualifiedName,
    key: list[KeyColumn],
    columns: list[str],
    *,
    typed: set[str] | None = None,
    partition_key: str | None = None,
    chunk_rows: int = FAST_CHUNK,
    target_ms: float | None = None,
    pause: Callable[[], Any] | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
    repair: bool = True,
    on_progress: Callable[[int], None] | None = None,
    record: Callable[[psycopg.Connection], None] | None = None,
) -> dict[str, Any]:
    """Compare, repair if needed, compare again. Returns the figures; "ok" is the verdict.
    The comparison and the row counts run in key ranges of about `chunk_rows` rows, one statement
    each without parallel workers, so each range's hash fits in memory at any table size (one
    anti-join over 10M rows spilled 9 GB to temp files) and no statement reads a whole table.
    With `connect` (full speed) a second connection takes every other range; with `pause`
    (default settings) it is called between ranges, and with `target_ms` the ranges' size adapts
    so that each statement takes about that long (RangeRows). `on_progress` is told the rows of
    `old` compared so far after each range of the first comparison; `record(c)`, at most every
    RECORD_EVERY_S, adds its statements to a range's pipeline (the progress to the catalog)."""
    changed_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(changed.ident())).fetchone()[0]
    size = RangeRows(chunk_rows, target_ms)
    span = _integer_span(conn, old, key)
    if span is None:  # any other key: one connection walks the index for each range's end
        connect = None

    def ranges() -> Iterator[Range]:
        return _offset_ranges(conn, old, key, size) if span is None else _integer_ranges(span, size)

    next_record = [time.monotonic() + RECORD_EVERY_S]

    def count_range(c: psycopg.Connection, r: Range) -> Figures:
        t0 = time.perf_counter()
        with db.pipeline(c), c.transaction():  # BEGIN, the settings, the statement, COMMIT: one round trip
            if record is not None and time.monotonic() >= next_record[0]:
                next_record[0] = time.monotonic() + RECORD_EVERY_S
                record(c)
            c.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            c.execute("SET LOCAL work_mem = '64MB'")  # a range's hash stays in memory
            # no JIT: the NOT EXISTS's estimate lifts a 50,000-row range past jit_above_cost, and
            # compiling its ~50 functions took ~20 ms of a ~100 ms range (1M rows at full speed:
            # 1.15 s against 1.28 s on average, faster in nine pairs of nine)
            c.execute("SET LOCAL jit = off")
            counting = c.execute(_range_counts(old, new, changed, key, columns, typed, partition_key, r))
        figures = counting.fetchone()
        size.took((time.perf_counter() - t0) * 1000)
        failpoints.hit("convert.verify.after_range")
        return figures

    compared = [0]

    def counted(figures: Figures) -> None:
        compared[0] += figures[0]
        if on_progress is not None:
            on_progress(compared[0])

    old_rows, new_rows, missing = _on_connections(conn, connect, ranges(), count_range, pause, counted)
    if span is not None:  # the ranges span old's keys: add new's rows beyond them (written since the swap)
        new_rows += _new_outside(conn, new, key, span)
    result: dict[str, Any] = {
        "old_rows": old_rows, "new_rows": new_rows, "changed_since_swap": changed_rows,
        "missing_or_different": missing, "repaired": 0,
    }
    if missing and repair:
        result["repaired"] = _repair(conn, old, new, key, columns, _differs(key, columns, new, changed, typed, partition_key))
        missing = _on_connections(conn, None, ranges(), count_range, pause)[2]
        result["missing_or_different_after_repair"] = missing
    result["ok"] = missing == 0
    return result


def _bounds(alias: str, key: list[KeyColumn], r: Range) -> list[sql.Composable]:
    """`(alias.k1, ...) > (after)` and `<= (upto)` for the range r, values as typed literals."""
    cols = sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(k.name)) for k in key)
    out: list[sql.Composable] = []
    for op, values in ((">", r[0]), ("<=", r[1])):
        if values is not None:
            vals = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(k.type)) for k, v in zip(key, values))
            out.append(sql.SQL("({}) {} ({})").format(cols, sql.SQL(op), vals))
    return out


def _integer_span(conn: psycopg.Connection, old: QualifiedName, key: list[KeyColumn]) -> Span | None:
    """For a single integer key: its min, max and keys per row at the table's average density
    (estimated as the planner does; a count when the table was never analyzed), so that ranges
    of equal width hold about as many rows as asked for (exactly at most that many when the keys
    are dense, as a sequence makes them). None for any other key."""
    if not single_integer(key):
        return None
    k = sql.Identifier(key[0].name)
    lo, hi = conn.execute(sql.SQL("SELECT min({k})::bigint, max({k})::bigint FROM {t}").format(k=k, t=old.ident())).fetchone()
    if lo is None:
        return None, None, 1.0
    # the planner's own estimate: the density of the last ANALYZE or VACUUM times the table's
    # current size, so a table grown since its last ANALYZE is not taken for a small one
    rows = conn.execute(
        "SELECT CASE WHEN relpages > 0 AND reltuples > 0 THEN (reltuples / relpages * "
        "(pg_relation_size(oid) / current_setting('block_size')::int))::bigint ELSE 0 END "
        "FROM pg_class WHERE oid = %s::regclass", (old.literal,)).fetchone()[0]
    if rows <= 0:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(old.ident())).fetchone()[0]
    return lo, hi, max(1.0, (hi - lo + 1) / max(rows, 1))


def _integer_ranges(span: Span, size: RangeRows) -> Iterator[Range]:
    """Consecutive ranges from min to max, each as wide as holds `size.rows` rows at the span's
    density when it is taken."""
    lo, hi, keys_per_row = span
    if lo is None or hi is None:
        return
    after = lo - 1
    while after < hi:
        upto = min(hi, after + max(1, int(size.rows * keys_per_row)))
        yield [str(after)], [str(upto)]
        after = upto


def _new_outside(conn: psycopg.Connection, new: QualifiedName, key: list[KeyColumn], span: Span) -> int:
    """new's rows with a key outside old's span (all of them when old is empty): rows written
    since the swap, found by index range scans."""
    lo, hi, _ = span
    if lo is None:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(new.ident())).fetchone()[0]
    k = sql.Identifier(key[0].name)
    return conn.execute(
        sql.SQL("SELECT (SELECT count(*) FROM {t} WHERE {k} < %s::bigint) + (SELECT count(*) FROM {t} WHERE {k} > %s::bigint)")
        .format(t=new.ident(), k=k),
        (lo, hi),
    ).fetchone()[0]


def _offset_ranges(conn: psycopg.Connection, old: QualifiedName, key: list[KeyColumn], size: RangeRows) -> Iterator[Range]:
    """For any other key: ranges of `size.rows` rows, each upper bound found by an index scan
    from the previous one (computed as the comparison goes, on the same connection)."""
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    as_text = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in key))
    after: list[str] | None = None
    while True:
        where = sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(_bounds("o", key, (after, None)))) if after else sql.SQL("")
        upto = conn.execute(
            # the key as text for the one row kept, not for each row the OFFSET skips
            sql.SQL("SELECT {} FROM (SELECT {} FROM {} o {} ORDER BY {} OFFSET {} LIMIT 1) o").format(
                as_text, keycols, old.ident(), where, keycols, sql.Literal(size.rows - 1)),
        ).fetchone()
        yield after, (list(upto[0]) if upto else None)
        if not upto:
            return
        after = list(upto[0])


def _add(a: Figures, b: Figures) -> Figures:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _on_connections(conn: psycopg.Connection, connect: Callable[[], psycopg.Connection] | None,
                    ranges: Iterable[Range], count: Callable[[psycopg.Connection, Range], Figures],
                    pause: Callable[[], Any] | None, counted: Callable[[Figures], None] | None = None) -> Figures:
    """Sum the figures `count` gives for each range (old rows, new rows, missing or different):
    on `conn` alone, or on `conn` and a second connection taking the next range in turn.
    `pause()` runs between one connection's ranges; `counted` is given each range's figures
    (one at a time)."""
    todo = iter(ranges)
    lock = threading.Lock()
    stop = threading.Event()

    def work(c: psycopg.Connection) -> Figures:
        total, first = (0, 0, 0), True
        while not stop.is_set():
            with lock:
                r = next(todo, None)
            if r is None:
                break
            if pause is not None and not first:
                pause()
            first = False
            try:
                figures = count(c, r)
            except BaseException:
                stop.set()
                raise
            total = _add(total, figures)
            if counted is not None:
                with lock:
                    counted(figures)
        return total

    if connect is None:
        return work(conn)

    def second() -> Figures:
        try:
            c = connect()
        except BaseException:
            stop.set()
            raise
        with c:
            return work(c)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="partman-verify") as ex:
        futures = [ex.submit(work, conn), ex.submit(second)]
        return _add(futures[0].result(), futures[1].result())


def _repair(
    conn: psycopg.Connection, old: QualifiedName, new: QualifiedName, key: list[KeyColumn], columns: list[str],
    cond: sql.Composable,
) -> int:
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    ocols = sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(c)) for c in columns)
    try:
        with conn.transaction():
            # the table's own triggers (a hash chain) must not rewrite what is repaired: replica
            # role where allowed, else the owner turns them off for this transaction only
            restore: list[sql.Composed] = []
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL session_replication_role = replica")
            except pgerrors.InsufficientPrivilege:
                restore = triggers.restore(new, triggers.states(conn, new))
                conn.execute(triggers.disable_all(new))
            conn.execute(
                sql.SQL("CREATE TEMP TABLE partman_repair ON COMMIT DROP AS SELECT {} FROM {} o WHERE {}").format(
                    ocols, old.ident(), cond
                )
            )
            conn.execute(
                sql.SQL("DELETE FROM {} n USING partman_repair r WHERE ({}) = ({})").format(
                    new.ident(),
                    sql.SQL(", ").join(sql.SQL("n.{}").format(sql.Identifier(k.name)) for k in key),
                    sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(k.name)) for k in key),
                )
            )
            n = conn.execute(
                sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM partman_repair ORDER BY {}").format(
                    new.ident(), cols, cols, keycols
                )
            ).rowcount
            for stmt in restore:
                conn.execute(stmt)
        return n
    except pgerrors.InsufficientPrivilege:
        return 0
