"""After the swap: every row of `<table>_old` must be in the partitioned table with identical
content (an anti-join on the copy key and every column, not a count). Rows changed in the new
table since the swap (recorded by the revert capture) are legitimately different and skipped.
What a bug could have missed is repaired without firing the table's triggers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..db import QualifiedName
from . import triggers
from .capture import KeyColumn, single_integer

FAST_CHUNK = 50_000  # rows per range: a range's hash (~25 MB for the ledger) fits in work_mem


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


def _differs(key: list[KeyColumn], columns: list[str], new: QualifiedName, changed: QualifiedName,
             typed: set[str] | None = None, partition_key: str | None = None,
             inner: sql.Composable | None = None) -> sql.Composed:
    """Rows of old (alias o) without an identical row in new (alias n), not changed since the swap.
    With the partition key matched by equality too, a lookup prunes to one partition; `inner`
    (conditions on n) bounds the new side to the range being compared, which the planner does not
    derive from the bounds on o by itself."""
    typed = typed or set()
    match = [k.name for k in key] + ([partition_key] if partition_key and partition_key not in {k.name for k in key} else [])
    match_key = sql.SQL(" AND ").join(
        [*([inner] if inner is not None else []), *(sql.SQL("n.{0} = o.{0}").format(sql.Identifier(c)) for c in match)]
    )
    same = sql.SQL(" AND ").join(
        (sql.SQL("n.{0} IS NOT DISTINCT FROM o.{0}") if c in typed
         else sql.SQL("n.{0}::text IS NOT DISTINCT FROM o.{0}::text")).format(sql.Identifier(c))
        for c in columns
    )
    changed_key = sql.SQL(" AND ").join(sql.SQL("l.{0} = o.{0}").format(sql.Identifier(k.name)) for k in key)
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {new} n WHERE {match_key} AND {same}) "
        "AND NOT EXISTS (SELECT 1 FROM {changed} l WHERE {changed_key})"
    ).format(new=new.ident(), match_key=match_key, same=same, changed=changed.ident(), changed_key=changed_key)


Range = tuple[list[str] | None, list[str] | None]  # (after, upto]: key values as text, None = open


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
    pause: Callable[[], Any] | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
    repair: bool = True,
) -> dict[str, Any]:
    """Compare, repair if needed, compare again. Returns the figures; "ok" is the verdict.
    The comparison runs in key ranges of about `chunk_rows` rows, one statement each without
    parallel workers, so each range's hash anti-join fits in memory at any table size (one
    anti-join over 10M rows spilled 9 GB to temp files). With `connect` (full speed) a second
    connection takes every other range; with `pause` (default settings) it is called between
    ranges."""
    old_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(old.ident())).fetchone()[0]
    new_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(new.ident())).fetchone()[0]
    changed_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(changed.ident())).fetchone()[0]
    ranges = _integer_ranges(conn, old, key, chunk_rows, old_rows)
    if ranges is None:
        ranges, connect = _offset_ranges(conn, old, key, chunk_rows), None  # one connection walks these

    def count_range(c: psycopg.Connection, r: Range) -> int:
        inner = _bounds("n", key, r)
        differs = _differs(key, columns, new, changed, typed, partition_key, sql.SQL(" AND ").join(inner) if inner else None)
        where = sql.SQL(" AND ").join([*_bounds("o", key, r), differs])
        with c.transaction():
            c.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            c.execute("SET LOCAL work_mem = '64MB'")  # a range's hash stays in memory
            return c.execute(sql.SQL("SELECT count(*) FROM {} o WHERE {}").format(old.ident(), where)).fetchone()[0]

    missing = _on_connections(conn, connect, ranges, count_range, pause)
    result: dict[str, Any] = {
        "old_rows": old_rows, "new_rows": new_rows, "changed_since_swap": changed_rows,
        "missing_or_different": missing, "repaired": 0,
    }
    if missing and repair:
        cond = _differs(key, columns, new, changed, typed, partition_key)
        result["repaired"] = _repair(conn, old, new, key, columns, cond)
        count_q = sql.SQL("SELECT count(*) FROM {} o WHERE {}").format(old.ident(), cond)
        result["missing_or_different_after_repair"] = conn.execute(count_q).fetchone()[0]
        missing = result["missing_or_different_after_repair"]
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


def _integer_ranges(conn: psycopg.Connection, old: QualifiedName, key: list[KeyColumn], chunk_rows: int,
                    rows: int) -> list[Range] | None:
    """For a single integer key: ranges of equal width between min and max, as wide as holds
    about `chunk_rows` rows at the table's average density (exactly at most that many when the
    keys are dense, as a sequence makes them). None for any other key."""
    if not single_integer(key):
        return None
    k = sql.Identifier(key[0].name)
    lo, hi = conn.execute(sql.SQL("SELECT min({k})::bigint, max({k})::bigint FROM {t}").format(k=k, t=old.ident())).fetchone()
    if lo is None:
        return []
    width = max(chunk_rows, chunk_rows * (hi - lo + 1) // max(rows, 1))
    edges = list(range(lo - 1, hi, width)) + [hi]
    return [([str(a)], [str(b)]) for a, b in zip(edges, edges[1:])]


def _offset_ranges(conn: psycopg.Connection, old: QualifiedName, key: list[KeyColumn], chunk_rows: int) -> Iterator[Range]:
    """For any other key: ranges of `chunk_rows` rows, each upper bound found by an index scan
    from the previous one (computed as the comparison goes, on the same connection)."""
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    as_text = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in key))
    after: list[str] | None = None
    while True:
        where = sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(_bounds("o", key, (after, None)))) if after else sql.SQL("")
        upto = conn.execute(
            sql.SQL("SELECT {} FROM {} o {} ORDER BY {} OFFSET {} LIMIT 1").format(
                as_text, old.ident(), where, keycols, sql.Literal(chunk_rows - 1)),
        ).fetchone()
        yield after, (list(upto[0]) if upto else None)
        if not upto:
            return
        after = list(upto[0])


def _on_connections(conn: psycopg.Connection, connect: Callable[[], psycopg.Connection] | None,
                    ranges: Iterable[Range], count: Callable[[psycopg.Connection, Range], int],
                    pause: Callable[[], Any] | None) -> int:
    """Sum `count` over the ranges: on `conn` alone, or on `conn` and a second connection taking
    the next range in turn. `pause()` runs between one connection's ranges."""
    todo = iter(ranges)
    lock = threading.Lock()
    stop = threading.Event()

    def work(c: psycopg.Connection) -> int:
        total, first = 0, True
        while not stop.is_set():
            with lock:
                r = next(todo, None)
            if r is None:
                break
            if pause is not None and not first:
                pause()
            first = False
            try:
                total += count(c, r)
            except BaseException:
                stop.set()
                raise
        return total

    if connect is None:
        return work(conn)

    def second() -> int:
        try:
            c = connect()
        except BaseException:
            stop.set()
            raise
        with c:
            return work(c)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="partman-verify") as ex:
        futures = [ex.submit(work, conn), ex.submit(second)]
        return sum(f.result() for f in futures)


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
