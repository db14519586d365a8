"""The batched, throttled copy: keyset pagination over the copy key, one short transaction per
batch that inserts the rows and advances the cursor recorded in the catalog, so a killed run
resumes at the last committed batch and no row is copied twice.

Where the time goes (measured with bench/convert_bench.py and the backend's CPU time, PG 15,
~480-byte ledger rows): each batch is one in-server `INSERT ... SELECT ... ORDER BY key LIMIT n
RETURNING <key>`. RETURNING only the key keeps the per-batch bookkeeping (row count, last key)
to a few bytes per row; the earlier form materialized whole rows in a CTE, which spills to a
temp file once a batch exceeds work_mem (10,000 such rows are ~4.5 MB) and cost ~35% more CPU.
Inserting straight into the target partition instead of routing through the partitioned parent
was measured too and did not pay on PG 15 (finding the partition first costs what routing
saves), nor did batches larger than 10,000 rows: per-batch overhead is already small.

The batch size adapts downwards: a batch that took longer than TARGET_BATCH_MS shrinks the
next one in proportion (wide rows, TOAST, a busy disk), and it grows back up to the configured
size once batches are fast again, so no copy transaction runs long."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from .. import catalog, failpoints
from ..db import QualifiedName
from ..settings import Settings
from .capture import KeyColumn

TARGET_BATCH_MS = 150.0  # well under the 250 ms a copy transaction may take
MIN_BATCH = 100


def batch_statement(
    source: QualifiedName,
    target: QualifiedName,
    key: list[KeyColumn],
    columns: list[str],
    *,
    overriding: bool,
    after: list[str] | None,
    limit: int,
) -> tuple[sql.Composed, list[str]]:
    """INSERT the next `limit` rows after the cursor `after`; returns (statement, params).
    The statement yields (rows copied, the last key as text[])."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    where = sql.SQL("")
    params: list[str] = []
    if after is not None:
        where = sql.SQL("WHERE ({}) > ({})").format(
            keycols,
            sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(k.type)) for k in key),
        )
        params = list(after)
    last_key = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in key))
    desc = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k.name)) for k in key)
    stmt = sql.SQL(
        """WITH ins AS (
               INSERT INTO {target} ({cols}) {overriding}
               SELECT {cols} FROM {source} {where} ORDER BY {keycols} LIMIT {limit}
               RETURNING {keycols}
           )
           SELECT count(*), (SELECT {last_key} FROM ins ORDER BY {desc} LIMIT 1) FROM ins"""
    ).format(
        cols=cols,
        source=source.ident(),
        where=where,
        keycols=keycols,
        limit=sql.Literal(limit),
        target=target.ident(),
        overriding=sql.SQL("OVERRIDING SYSTEM VALUE") if overriding else sql.SQL(""),
        last_key=last_key,
        desc=desc,
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
) -> tuple[int, float]:
    """Copy until the source is exhausted. Returns (rows copied in total, longest batch ms)."""
    after = start_after
    longest = 0.0
    size = batch_size
    while True:
        stmt, params = batch_statement(
            source, target, key, columns, overriding=overriding, after=after, limit=size
        )
        t0 = time.perf_counter()
        with conn.transaction():
            n, last = conn.execute(stmt, params).fetchone()
            if n:
                rows_done += n
                catalog.update_conversion(conn, settings, conversion_id, last_key=last, rows_copied=rows_done)
        ms = (time.perf_counter() - t0) * 1000
        longest = max(longest, ms)
        if not n:
            break
        after = last
        on_progress(rows_done, ms)
        failpoints.hit("convert.copy.after_batch")
        if n < size:
            break
        size = next_batch_size(size, batch_size, ms)
        if sleep:
            time.sleep(sleep)
    with conn.transaction():
        catalog.update_conversion(conn, settings, conversion_id, longest_batch_ms=longest)
    return rows_done, longest
