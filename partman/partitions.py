"""Reading a partitioned table's partitions and bounds from pg_catalog, and the DDL that
creates one. Bounds are read from the catalog, never from names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg import sql

from .db import QualifiedName
from .intervals import literal

KEY_TYPES = {
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "date": "date",
}
_CAST = {"timestamptz": sql.SQL("timestamptz"), "timestamp": sql.SQL("timestamp"), "date": sql.SQL("date")}
_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")


@dataclass
class Partition:
    schema: str
    name: str
    oid: int
    is_default: bool
    lower: datetime | date | None  # None: MINVALUE (or the default partition)
    upper: datetime | date | None  # None: MAXVALUE
    estimated_rows: int

    @property
    def qualified(self) -> QualifiedName:
        return QualifiedName(self.schema, self.name)


def key_column(conn: psycopg.Connection, parent: QualifiedName) -> tuple[str, str] | None:
    """(column, key type) of a table partitioned by RANGE on one column, else None."""
    row = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), p.partstrat, p.partnatts
           FROM pg_partitioned_table p
           JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
           WHERE p.partrelid = %s::regclass""",
        (parent.literal,),
    ).fetchone()
    if row is None or row[2] != "r" or row[3] != 1:
        return None
    key_type = KEY_TYPES.get(re.sub(r"\(\d+\)", "", row[1]))
    return (row[0], key_type) if key_type else None


def _parse_value(text: str) -> str | None:
    text = text.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    return text


def list_partitions(conn: psycopg.Connection, parent: QualifiedName, key_type: str) -> list[Partition]:
    """Partitions of parent ordered by lower bound (the default partition last)."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname, c.oid, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE i.inhparent = %s::regclass""",
        (parent.literal,),
    ).fetchall()
    texts: list[str | None] = []
    parsed = []
    for schema, name, oid, bound, tuples in rows:
        if bound == "DEFAULT":
            parsed.append((schema, name, oid, True, None, None, tuples))
            continue
        m = _BOUND.match(bound)
        if not m:
            continue
        lo, hi = _parse_value(m.group(1)), _parse_value(m.group(2))
        parsed.append((schema, name, oid, False, len(texts), len(texts) + 1, tuples))
        texts.extend([lo, hi])
    values: list = []
    if texts:
        values = conn.execute(
            sql.SQL("SELECT array_agg(v::{} ORDER BY o) FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, o)").format(
                _CAST[key_type]
            ),
            (texts,),
        ).fetchone()[0]
    out = []
    for schema, name, oid, is_default, lo_i, hi_i, tuples in parsed:
        lo = values[lo_i] if lo_i is not None else None
        hi = values[hi_i] if hi_i is not None else None
        out.append(Partition(schema, name, oid, is_default, lo, hi, max(int(tuples), 0)))
    out.sort(key=lambda p: (p.is_default, p.lower is not None, _sortable(p.lower)))
    return out


def _sortable(v: datetime | date | None) -> float:
    if v is None:
        return float("-inf")
    if isinstance(v, datetime):
        return v.timestamp() if v.tzinfo else v.replace(tzinfo=None).toordinal() * 86400.0 + v.hour * 3600
    return float(v.toordinal() * 86400)


def create_partition_sql(
    parent: QualifiedName, name: QualifiedName, lower: datetime, upper: datetime, key_type: str,
    options: list[str] | tuple[str, ...] = (),
) -> sql.Composed:
    """CREATE TABLE ... PARTITION OF ... FOR VALUES FROM (...) TO (...) [WITH (options)]. Pure."""
    return sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}){}").format(
        name.ident(), parent.ident(), sql.Literal(literal(lower, key_type)), sql.Literal(literal(upper, key_type)),
        with_options(options),
    )


def with_options(options: list[str] | tuple[str, ...]) -> sql.Composable:
    """` WITH (fillfactor=90, ...)`, or nothing. The options are PostgreSQL's own reloptions text
    (storage_options), never .format()ted."""
    if not options:
        return sql.SQL("")
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in options))


def _newest(parts: list[Partition]) -> Partition | None:
    return max((p for p in parts if not p.is_default and p.lower is not None), key=lambda p: p.lower, default=None)


def storage_options(conn: psycopg.Connection, parts: list[Partition]) -> list[str]:
    """The storage options (fillfactor, autovacuum_*; its TOAST table's as `toast.<name>`) of the
    newest bounded partition: those a partition partman creates gets. A partitioned parent cannot
    carry them; a conversion gave every partition the original table's."""
    newest = _newest(parts)
    if newest is None:
        return []
    row = conn.execute(
        "SELECT coalesce(c.reloptions, '{}') || coalesce((SELECT array_agg('toast.' || o) FROM unnest(t.reloptions) o), '{}') "
        "FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = %s", (newest.oid,)).fetchone()
    return list(row[0]) if row else []


def create_default_sql(parent: QualifiedName, name: QualifiedName, options: list[str] | tuple[str, ...] = ()) -> sql.Composed:
    return sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT{}").format(name.ident(), parent.ident(), with_options(options))


# a column's statistics settings: (column, statistics target or None, attribute options such as
# n_distinct=40)
ColumnSettings = list[tuple[str, int | None, list[str]]]


def column_settings(conn: psycopg.Connection, parts: list[Partition]) -> ColumnSettings:
    """The newest bounded partition's column statistics targets and options (n_distinct): a new
    partition does not take them from its parent (PostgreSQL copies neither), so partman copies
    them from there, as a conversion gave every partition the original table's."""
    newest = _newest(parts)
    if newest is None:
        return []
    rows = conn.execute(
        "SELECT attname, CASE WHEN attstattarget >= 0 THEN attstattarget END, coalesce(attoptions, '{}') "
        "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
        "AND (attstattarget >= 0 OR attoptions IS NOT NULL) ORDER BY attnum", (newest.oid,)).fetchall()
    return [(r[0], r[1], list(r[2])) for r in rows]


def column_settings_sql(table: QualifiedName, settings: ColumnSettings) -> list[sql.Composable]:
    """ALTER TABLE ONLY ... ALTER COLUMN ... SET STATISTICS n / SET (options). The options are
    PostgreSQL's own attoptions text (n_distinct=40), never .format()ted. Pure."""
    out: list[sql.Composable] = []
    for column, target, options in settings:
        if target is not None:
            out.append(sql.SQL("ALTER TABLE ONLY {} ALTER COLUMN {} SET STATISTICS {}").format(
                table.ident(), sql.Identifier(column), sql.Literal(target)))
        if options:
            out.append(sql.SQL("ALTER TABLE ONLY {} ALTER COLUMN {} SET ({})").format(
                table.ident(), sql.Identifier(column), sql.SQL(", ").join(sql.SQL(o) for o in options)))
    return out
