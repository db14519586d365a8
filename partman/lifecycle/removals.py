"""What partman's catalog recorded about a removed partition, and what `partman restore` tells
the user when there is no archive to restore from: a partition retention detached still exists
as a plain table (the only copy of its rows: attach it back, never drop it), one retention dropped
without an archive is gone. Reading is separate from the wording, which needs no database."""

from __future__ import annotations

import shlex
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .. import catalog
from ..db import QualifiedName


def last_removal(conn: psycopg.Connection, settings: Any, parent: QualifiedName, partition: str) -> dict[str, Any] | None:
    """The latest removal record of `partition` of `parent`, whatever the action."""
    if not catalog.exists(conn, settings):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL("SELECT * FROM {} WHERE schema_name = %s AND table_name = %s AND partition_name = %s "
                    "ORDER BY id DESC LIMIT 1").format(catalog.ident(settings, "removal")),
            (parent.schema, parent.name, partition),
        ).fetchone()


def earlier_archives(conn: psycopg.Connection, settings: Any, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Archives of earlier removals of the same partition than `rec` (a range removed, filled
    again by late rows, removed again: each removal has its own archive), oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL("SELECT * FROM {} WHERE schema_name = %s AND table_name = %s AND partition_name = %s "
                    "AND action = 'archive' AND id < %s ORDER BY id").format(catalog.ident(settings, "removal")),
            (rec["schema_name"], rec["table_name"], rec["partition_name"], rec["id"]),
        ).fetchall()


def earlier_archives_note(target: QualifiedName, uri: str, earlier: list[dict[str, Any]]) -> str:
    """What restore says when it restored the latest of several archives of one partition."""
    listed = "; ".join(f"{r['archive_uri']} ({_rows(r)}, removed {_when(r)})" for r in earlier)
    one = len(earlier) == 1
    copy = f"\\copy {target.literal} FROM STDIN (FORMAT csv, HEADER)"
    load = f"aws s3 cp {shlex.quote(earlier[0]['archive_uri'])} - | gunzip | psql -c {shlex.quote(copy)}"  # as a shell takes it
    return (f"{target} was archived {len(earlier) + 1} times; this restored the latest archive, {uri}. The earlier "
            f"archive{'' if one else 's'} {listed} {'holds' if one else 'hold'} rows of the same range removed "
            f"before, which are not in the restored table (unless {target} was restored and attached between the "
            f"removals: then the latest archive holds them too). To add {'them' if one else 'each'}: `{load}`"
            f"{'' if one else ' (and likewise for the others)'}; the manifest beside each archive has its row count "
            "and sha256.")


def detached_tables(conn: psycopg.Connection, name: str, schemas: list[str]) -> list[QualifiedName]:
    """Plain tables named `name` that are no partition: where a detach may have left the partition
    (the catalog does not record the retention schema it went to). Those in `schemas` first, in that
    order, then any other schema."""
    rows = [r[0] for r in conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relkind = 'r' AND NOT c.relispartition ORDER BY n.nspname", (name,))]
    rank = {s: i for i, s in enumerate(dict.fromkeys(schemas))}
    return [QualifiedName(s, name) for s in sorted(rows, key=lambda s: (rank.get(s, len(rank)), s))]


def bounds_sql(lower: str | None, upper: str | None) -> sql.Composed:
    """`FOR VALUES FROM (...) TO (...)` of a range partition; None is MINVALUE / MAXVALUE."""
    lo = sql.SQL("MINVALUE") if lower is None else sql.Literal(lower)
    hi = sql.SQL("MAXVALUE") if upper is None else sql.Literal(upper)
    return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(lo, hi)


def attach_advice(conn: psycopg.Connection, parent: QualifiedName, table: QualifiedName, rec: dict[str, Any]) -> str:
    """The ATTACH that puts a detached partition back with its recorded bounds, as advice to
    paste into psql (names quoted only where needed, as a DBA would write them)."""
    bounds = bounds_sql(rec["lower_bound"], rec["upper_bound"]).as_string(conn)
    return f"ALTER TABLE {parent.literal} ATTACH PARTITION {table.literal} {bounds}"


def _when(rec: dict[str, Any]) -> str:
    return f"{rec['removed_at']:%Y-%m-%d %H:%M:%S%z} by {rec['removed_by']}"


def _rows(rec: dict[str, Any]) -> str:
    ids = f", ids {rec['min_id']} .. {rec['max_id']}" if rec.get("min_id") is not None else ""
    return f"{rec['row_count']} rows{ids}"


def not_archived(rec: dict[str, Any], parent: QualifiedName, target: QualifiedName, tables: list[QualifiedName],
                 attach: str, retention: str | None, schemas: list[str]) -> str:
    """Why restore refuses a partition that retention detached or dropped rather than archived.
    `tables`: the plain tables found for a detached one; `attach`: the ATTACH statement for the
    first of them (with none, for the name it was detached under); `schemas`: where a detach
    puts it (the parent's, the retention schema)."""
    if rec["action"] == "drop":
        return (f"{target} cannot be restored: retention dropped it from {parent} without an archive at {_when(rec)} "
                f"({_rows(rec)}, range [{rec['lower_bound']} .. {rec['upper_bound']})). Its rows are gone from the "
                "database and partman has no copy of them; only a backup from before then (point-in-time recovery) "
                "holds them.")
    head = (f"{target} was not archived, so there is no archive to restore: retention detached it from {parent} at "
            f"{_when(rec)} ({_rows(rec)}) and left it as a plain table.")
    if not tables:
        return (f"{head} No plain table named {target.name} exists any more (dropped, or renamed since); partman has no "
                f"other copy of its rows. If it was renamed, attach it back with its new name in place of "
                f"{target.name}: `{attach}`.")
    sure = len(tables) == 1 and tables[0].schema in schemas
    where = (f"Its rows are in {tables[0]}" if sure else
             f"Its rows should be in {'one of the plain tables ' if len(tables) > 1 else ''}"
             f"{', '.join(map(str, tables))} (partman does not record the schema a detach moved it to)")
    hold = (f" While it is older than the retention of {parent} ({retention}), the next maintenance pass detaches it "
            f"again unless you hold it right after attaching it (`partman hold {tables[0].arg} --reason ...`)."
            if retention else "")
    if sure:
        return (f"{head} {where}: to put it back into {parent}, run `{attach}`.{hold} Do not drop {tables[0]}: "
                "it is the only copy of these rows.")
    return (f"{head} {where}: to put it back into {parent}, attach the one that holds them, as in `{attach}`."
            f"{hold} Drop none of these tables before you know which one holds them: it is the only copy of these rows.")
