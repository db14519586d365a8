"""The batched, throttled copy: keyset pagination over the copy key, one short transaction per
batch that inserts the rows and advances the cursor recorded in the catalog, so a killed run
resumes at the last committed batch and no row is copied twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from .. import catalog, failpoints
from ..db import QualifiedName
from ..settings import Settings
from .capture import KeyColumn


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
        """WITH batch AS MATERIALIZED (
               SELECT {cols} FROM {source} {where} ORDER BY {keycols} LIMIT {limit}
           ), ins AS (
               INSERT INTO {target} ({cols}) {overriding} SELECT {cols} FROM batch
           )
           SELECT count(*), (SELECT {last_key} FROM batch ORDER BY {desc} LIMIT 1) FROM batch"""
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
    while True:
        stmt, params = batch_statement(
            source, target, key, columns, overriding=overriding, after=after, limit=batch_size
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
        if n < batch_size:
            break
        if sleep:
            time.sleep(sleep)
    with conn.transaction():
        catalog.update_conversion(conn, settings, conversion_id, longest_batch_ms=longest)
    return rows_done, longest
