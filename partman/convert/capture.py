"""Change capture for an online conversion (the pg-osc approach, made exact).

While the bulk copy runs, an AFTER ROW trigger on the source logs the key of every row that is
inserted, updated or deleted into a log table in partman's work schema, in the writer's own
transaction. Replaying the log (delete the key from the target, insert the source's current row)
makes the target equal to the source for those keys; every row that committed before the
trigger existed is visible to the batched copy (CREATE TRIGGER waits for in-flight writers).
Under the swap's ACCESS EXCLUSIVE lock no writer is in flight, so the final replay sees every
logged change: nothing is lost, whatever order ids were handed out or transactions committed.

The same mechanism on the partitioned table after the swap feeds `partman revert`."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..db import QualifiedName


@dataclass(frozen=True)
class KeyColumn:
    name: str
    type: str  # format_type text, from the catalog


def single_integer(key: list[KeyColumn]) -> bool:
    """A key that can be split into ranges by arithmetic (parallel copy, verification ranges)."""
    return len(key) == 1 and key[0].type in {"bigint", "integer", "smallint"}


def copy_key(conn: psycopg.Connection, table: QualifiedName) -> list[KeyColumn]:
    """The columns the copy walks and the log records: the primary key, else the first unique
    index whose columns are all NOT NULL. Empty when there is none."""
    rows = conn.execute(
        """
        SELECT i.indisprimary, i.indexrelid,
               array_agg(a.attname ORDER BY k.ord) AS cols,
               array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) AS types,
               bool_and(a.attnotnull) AS notnull
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL AND k.attnum > 0
        GROUP BY i.indisprimary, i.indexrelid
        ORDER BY i.indisprimary DESC, i.indexrelid
        """,
        (table.literal,),
    ).fetchall()
    for _primary, _oid, cols, types, notnull in rows:
        if notnull:
            return [KeyColumn(c, t) for c, t in zip(cols, types)]
    return []


def _cols(key: list[KeyColumn], prefix: str | None = None) -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(prefix), sql.Identifier(k.name)) for k in key)
    return sql.SQL(", ").join(sql.Identifier(k.name) for k in key)


def create_log(log: QualifiedName, key: list[KeyColumn]) -> sql.Composed:
    """The log table: a sequence number and the key of each changed row."""
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k.name), sql.SQL(k.type)) for k in key)
    return sql.SQL("CREATE TABLE {} (seq bigserial PRIMARY KEY, {})").format(log.ident(), cols)


def create_function(fn: QualifiedName, log: QualifiedName, key: list[KeyColumn]) -> sql.Composed:
    """A SECURITY DEFINER trigger function, so application roles need no rights on the log."""
    new_vals = _cols(key, "NEW")
    old_vals = _cols(key, "OLD")
    body = sql.SQL(
        """
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {log} ({cols}) VALUES ({new});
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {log} ({cols}) VALUES ({old});
    ELSE
        INSERT INTO {log} ({cols}) VALUES ({old});
        IF ROW({new}) IS DISTINCT FROM ROW({old}) THEN
            INSERT INTO {log} ({cols}) VALUES ({new});
        END IF;
    END IF;
    RETURN NULL;
END
"""
    ).format(log=log.ident(), cols=_cols(key), new=new_vals, old=old_vals)
    return sql.SQL(
        "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $partman$"
    ).format(fn.ident()) + body + sql.SQL("$partman$")


def create_trigger(trigger: str, table: QualifiedName, fn: QualifiedName) -> sql.Composed:
    return sql.SQL(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
    ).format(sql.Identifier(trigger), table.ident(), fn.ident())


def drop_trigger(trigger: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table.ident())


def trigger_exists(conn: psycopg.Connection, trigger: str, table: QualifiedName) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s)",
        (table.literal, trigger),
    ).fetchone()[0]


def replay(
    conn: psycopg.Connection,
    log: QualifiedName,
    source: QualifiedName,
    target: QualifiedName,
    key: list[KeyColumn],
    columns: list[str],
    *,
    overriding: bool,
    limit: int | None,
) -> int:
    """One round, inside the caller's transaction: take up to `limit` logged keys (all when
    None), delete those keys from target and insert the source's current rows for them.
    Returns the number of log entries consumed. Entries of uncommitted writers are invisible
    and stay for a later round (the final round runs with writers fenced)."""
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS partman_replay_keys ({}) ON COMMIT DELETE ROWS"
        ).format(sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k.name), sql.SQL(k.type)) for k in key))
    )
    conn.execute("TRUNCATE partman_replay_keys")
    pick = sql.SQL("SELECT seq FROM {} ORDER BY seq").format(log.ident())
    if limit is not None:
        pick = pick + sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    consumed = conn.execute(
        sql.SQL(
            "WITH taken AS (DELETE FROM {log} WHERE seq IN ({pick}) RETURNING {cols}) "
            "INSERT INTO partman_replay_keys SELECT DISTINCT {cols} FROM taken"
        ).format(log=log.ident(), pick=pick, cols=_cols(key))
    ).rowcount
    if consumed == 0:
        return 0
    conn.execute("ANALYZE partman_replay_keys")  # so the planner looks keys up instead of scanning the table
    match_target = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = k.{0}").format(sql.Identifier(k.name)) for k in key
    )
    conn.execute(
        sql.SQL("DELETE FROM {} t USING partman_replay_keys k WHERE {}").format(target.ident(), match_target)
    )
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    scols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)
    match_source = sql.SQL(" AND ").join(sql.SQL("s.{0} = k.{0}").format(sql.Identifier(k.name)) for k in key)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) {} SELECT {} FROM {} s JOIN partman_replay_keys k ON {}").format(
            target.ident(),
            cols,
            sql.SQL("OVERRIDING SYSTEM VALUE") if overriding else sql.SQL(""),
            scols,
            source.ident(),
            match_source,
        )
    )
    return consumed


def pending(conn: psycopg.Connection, log: QualifiedName) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(log.ident())).fetchone()[0]
