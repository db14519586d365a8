"""pg_catalog -> TableModel: everything a table carries that a conversion must carry over
(columns, constraints, indexes, triggers, grants, policies, comments, owner, replica identity,
storage options, owned sequences, dependent views and functions, publications).

Definitions are read with `search_path` set to pg_catalog only, so every name PostgreSQL prints
in them (tables, types, functions) is schema-qualified and means the same thing wherever the
text is run later."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from .db import QualifiedName, fetch_dicts
from .digests import decorations
from .errors import PartmanError
from .naming import PARTMAN_TRIGGERS
from .partitions import ExtendedStatistics, extended_statistics

TIME_TYPES = {"timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp", "date": "date"}


@dataclass
class Column:
    name: str
    attnum: int
    type: str  # format_type(), qualified where needed
    base_type: str  # the domain's base type for a domain, else the type
    notnull: bool
    default: str | None
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)
    generated: str  # '' | 's' (stored)
    collation: QualifiedName | None  # only when it differs from the type's
    storage: str | None  # 'p'/'e'/'m'/'x' only when it differs from the type's
    comment: str | None
    identity_options: str | None = None  # "INCREMENT BY 1 START WITH 1 ..." for identity columns
    stattarget: int | None = None  # ALTER COLUMN ... SET STATISTICS, when set
    compression: str | None = None  # 'pglz' / 'lz4' when set on the column (SET COMPRESSION)
    options: list[str] = field(default_factory=list)  # attoptions: n_distinct=40, n_distinct_inherited=...


@dataclass
class Constraint:
    name: str
    kind: str  # 'c' check, 'p' primary, 'u' unique, 'f' foreign key, 'x' exclusion
    definition: str  # pg_get_constraintdef
    validated: bool
    no_inherit: bool
    index_name: str | None
    columns: list[str]
    comment: str | None
    timing: str = ""  # "", " DEFERRABLE" or " DEFERRABLE INITIALLY DEFERRED", as SQL writes it


@dataclass
class Index:
    name: str
    definition: str  # pg_get_indexdef
    prefix: str  # the part of `definition` before the access method ("CREATE INDEX x ON s.t USING ")
    unique: bool
    primary: bool
    constraint: str | None  # name of the constraint the index backs, if any
    columns: list[str | None]  # key columns (None for an expression)
    include: list[str]
    method: str
    predicate: str | None
    nulls_not_distinct: bool
    comment: str | None
    attnames: list[str] = field(default_factory=list)  # the index's own column names (key, then INCLUDE)
    tablespace: str | None = None  # when not the database's default
    decorations: str = ""  # decorations(): a digest of what ddl.redecorate sets
    server_version: int = 0  # the server's, as libpq gives it (150004, 180001)


@dataclass
class Trigger:
    name: str
    definition: str  # pg_get_triggerdef: CREATE TRIGGER ... ON <qualified table> ...
    enabled: str  # 'O' origin (enabled), 'D' disabled, 'R' replica, 'A' always
    row_transition: bool = False  # FOR EACH ROW with REFERENCING OLD/NEW TABLE
    before_insert_source: str | None = None  # a BEFORE INSERT row trigger's PL/pgSQL function body


@dataclass
class Policy:
    name: str
    permissive: bool
    command: str  # ALL, SELECT, INSERT, UPDATE, DELETE
    roles: list[str]  # role names; 'public' for PUBLIC
    using: str | None
    check: str | None


@dataclass
class Grant:
    grantee: str  # role name or 'PUBLIC'
    privilege: str
    grantable: bool
    column: str | None = None


@dataclass
class OwnedSequence:
    sequence: QualifiedName
    column: str
    identity: bool  # True: the column's IDENTITY sequence; False: a serial's OWNED BY sequence


@dataclass
class DependentView:
    name: QualifiedName
    materialized: bool
    definition: str
    options: list[str]  # reloptions (security_barrier=true, check_option=local, ...)
    owner: str
    populated: bool
    indexes: list[str]  # CREATE INDEX statements of a materialized view
    grants: list[Grant]
    comment: str | None
    dependents: list[str] = field(default_factory=list)  # views that read this one (a materialized view's)


@dataclass
class DependentFunction:
    name: str
    definition: str  # pg_get_functiondef: CREATE OR REPLACE FUNCTION ...


@dataclass
class ForeignKeyIn:
    name: str
    table: QualifiedName


@dataclass
class Publication:
    """A publication that publishes the table: named in it ("table"), through its schema
    ("schema", FOR TABLES IN SCHEMA) or as one of all tables ("all")."""

    name: str
    scope: str
    via_root: bool  # publish_via_partition_root
    updates: bool  # publishes UPDATE or DELETE
    columns: list[str] | None = None  # its column list for the table ("table" only)
    row_filter: str | None = None  # its WHERE for the table ("table" only)
    owner: str = ""
    ours: bool = True  # the current user has its owner's privileges (may ALTER it)

    def __str__(self) -> str:
        cols = f" ({', '.join(self.columns)})" if self.columns is not None else ""
        where = f" WHERE {self.row_filter}" if self.row_filter is not None else ""
        scope = {"schema": " (its schema)", "all": " (all tables)"}.get(self.scope, "")
        return f"{self.name}{scope}{cols}{where}"


@dataclass
class TableModel:
    table: QualifiedName
    oid: int
    relkind: str
    is_partitioned: bool
    owner: str
    persistence: str  # 'p' permanent, 'u' unlogged, 't' temporary
    estimated_rows: int
    total_bytes: int
    reloptions: list[str]  # the table's storage options, its TOAST table's as toast.<name>
    comment: str | None
    row_security: bool
    force_row_security: bool
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    replica_identity_index: str | None
    columns: list[Column] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    owned_sequences: list[OwnedSequence] = field(default_factory=list)
    views: list[DependentView] = field(default_factory=list)
    functions: list[DependentFunction] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    foreign_keys_in: list[ForeignKeyIn] = field(default_factory=list)
    inheritance: list[str] = field(default_factory=list)  # parents/children by inheritance
    rules: list[str] = field(default_factory=list)
    statistics: list[ExtendedStatistics] = field(default_factory=list)  # CREATE STATISTICS objects on it
    # the statistics objects' names in the table's schema, each with the schema of the table it is on
    statistics_taken: list[tuple[str, str]] = field(default_factory=list)
    tablespace: str | None = None  # when not the database's default
    of_type: str | None = None  # a typed table's composite type (CREATE TABLE ... OF type)
    clustered_on: str | None = None  # the index ALTER TABLE ... CLUSTER ON marked

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def index_leads(self) -> set[str]:
        """The columns a whole-table btree index leads with: a min/max or a range on them is an
        index scan, not a read of the table."""
        return {i.columns[0] for i in self.indexes if i.method == "btree" and i.columns and i.columns[0] and i.predicate is None}


def key_type_of(model: TableModel, column: str) -> str | None:
    """'timestamptz' | 'timestamp' | 'date' for a usable time column (domains over them too)."""
    col = model.column(column)
    if col is None:
        return None
    return TIME_TYPES.get(col.base_type)


def introspect(conn: psycopg.Connection, table: QualifiedName) -> TableModel:
    """Read everything about `table`. Runs in its own short transaction (read only)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        saved = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
        try:
            return _read(conn, table)
        finally:
            conn.execute("SELECT set_config('search_path', %s, true)", (saved,))
    with conn.transaction():
        return _read(conn, table)


def _read(conn: psycopg.Connection, table: QualifiedName) -> TableModel:
    conn.execute("SET LOCAL search_path TO pg_catalog, pg_temp")
    rel = fetch_dicts(
        conn,
        """
        SELECT c.oid, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner) AS owner,
               greatest(c.reltuples, 0)::bigint AS reltuples,
               CASE WHEN c.relkind IN ('r', 'p', 'm') THEN pg_total_relation_size(c.oid) ELSE 0 END AS bytes,
               coalesce(c.reloptions, '{}')
                 || coalesce((SELECT array_agg('toast.' || o) FROM unnest(t.reloptions) o), '{}') AS reloptions,
               obj_description(c.oid, 'pg_class') AS comment,
               c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
               (SELECT spcname FROM pg_tablespace WHERE oid = c.reltablespace) AS tablespace,
               CASE WHEN c.reloftype <> 0 THEN format_type(c.reloftype, NULL) END AS of_type,
               (SELECT x.relname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                 WHERE i.indrelid = c.oid AND i.indisclustered) AS clustered_on
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (table.schema, table.name),
    )
    if not rel:
        raise PartmanError(f"Table {table} does not exist: check the name and the schema (or search_path).")
    r = rel[0]
    oid = r["oid"]
    m = TableModel(
        table=table, oid=oid, relkind=r["relkind"], is_partitioned=r["relkind"] == "p", owner=r["owner"],
        persistence=r["relpersistence"], estimated_rows=int(r["reltuples"]), total_bytes=int(r["bytes"]),
        reloptions=list(r["reloptions"]), comment=r["comment"], row_security=r["relrowsecurity"],
        force_row_security=r["relforcerowsecurity"], replica_identity=r["relreplident"],
        replica_identity_index=None, tablespace=r["tablespace"], of_type=r["of_type"], clustered_on=r["clustered_on"],
    )
    if m.relkind not in ("r", "p"):
        return m  # refused by the plan; nothing more to read
    m.columns = _columns(conn, oid)
    m.constraints = _constraints(conn, oid)
    m.indexes = _indexes(conn, oid)
    m.replica_identity_index = next(
        (row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s AND i.indisreplident", (oid,))), None)
    m.triggers = [
        Trigger(row["tgname"], row["def"], row["tgenabled"], row["row_transition"], row["before_insert_source"])
        for row in fetch_dicts(
            conn,
            "SELECT t.tgname, pg_get_triggerdef(t.oid) AS def, t.tgenabled, "
            "(t.tgtype & 1) = 1 AND (t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL) AS row_transition, "
            "CASE WHEN t.tgtype & 7 = 7 AND l.lanname = 'plpgsql' THEN p.prosrc END AS before_insert_source "
            "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang "
            "WHERE t.tgrelid = %s AND NOT t.tgisinternal AND t.tgparentid = 0 AND NOT (t.tgname = ANY(%s)) "
            "ORDER BY t.tgname",
            (oid, list(PARTMAN_TRIGGERS)),
        )
    ]
    m.policies = [
        Policy(row["polname"], row["polpermissive"], row["cmd"], row["roles"], row["qual"], row["wc"])
        for row in fetch_dicts(
            conn,
            """
            SELECT p.polname, p.polpermissive,
                   CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                 WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS cmd,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
                         FROM unnest(p.polroles) r) AS roles,
                   pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS wc
            FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname
            """,
            (oid,),
        )
    ]
    m.grants = _grants(conn, _ACL, (oid, oid))
    m.owned_sequences = [
        OwnedSequence(QualifiedName(row["nspname"], row["relname"]), row["attname"], row["deptype"] == "i")
        for row in fetch_dicts(
            conn,
            """
            SELECT n.nspname, s.relname, a.attname, d.deptype
            FROM pg_depend d
            JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
            JOIN pg_namespace n ON n.oid = s.relnamespace
            JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = %s AND d.deptype IN ('a', 'i')
            ORDER BY a.attnum
            """,
            (oid,),
        )
    ]
    m.views = _views(conn, oid)
    m.decorations = decorations(conn, oid)
    m.server_version = conn.info.server_version
    m.statistics = extended_statistics(conn, oid)
    m.statistics_taken = [(r[0], r[1]) for r in conn.execute(
        "SELECT s.stxname, n.nspname FROM pg_statistic_ext s JOIN pg_class c ON c.oid = s.stxrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE s.stxnamespace = (SELECT relnamespace FROM pg_class WHERE oid = %s)", (oid,))]
    m.functions = [
        DependentFunction(row["name"], row["def"])
        for row in fetch_dicts(
            conn,
            """
            SELECT DISTINCT p.oid::regprocedure::text AS name, pg_get_functiondef(p.oid) AS def
            FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
            WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s
              AND p.prosqlbody IS NOT NULL
            """,
            (oid,),
        )
    ]
    m.publications = publications(conn, oid)
    m.foreign_keys_in = [
        ForeignKeyIn(row["conname"], QualifiedName(row["nspname"], row["relname"]))
        for row in fetch_dicts(
            conn,
            "SELECT c.conname, n.nspname, t.relname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE c.contype = 'f' AND c.confrelid = %s "
            "AND c.conparentid = 0 ORDER BY 1",
            (oid,),
        )
    ]
    m.inheritance = [
        row[0] for row in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s "
            "UNION ALL SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %s", (oid, oid))
    ] if m.relkind == "r" else []
    m.rules = [
        row[0] for row in conn.execute(
            "SELECT rulename FROM pg_rewrite WHERE ev_class = %s AND rulename <> '_RETURN'", (oid,))
    ]
    return m


def _columns(conn: psycopg.Connection, oid: int) -> list[Column]:
    rows = fetch_dicts(
        conn,
        """
        SELECT a.attname, a.attnum, format_type(a.atttypid, a.atttypmod) AS type,
               format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL) AS base_type,
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def, a.attidentity, a.attgenerated,
               CASE WHEN a.attcollation <> t.typcollation THEN cn.nspname END AS coll_schema,
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END AS coll_name,
               CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage END AS storage,
               col_description(a.attrelid, a.attnum) AS comment,
               CASE WHEN a.attstattarget >= 0 THEN a.attstattarget END AS stattarget,
               CASE a.attcompression WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' END AS compression,
               coalesce(a.attoptions, '{}') AS attoptions,
               s.seqincrement, s.seqstart, s.seqmin, s.seqmax, s.seqcache, s.seqcycle
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
        LEFT JOIN pg_depend dep ON a.attidentity <> '' AND dep.classid = 'pg_class'::regclass
             AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = a.attrelid
             AND dep.refobjsubid = a.attnum AND dep.deptype = 'i'
        LEFT JOIN pg_sequence s ON s.seqrelid = dep.objid
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (oid,),
    )
    out = []
    for r in rows:
        ident_opts = None
        if r["attidentity"]:
            ident_opts = (
                f"INCREMENT BY {r['seqincrement']} START WITH {r['seqstart']} MINVALUE {r['seqmin']} "
                f"MAXVALUE {r['seqmax']} CACHE {r['seqcache']} {'CYCLE' if r['seqcycle'] else 'NO CYCLE'}"
            ) if r["seqincrement"] is not None else ""
        out.append(Column(
            name=r["attname"], attnum=r["attnum"], type=r["type"], base_type=r["base_type"], notnull=r["attnotnull"],
            default=r["def"], identity=r["attidentity"], generated=r["attgenerated"],
            collation=QualifiedName(r["coll_schema"], r["coll_name"]) if r["coll_name"] else None,
            storage=r["storage"], comment=r["comment"], identity_options=ident_opts,
            stattarget=r["stattarget"], options=list(r["attoptions"]), compression=r["compression"],
        ))
    return out


def _constraints(conn: psycopg.Connection, oid: int) -> list[Constraint]:
    return [
        Constraint(r["conname"], r["contype"], r["def"], r["convalidated"], r["connoinherit"], r["idx"],
                   list(r["cols"] or []), r["comment"],
                   (" DEFERRABLE" if r["condeferrable"] else "") + (" INITIALLY DEFERRED" if r["condeferred"] else ""))
        for r in fetch_dicts(
            conn,
            """
            SELECT c.conname, c.contype, pg_get_constraintdef(c.oid) AS def, c.convalidated, c.connoinherit,
                   c.condeferrable, c.condeferred,
                   (SELECT relname FROM pg_class WHERE oid = c.conindid AND c.contype IN ('p', 'u', 'x')) AS idx,
                   ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols,
                   obj_description(c.oid, 'pg_constraint') AS comment
            FROM pg_constraint c WHERE c.conrelid = %s AND c.contype IN ('c', 'p', 'u', 'f', 'x')
            ORDER BY c.contype, c.conname
            """,
            (oid,),
        )
    ]


def _indexes(conn: psycopg.Connection, oid: int) -> list[Index]:
    nnd = conn.info.server_version >= 150000
    rows = fetch_dicts(
        conn,
        f"""
        SELECT ic.relname AS name, pg_get_indexdef(i.indexrelid) AS def,
               'CREATE ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' || quote_ident(ic.relname)
                   || ' ON ' || quote_ident(n.nspname) || '.' || quote_ident(tc.relname) || ' USING ' AS prefix,
               i.indisunique, i.indisprimary, am.amname,
               (SELECT conname FROM pg_constraint WHERE conindid = i.indexrelid AND conrelid = i.indrelid
                  AND contype IN ('p', 'u', 'x')) AS con,
               ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n AND k.n > 0
                     WHERE k.o <= i.indnkeyatts ORDER BY k.o) AS cols,
               ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                     WHERE k.o > i.indnkeyatts ORDER BY k.o) AS incl,
               pg_get_expr(i.indpred, i.indrelid) AS pred,
               {"i.indnullsnotdistinct" if nnd else "false"} AS nnd,
               obj_description(i.indexrelid, 'pg_class') AS comment,
               ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = i.indexrelid AND attnum > 0
                     ORDER BY attnum) AS attnames,
               (SELECT spcname FROM pg_tablespace WHERE oid = ic.reltablespace) AS tablespace
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = tc.relnamespace
        JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = %s AND i.indisvalid
        ORDER BY ic.relname
        """,
        (oid,),
    )
    return [
        Index(r["name"], r["def"], r["prefix"], r["indisunique"], r["indisprimary"], r["con"], list(r["cols"]),
              list(r["incl"]), r["amname"], r["pred"], r["nnd"], r["comment"], list(r["attnames"]), r["tablespace"])
        for r in rows
    ]


# a table's privileges and its columns' (oid, oid), for _grants
_ACL = ("SELECT relacl AS acl, relowner AS owner, NULL::name AS col FROM pg_class WHERE oid = %s "
        "UNION ALL SELECT a.attacl, c.relowner, a.attname FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid WHERE a.attrelid = %s AND a.attacl IS NOT NULL AND NOT a.attisdropped")


def _grants(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> list[Grant]:
    rows = fetch_dicts(
        conn,
        f"""
        SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END AS grantee,
               x.privilege_type, x.is_grantable, src.col
        FROM ({query}) src CROSS JOIN LATERAL aclexplode(src.acl) x
        WHERE NOT (x.grantee = src.owner AND x.grantor = src.owner)
        ORDER BY src.col NULLS FIRST, 1, 2
        """,
        params,
    )
    return [Grant(r["grantee"], r["privilege_type"], r["is_grantable"], r["col"]) for r in rows]


def _views(conn: psycopg.Connection, oid: int) -> list[DependentView]:
    rows = fetch_dicts(
        conn,
        """
        SELECT DISTINCT v.oid, n.nspname, v.relname, v.relkind = 'm' AS mat, pg_get_viewdef(v.oid) AS def,
               coalesce(v.reloptions, '{}') AS opts, pg_get_userbyid(v.relowner) AS owner, v.relispopulated,
               obj_description(v.oid, 'pg_class') AS comment
        FROM pg_depend d
        JOIN pg_rewrite rw ON rw.oid = d.objid
        JOIN pg_class v ON v.oid = rw.ev_class
        JOIN pg_namespace n ON n.oid = v.relnamespace
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = %s AND rw.ev_class <> %s
        ORDER BY v.oid
        """,
        (oid, oid),
    )
    out = []
    for r in rows:
        indexes = [
            row[0] for row in conn.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s ORDER BY indexrelid", (r["oid"],))
        ] if r["mat"] else []
        grants = _grants(conn, "SELECT relacl AS acl, relowner AS owner, NULL::name AS col FROM pg_class WHERE oid = %s",
                         (r["oid"],))
        dependents = [row[0] for row in conn.execute(
            "SELECT DISTINCT rw.ev_class::regclass::text FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
            "AND d.refobjid = %s AND rw.ev_class <> %s ORDER BY 1", (r["oid"], r["oid"]))] if r["mat"] else []
        out.append(DependentView(QualifiedName(r["nspname"], r["relname"]), r["mat"], r["def"], list(r["opts"]),
                                 r["owner"], r["relispopulated"], indexes, grants, r["comment"], dependents))
    return out


_PUBLICATIONS = """
SELECT p.pubname, 'table', p.pubviaroot, p.pubupdate OR p.pubdelete,
       CASE WHEN pr.prattrs IS NOT NULL THEN
         (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
           WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[])) END,
       pg_get_expr(pr.prqual, pr.prrelid), pg_get_userbyid(p.pubowner), pg_has_role(p.pubowner, 'USAGE')
  FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = %(oid)s
UNION ALL
SELECT p.pubname, 'schema', p.pubviaroot, p.pubupdate OR p.pubdelete, NULL, NULL, pg_get_userbyid(p.pubowner),
       pg_has_role(p.pubowner, 'USAGE')
  FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid
  JOIN pg_class c ON c.relnamespace = pn.pnnspid WHERE c.oid = %(oid)s
UNION ALL
SELECT p.pubname, 'all', p.pubviaroot, p.pubupdate OR p.pubdelete, NULL, NULL, pg_get_userbyid(p.pubowner),
       pg_has_role(p.pubowner, 'USAGE')
  FROM pg_publication p WHERE p.puballtables
ORDER BY 1, 2
"""
# PostgreSQL 14: no column lists, row filters or FOR TABLES IN SCHEMA
_PUBLICATIONS_14 = """
SELECT p.pubname, 'table', p.pubviaroot, p.pubupdate OR p.pubdelete, NULL::text[], NULL::text,
       pg_get_userbyid(p.pubowner), pg_has_role(p.pubowner, 'USAGE')
  FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = %(oid)s
UNION ALL
SELECT p.pubname, 'all', p.pubviaroot, p.pubupdate OR p.pubdelete, NULL, NULL, pg_get_userbyid(p.pubowner),
       pg_has_role(p.pubowner, 'USAGE')
  FROM pg_publication p WHERE p.puballtables
ORDER BY 1, 2
"""


def publications(conn: psycopg.Connection, oid: int) -> list[Publication]:
    """The publications that publish the table, with its column list and row filter in each."""
    query = _PUBLICATIONS if conn.info.server_version >= 150000 else _PUBLICATIONS_14
    return [Publication(*row) for row in conn.execute(query, {"oid": oid})]


_NOT_OURS = """
SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
       ELSE 'relation' END || ' ' || c.oid::regclass::text, 'owned by ' || pg_get_userbyid(c.relowner)
  FROM pg_class c WHERE c.oid = ANY (%(relations)s::text[]::regclass[]) AND NOT pg_has_role(c.relowner, 'USAGE')
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, 'owned by ' || pg_get_userbyid(p.proowner)
  FROM pg_proc p WHERE p.oid = ANY (%(functions)s::text[]::regprocedure[]) AND NOT pg_has_role(p.proowner, 'USAGE')
UNION ALL
SELECT 'statistics ' || quote_ident(n.nspname) || '.' || quote_ident(s.stxname), 'owned by ' || pg_get_userbyid(s.stxowner)
  FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
  JOIN unnest(%(stat_schemas)s::text[], %(stat_names)s::text[]) AS x(nsp, name) ON x.nsp = n.nspname AND x.name = s.stxname
 WHERE NOT pg_has_role(s.stxowner, 'USAGE')
UNION ALL
SELECT DISTINCT 'trigger function ' || t.tgfoid::regprocedure::text, 'EXECUTE'
  FROM pg_trigger t WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal AND NOT has_function_privilege(t.tgfoid, 'EXECUTE')
UNION ALL
SELECT 'table ' || k.confrelid::regclass::text, 'REFERENCES, for foreign key ' || quote_ident(k.conname)
  FROM pg_constraint k WHERE k.conrelid = %(oid)s AND k.contype = 'f'
   AND NOT (SELECT bool_and(has_column_privilege(k.confrelid, a, 'REFERENCES')) FROM unnest(k.confkey) a)
UNION ALL
SELECT 'tablespace ' || quote_ident(ts.spcname), 'CREATE'
  FROM pg_tablespace ts WHERE NOT has_tablespace_privilege(ts.oid, 'CREATE') AND ts.oid IN (
       SELECT c.reltablespace FROM pg_class c
        WHERE c.oid = %(oid)s OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %(oid)s))
ORDER BY 1
"""


def not_ours(conn: psycopg.Connection, m: TableModel) -> list[tuple[str, str]]:
    """What a conversion recreates, alters or uses besides the table that the current user has no
    right to: views and materialized views over it, functions whose bodies read it, the sequences it
    owns and its statistics objects (their owner's privileges), its trigger functions (EXECUTE),
    the tables its foreign keys reference (REFERENCES), the tablespaces of it and its indexes
    (CREATE). (what, the right it lacks) for each."""
    relations = [v.name.literal for v in m.views] + [s.sequence.literal for s in m.owned_sequences]
    return [(r[0], r[1]) for r in conn.execute(_NOT_OURS, {
        "oid": m.oid, "relations": relations, "functions": [f.name for f in m.functions],
        "stat_schemas": [s.name.schema for s in m.statistics], "stat_names": [s.name.name for s in m.statistics]})]


def grantees(conn: psycopg.Connection, oid: int) -> list[str]:
    """The roles (and PUBLIC) that hold a privilege on a table or on one of its columns, other
    than its owner's own."""
    return sorted({g.grantee for g in _grants(conn, _ACL, (oid, oid))})
