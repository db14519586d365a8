"""Reading a partitioned table's partitions and bounds from pg_catalog, and the DDL that
creates one. Bounds are read from the catalog, never from names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg import sql

from . import naming
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
    estimated_rows: int  # pg_class.reltuples, 0 when unknown
    # False when PostgreSQL has no estimate: reltuples -1 (never vacuumed or analyzed), or 0 from an
    # ANALYZE or VACUUM that found the partition empty while rows were written since (a premade one)
    estimate_known: bool = True

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


def key_cast(key_type: str) -> sql.SQL:
    """The SQL type name of a key type (timestamptz, timestamp, date), for casts."""
    return _CAST[key_type]


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
        """SELECT n.nspname, c.relname, c.oid, pg_get_expr(c.relpartbound, c.oid),
                  CASE WHEN c.reltuples > 0 OR (c.reltuples = 0 AND pg_stat_get_mod_since_analyze(c.oid) = 0)
                       THEN c.reltuples::bigint END
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
        out.append(Partition(schema, name, oid, is_default, lo, hi, max(int(tuples or 0), 0), tuples is not None))
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


def newest_partition(parts: list[Partition]) -> Partition | None:
    """The bounded partition with the latest lower bound: the model for one partman makes."""
    return max((p for p in parts if not p.is_default and p.lower is not None), key=lambda p: p.lower, default=None)


def storage_options(conn: psycopg.Connection, parts: list[Partition]) -> list[str]:
    """The storage options (fillfactor, autovacuum_*; its TOAST table's as `toast.<name>`) of the
    newest bounded partition: those a partition partman creates gets. A partitioned parent cannot
    carry them; a conversion gave every partition the original table's."""
    newest = newest_partition(parts)
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
    newest = newest_partition(parts)
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


@dataclass(frozen=True)
class ExtendedStatistics:
    """An extended statistics object (CREATE STATISTICS) on a table. PostgreSQL builds the one on a
    partitioned table from a sample of all its partitions and never hands it down: a query that
    reads one partition uses that partition's own object, if it has one."""

    name: QualifiedName
    elements: str  # pg_get_statisticsobjdef_columns(): `a, b`, `lower(x)`, `a, (a + b)`
    element_names: tuple[str, ...]  # the columns in that order, `expr` for each expression
    kinds: tuple[str, ...]  # ndistinct, dependencies, mcv; none for one expression's
    target: int | None  # ALTER STATISTICS ... SET STATISTICS, None: the default
    owner: str
    comment: str | None


_STATISTICS_KINDS = {"d": "ndistinct", "f": "dependencies", "m": "mcv"}  # 'e' (expressions) comes by itself


def extended_statistics(conn: psycopg.Connection, relid: int) -> list[ExtendedStatistics]:
    """The extended statistics objects on one table, in name order."""
    rows = conn.execute(
        """
        SELECT n.nspname, s.stxname, pg_get_statisticsobjdef_columns(s.oid),
               ARRAY(SELECT a.attname::text FROM unnest(s.stxkeys::int2[]) k
                     JOIN pg_attribute a ON a.attrelid = s.stxrelid AND a.attnum = k ORDER BY k),
               coalesce(cardinality(pg_get_statisticsobjdef_expressions(s.oid)), 0),
               s.stxkind::text[], CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget END,
               pg_get_userbyid(s.stxowner), obj_description(s.oid, 'pg_statistic_ext')
        FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
        WHERE s.stxrelid = %s ORDER BY s.stxname, n.nspname
        """, (relid,)).fetchall()
    return [ExtendedStatistics(
        QualifiedName(r[0], r[1]), r[2], tuple(r[3]) + ("expr",) * r[4],
        tuple(_STATISTICS_KINDS[k] for k in r[5] if k in _STATISTICS_KINDS), r[6], r[7], r[8]) for r in rows]


def statistics_sql(stat: ExtendedStatistics, name: QualifiedName, table: QualifiedName, *,
                   comment: bool = True) -> list[sql.Composable]:
    """`stat` again as `name` on `table`: same elements, kinds, statistics target and owner (and
    comment). The elements are PostgreSQL's own text (read with search_path = pg_catalog, so
    qualified), never .format()ted. Pure."""
    kinds = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.SQL, stat.kinds))) if stat.kinds else sql.SQL("")
    out: list[sql.Composable] = [sql.SQL("CREATE STATISTICS {}{} ON {} FROM {}").format(
        name.ident(), kinds, sql.SQL(stat.elements), table.ident())]
    if stat.target is not None:
        out.append(sql.SQL("ALTER STATISTICS {} SET STATISTICS {}").format(name.ident(), sql.Literal(stat.target)))
    out.append(sql.SQL("ALTER STATISTICS {} OWNER TO {}").format(name.ident(), sql.Identifier(stat.owner)))
    if comment and stat.comment is not None:
        out.append(sql.SQL("COMMENT ON STATISTICS {} IS {}").format(name.ident(), sql.Literal(stat.comment)))
    return out


def partition_statistics_sql(stats: list[ExtendedStatistics], partition: QualifiedName, taken: set[str],
                             schema: str | None = None) -> list[sql.Composable]:
    """`stats` (the parent's, or another partition's) on `partition`, each in `schema` (the
    partition's own by default) under the name PostgreSQL (16 and later) gives an unnamed one:
    `<partition>_<columns>_stat`, numbered past `taken` (the statistics names in that schema, to
    which the new ones are added). Pure."""
    out: list[sql.Composable] = []
    for stat in stats:
        name = naming.pg_index_name(partition.name, list(stat.element_names), "stat", taken)
        taken.add(name)
        out += statistics_sql(stat, QualifiedName(schema or partition.schema, name), partition, comment=False)
    return out


def statistics_names(conn: psycopg.Connection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT s.stxname FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE n.nspname = %s",
        (schema,))}


def newest_statistics(conn: psycopg.Connection, parts: list[Partition]) -> list[ExtendedStatistics]:
    """The newest bounded partition's extended statistics objects, for a partition made beside it
    (as its column settings: column_settings)."""
    newest = newest_partition(parts)
    return extended_statistics(conn, newest.oid) if newest is not None else []


def clone_statistics_sql(conn: psycopg.Connection, stats: list[ExtendedStatistics],
                         partition: QualifiedName) -> list[sql.Composable]:
    """partition_statistics_sql, the names chosen against the partition's schema as it is now."""
    return partition_statistics_sql(stats, partition, statistics_names(conn, partition.schema)) if stats else []


_REPLICA_IDENTITY = """
WITH src AS (SELECT relkind, relreplident FROM pg_class WHERE oid = %(source)s),
     own AS (SELECT indexrelid FROM pg_index WHERE indrelid = %(source)s AND indisreplident),
     top AS (SELECT CASE WHEN (SELECT relkind FROM src) = 'p' THEN (SELECT indexrelid FROM own)
                         ELSE (SELECT inhparent FROM pg_inherits WHERE inhrelid = (SELECT indexrelid FROM own)) END AS oid)
SELECT (SELECT relreplident FROM src),
       (SELECT c.relname FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = (SELECT oid FROM top) AND x.indrelid = %(target)s::regclass)
"""


def replica_identity_sql(conn: psycopg.Connection, source: int, target: QualifiedName) -> list[sql.Composable]:
    """The replica identity of `source` (a partitioned table, or a partition beside `target`) for
    the partition `target`: PostgreSQL hands it to no partition, and logical replication logs a
    changed row's old values by the partition's own. FULL and NOTHING as they are; USING INDEX
    with `target`'s index that belongs to the same index of the parent. [] for the default (the
    primary key), or when `target` has no such index."""
    row = conn.execute(_REPLICA_IDENTITY, {"source": source, "target": target.literal}).fetchone()
    kind, index = row if row else ("d", None)
    if kind == "f":
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(target.ident())]
    if kind == "n":
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(target.ident())]
    if kind == "i" and index is not None:
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(target.ident(), sql.Identifier(index))]
    return []


def standalone_partition_sql(conn: psycopg.Connection, parent: QualifiedName, parts: list[Partition],
                             name: QualifiedName) -> list[sql.Composable]:
    """A table that becomes a partition of `parent` by ATTACH later (the default move's staging
    table, a restored partition): `CREATE TABLE ... (LIKE parent ...)` with what a partition
    created PARTITION OF takes from the parent (defaults, constraints, generated columns, the
    columns' storage and compression, the parent's tablespace) and what `maintain` gives its
    partitions from the newest one (storage options, column statistics settings, extended
    statistics). Its indexes come with the ATTACH; its replica identity after it
    (replica_identity_sql)."""
    space = conn.execute("SELECT spcname FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace "
                         "WHERE c.oid = %s::regclass", (parent.literal,)).fetchone()
    return [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
                "INCLUDING STORAGE INCLUDING COMPRESSION){}{}").format(
            name.ident(), parent.ident(), with_options(storage_options(conn, parts)),
            sql.SQL(" TABLESPACE {}").format(sql.Identifier(space[0])) if space else sql.SQL("")),
        *column_settings_sql(name, column_settings(conn, parts)),
        *clone_statistics_sql(conn, newest_statistics(conn, parts), name),
    ]
