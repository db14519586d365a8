"""After the swap: every row of `<table>_old` must be in the partitioned table with identical
content (an anti-join on the copy key and every column, not a count). Rows changed in the new
table since the swap (recorded by the revert capture) are legitimately different and skipped.
What a bug could have missed is repaired without firing the table's triggers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..db import QualifiedName
from . import triggers
from .capture import KeyColumn


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
             typed: set[str] | None = None, partition_key: str | None = None) -> sql.Composed:
    """Rows of old (alias o) without an identical row in new (alias n), not changed since the swap.
    With the partition key matched by equality too, a lookup prunes to one partition."""
    typed = typed or set()
    match = [k.name for k in key] + ([partition_key] if partition_key and partition_key not in {k.name for k in key} else [])
    match_key = sql.SQL(" AND ").join(sql.SQL("n.{0} = o.{0}").format(sql.Identifier(c)) for c in match)
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
    chunk_rows: int | None = None,
    pause: Callable[[], Any] | None = None,
    repair: bool = True,
) -> dict[str, Any]:
    """Compare, repair if needed, compare again. Returns the figures; "ok" is the verdict.
    `chunk_rows`: compare in key ranges of that many rows, one short statement each without
    parallel workers, calling `pause()` between them (gentle, for default settings); without it
    one parallel anti-join (fastest)."""
    cond = _differs(key, columns, new, changed, typed, partition_key)
    count_q = sql.SQL("SELECT count(*) FROM {} o WHERE {}").format(old.ident(), cond)
    old_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(old.ident())).fetchone()[0]
    new_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(new.ident())).fetchone()[0]
    changed_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(changed.ident())).fetchone()[0]
    if chunk_rows:
        missing = _count_in_chunks(conn, old, key, cond, chunk_rows, pause)
    else:
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '64MB'")  # keeps the anti-join's hash in memory
            missing = conn.execute(count_q).fetchone()[0]
    result: dict[str, Any] = {
        "old_rows": old_rows, "new_rows": new_rows, "changed_since_swap": changed_rows,
        "missing_or_different": missing, "repaired": 0,
    }
    if missing and repair:
        result["repaired"] = _repair(conn, old, new, key, columns, cond)
        result["missing_or_different_after_repair"] = conn.execute(count_q).fetchone()[0]
        missing = result["missing_or_different_after_repair"]
    result["ok"] = missing == 0
    return result


def _count_in_chunks(conn: psycopg.Connection, old: QualifiedName, key: list[KeyColumn], cond: sql.Composable,
                     chunk_rows: int, pause: Callable[[], Any] | None) -> int:
    """The same count, range by range of the copy key: (after, upto]."""
    keycols = sql.SQL(", ").join(sql.Identifier(k.name) for k in key)
    params = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(k.type)) for k in key)
    as_text = sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in key))
    missing = 0
    after: list[str] | None = None
    while True:
        where_after = sql.SQL("WHERE ({}) > ({})").format(keycols, params) if after else sql.SQL("")
        upto = conn.execute(
            sql.SQL("SELECT {} FROM {} {} ORDER BY {} OFFSET {} LIMIT 1").format(
                as_text, old.ident(), where_after, keycols, sql.Literal(chunk_rows - 1)),
            after or None,
        ).fetchone()
        bounds = []
        if after:
            bounds.append(sql.SQL("({}) > ({})").format(sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(k.name)) for k in key), params))
        if upto:
            bounds.append(sql.SQL("({}) <= ({})").format(sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(k.name)) for k in key), params))
        where = sql.SQL(" AND ").join([*bounds, cond])
        with conn.transaction():
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            missing += conn.execute(sql.SQL("SELECT count(*) FROM {} o WHERE {}").format(old.ident(), where),
                                    [*(after or []), *(upto[0] if upto else [])]).fetchone()[0]
        if not upto:
            return missing
        after = list(upto[0])
        if pause is not None:
            pause()


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
