"""Rows that landed in the default partition: count them (status, health, metrics) and move
them into partitions of the table's interval.

For each interval range that has rows in the default, a plain staging table is created with
the final partition's name (marked by a comment so a killed pass resumes it). A range of more than
one batch moves into it in batches (DELETE from the default partition only, in one statement with
the INSERT, each batch its own transaction) until at most one batch is left; the last transaction
locks only the default partition, moves that rest and what writers added meanwhile and ATTACHes
the staging table (SHARE UPDATE EXCLUSIVE on the parent, plus SHARE so writers wait for that one
short transaction instead of failing). Rows moved in batches are out of sight of queries on the
table until that attach (seconds; until the next pass if the pass is killed meanwhile: status and
/health say so); a range of at most one batch, stray rows as a rule, never is, and neither is the
heap's last batch, where the newest rows are (a chain trigger that links each insert to the newest
row must see it).
No other partition is updated or deleted from, and the parent is never locked exclusively. Rows with a NULL key cannot be moved anywhere and are only reported.

A published table (logical replication) moves differently: the batches' deletions would be
published but the rows' arrival with the ATTACH would not, and subscribers would lose them. So
the last transaction moves all of the range's rows, through a temporary table (never published),
and inserts them into the new partition after the ATTACH: subscribers receive the deletes and
the inserts together, and writers wait for that one transaction (logged: `published`); a range
with more rows than published_move_limit stays, reported, for a pass with larger batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .. import failpoints, intervals, log, naming
from ..catalog import ManagedTable
from ..db import QualifiedName, advisory_holder, lock_private_first, with_lock_retry
from ..errors import LockTimeoutGaveUp
from ..introspect import publications
from ..partitions import (Partition, list_partitions, newest_partition, replica_identity_sql,
                          standalone_partition_sql)
from ..settings import Settings
from . import aware, columns, overlaps, parent_of, relation_kind, table_lock_key
from .premake import ddl_attempts

MARKER = "partman:default-move"
MOVING = "partman_moving"  # the temporary table a published table's rows move through


class NotLeader(Exception):
    """Leadership was lost before a destructive step."""


def default_partition(conn: psycopg.Connection, mt: ManagedTable) -> Partition | None:
    for p in list_partitions(conn, parent_of(mt), mt.key_type):
        if p.is_default:
            return p
    return None


def count(conn: psycopg.Connection, mt: ManagedTable) -> int:
    """Rows in the table's default partition (0 when it has none)."""
    d = default_partition(conn, mt)
    if d is None:
        return 0
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(d.qualified.ident())).fetchone()[0]


def unplaceable(conn: psycopg.Connection, mt: ManagedTable, d: Partition) -> tuple[int, int]:
    """Rows of the default partition no range partition can hold: (NULL keys, +-infinity keys)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE {k} IS NULL), count(*) FILTER (WHERE NOT isfinite({k})) FROM {d}").format(
            k=sql.Identifier(mt.column_name), d=d.qualified.ident())
    ).fetchone()
    return int(row[0]), int(row[1])


def _ranges_with_rows(conn: psycopg.Connection, mt: ManagedTable, d: Partition) -> list[tuple[datetime, datetime]]:
    key = sql.Identifier(mt.column_name)
    unit = sql.Literal(mt.interval)
    if mt.key_type == "timestamptz":
        trunc = sql.SQL("date_trunc({}, {}, {})").format(unit, key, sql.Literal(mt.timezone))
    elif mt.key_type == "timestamp":
        trunc = sql.SQL("date_trunc({}, {})").format(unit, key)
    else:
        trunc = sql.SQL("date_trunc({}, {}::timestamp)").format(unit, key)
    rows = conn.execute(
        # NULL and +-infinity keys belong to no range partition: they stay in the default (reported)
        sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL AND isfinite({})").format(
            trunc, d.qualified.ident(), key, key)
    ).fetchall()
    tz = intervals.zone(mt.timezone)
    out = set()
    for (v,) in rows:
        lo = intervals.floor(v, mt.interval, tz)
        out.add((lo, intervals.step(lo, mt.interval)))
    return sorted(out)


def _staging_tables(conn: psycopg.Connection, mt: ManagedTable) -> list[tuple[QualifiedName, datetime, datetime]]:
    rows = conn.execute(
        """SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind = 'r' AND NOT c.relispartition
             AND obj_description(c.oid, 'pg_class') LIKE %s""",
        (mt.schema_name, MARKER + " %"),
    ).fetchall()
    out = []
    tz = intervals.zone(mt.timezone)
    for name, comment in rows:
        meta = json.loads(comment[len(MARKER) + 1:])
        if meta.get("parent") != mt.table_name:
            continue
        lo = datetime.fromisoformat(meta["lower"]).astimezone(tz)
        hi = datetime.fromisoformat(meta["upper"]).astimezone(tz)
        out.append((QualifiedName(mt.schema_name, name), lo, hi))
    return out


def stranded(conn: psycopg.Connection, mt: ManagedTable) -> list[dict[str, Any]]:
    """Staging tables of this table that no pass is working on (a pass stopped between its batches
    and its attach): their rows are in neither the default partition nor a partition, out of sight
    of queries on the table until the next pass attaches them. [{"staging", "rows"}]"""
    if advisory_holder(conn, table_lock_key(mt)) is not None:
        return []  # a pass is moving rows right now: its staging tables are on their way
    out = []
    for name, _lo, _hi in _staging_tables(conn, mt):
        try:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name.ident())).fetchone()[0]
        except pgerrors.LockNotAvailable:  # a pass took it since (the daemon's probe has a lock_timeout)
            continue
        if rows:
            out.append({"staging": name.name, "rows": rows})
    return out


def pending_moves(conn: psycopg.Connection, mt: ManagedTable) -> list[str]:
    """The staging tables a stopped pass left with rows on their way out of the default partition."""
    return [name.name for name, _, _ in _staging_tables(conn, mt)]


def _triggers_off(conn: psycopg.Connection, partition: QualifiedName) -> list[sql.Composed]:
    """Rows are moved, not changed: user triggers (append-only guards, chain triggers) must not
    fire, inside the caller's transaction. With superuser/rds_superuser, session_replication_role
    does it; otherwise (the owner suffices) the default partition's triggers are disabled for this
    transaction only: returns the statements that restore them, to run before it commits."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
        return []
    except pgerrors.InsufficientPrivilege:
        pass
    from ..convert import triggers

    saved = triggers.states(conn, partition, clones=True)
    if not saved:
        return []
    conn.execute(triggers.disable_all(partition))
    return triggers.restore(partition, saved)


def _restore(conn: psycopg.Connection, statements: list[sql.Composed]) -> None:
    for stmt in statements:
        conn.execute(stmt)


def _move_sql(mt: ManagedTable, src: QualifiedName, dst: QualifiedName, cols: list[str], lo: str, hi: str,
              limit: int | None) -> sql.Composed:
    """Move the rows of [lo, hi) (key literals) from src into dst, at most `limit` (None: all)."""
    key = sql.Identifier(mt.column_name)
    cond = sql.SQL("{k} >= {lo} AND {k} < {hi}").format(k=key, lo=sql.Literal(lo), hi=sql.Literal(hi))
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    if limit is None:
        where = cond
    else:
        where = sql.SQL("ctid = ANY(ARRAY(SELECT ctid FROM {} WHERE {} LIMIT {}))").format(src.ident(), cond, sql.Literal(limit))
    return sql.SQL(
        "WITH moved AS (DELETE FROM {src} WHERE {where} RETURNING {cols}) INSERT INTO {dst} ({cols}) SELECT {cols} FROM moved"
    ).format(src=src.ident(), where=where, cols=collist, dst=dst.ident())


def is_published(conn: psycopg.Connection, partition: Partition) -> bool:
    """Whether a publication publishes this partition's changes: one of it, of a table it is a
    partition of, of their schema, or of all tables."""
    tables = [r[0] for r in conn.execute("SELECT relid::oid FROM pg_partition_ancestors(%s::oid)", (partition.oid,))]
    return any(publications(conn, oid) for oid in tables)


def _take_out_sql(mt: ManagedTable, src: QualifiedName, cols: list[str], lo: str, hi: str) -> sql.Composed:
    """The range's rows deleted from `src` into a temporary table (never published) MOVING."""
    key = sql.Identifier(mt.column_name)
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    return sql.SQL(
        "CREATE TEMP TABLE {moving} ON COMMIT DROP AS WITH moved AS (DELETE FROM {src} WHERE {k} >= {lo} AND {k} < {hi} "
        "RETURNING {cols}) SELECT {cols} FROM moved"
    ).format(moving=sql.Identifier(MOVING), src=src.ident(), k=key, cols=collist,
             lo=sql.Literal(lo), hi=sql.Literal(hi))


def _put_in_sql(dst: QualifiedName, cols: list[str]) -> sql.Composed:
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    # PostgreSQL 17+ gives a partition its parent's identity columns: the rows keep their values
    return sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
        dst.ident(), collist, collist, sql.Identifier(MOVING))


def _move_range(
    conn: psycopg.Connection, settings: Settings, mt: ManagedTable, d: Partition, lo: datetime, hi: datetime,
    leader_check: Callable[[], bool] | None, staging: QualifiedName | None = None,
) -> tuple[str, int]:
    parent = parent_of(mt)
    name = staging or QualifiedName(mt.schema_name, naming.partition_name(mt.table_name, lo))
    cols = [c["name"] for c in columns(conn, parent) if not c["generated"]]
    lo_lit, hi_lit = intervals.literal(lo, mt.key_type), intervals.literal(hi, mt.key_type)
    if staging is None:
        meta = json.dumps({"parent": mt.table_name, "lower": lo.isoformat(), "upper": hi.isoformat()})
        with conn.transaction():
            for stmt in standalone_partition_sql(conn, parent, list_partitions(conn, parent, mt.key_type), name):
                conn.execute(stmt)
            add_range_check(conn, mt, name, lo_lit, hi_lit)
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(name.ident(), sql.Literal(f"{MARKER} {meta}")))
    moved = 0
    batch = max(1, settings.batch_size)
    stmt = _move_sql(mt, d.qualified, name, cols, lo_lit, hi_lit, batch)
    published = is_published(conn, d)
    # batches only while more than one batch would be left: the last batch's worth (the heap's
    # tail, where the newest rows are) moves in the attach's transaction, so a range of at most one
    # batch (stray rows, the usual case) is never out of sight, and the newest row, which a chain
    # trigger reads to link the next insert to, stays visible until it is in its partition
    batches = 0 if published else max(0, (_rows_in_range(conn, mt, d, lo, hi) - 1) // batch)
    for _ in range(batches):
        if leader_check is not None and not leader_check():
            raise NotLeader()
        with conn.transaction():
            restore = _triggers_off(conn, d.qualified)
            n = conn.execute(stmt).rowcount
            failpoints.hit("maintain.default.batch")
            _restore(conn, restore)
        moved += n
        if n < batch:
            break

    def final(c: psycopg.Connection) -> int:
        lock_private_first(c, [name], settings.lock_timeout_ms)  # the staging table
        rest = attach_with_default_rows(c, mt, d, name, cols, lo_lit, hi_lit, published)
        drop_range_check(c, name)
        c.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(name.ident()))
        return rest

    if leader_check is not None and not leader_check():
        raise NotLeader()
    try:
        moved += with_lock_retry(conn, settings, f"attaching {name} (rows moved out of {d.name})", final,
                                 attempts=ddl_attempts(settings), tables=[parent])
    except LockTimeoutGaveUp:
        _put_back(conn, settings, mt, d, name, cols)
        raise
    log.get().info("default_rows_moved", table=mt.qualified, partition=name.name, rows=moved, published=published)
    return name.name, moved


def add_range_check(conn: psycopg.Connection, mt: ManagedTable, table: QualifiedName, lo: str, hi: str) -> None:
    """A CHECK of the range [lo, hi) (key literals) on a table about to be attached for it, so the
    ATTACH trusts it instead of reading the table under its locks."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT partman_range CHECK ({k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi})").format(
        table.ident(), k=sql.Identifier(mt.column_name), lo=sql.Literal(lo), hi=sql.Literal(hi)))


def drop_range_check(conn: psycopg.Connection, table: QualifiedName) -> None:
    """Attached, the partition's bound says what the CHECK said."""
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT partman_range").format(table.ident()))


def rows_in_range(conn: psycopg.Connection, mt: ManagedTable, d: Partition, lo: str, hi: str) -> bool:
    """Whether the default partition holds a row of [lo, hi) (key literals)."""
    key = sql.Identifier(mt.column_name)
    return conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {k} >= {lo} AND {k} < {hi})").format(
        d.qualified.ident(), k=key, lo=sql.Literal(lo), hi=sql.Literal(hi))).fetchone()[0]


def attach_with_default_rows(c: psycopg.Connection, mt: ManagedTable, d: Partition, name: QualifiedName,
                             cols: list[str], lo: str, hi: str, published: bool) -> int:
    """Inside the caller's transaction: the rows of [lo, hi) (key literals) still in the default
    partition `d` move into the plain table `name`, which is then attached for that range (a staging
    table of the default move, or a partition restored from its archive). Returns the rows moved.
    SHARE on the parent: readers continue, writers wait for this one short transaction (an insert
    already routed to the default partition would otherwise fail its new constraint). Published,
    the rows go through a temporary table and are inserted once `name` is a partition, so the
    inserts are published as the deletes were."""
    parent = parent_of(mt)
    c.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(parent.ident()))
    c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(d.qualified.ident()))
    restore = _triggers_off(c, d.qualified)
    if published:
        rest = c.execute(_take_out_sql(mt, d.qualified, cols, lo, hi)).rowcount
    else:
        rest = c.execute(_move_sql(mt, d.qualified, name, cols, lo, hi, None)).rowcount
    _restore(c, restore)
    failpoints.hit("maintain.default.attach")
    like = newest_partition(list_partitions(c, parent, mt.key_type))
    c.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        parent.ident(), name.ident(), sql.Literal(lo), sql.Literal(hi)))
    for stmt in replica_identity_sql(c, like.oid, name) if like is not None else []:  # its indexes: the attach's
        c.execute(stmt)
    if published:  # a partition now: the inserts are published as the deletes were
        restore = _triggers_off(c, name)
        c.execute(_put_in_sql(name, cols))
        _restore(c, restore)
    return rest


def _put_back(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, d: Partition, staging: QualifiedName,
              cols: list[str]) -> None:
    """The attach was blocked: return the staged rows to the default partition (where readers
    see them) rather than leave them invisible until the next pass. Best effort: if this fails
    too, the next pass finds the staging table and finishes the move."""
    collist = sql.SQL(", ").join(map(sql.Identifier, cols))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{settings.lock_timeout_ms}ms")))
            restore = _triggers_off(conn, d.qualified)
            conn.execute(sql.SQL("WITH back AS (DELETE FROM {s} RETURNING {c}) INSERT INTO {d} ({c}) SELECT {c} FROM back").format(
                s=staging.ident(), c=collist, d=d.qualified.ident()))
            _restore(conn, restore)
            conn.execute(sql.SQL("DROP TABLE {}").format(staging.ident()))
    except psycopg.Error as exc:
        log.get().warning("default_rows_put_back_failed", table=mt.qualified, staging=staging.name, error=str(exc))


def move(conn: psycopg.Connection, settings: Settings, mt: ManagedTable,
         leader_check: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Move every movable row out of the default partition. Returns what was done."""
    result: dict[str, Any] = {"moved": 0, "partitions": {}, "null_key_rows": 0, "infinite_key_rows": 0, "unmovable": []}
    d = default_partition(conn, mt)
    if d is None:
        return result
    tz = intervals.zone(mt.timezone)
    for staging, lo, hi in _staging_tables(conn, mt):  # a killed pass left these: finish them
        name, n = _move_range(conn, settings, mt, d, lo, hi, leader_check, staging=staging)
        result["partitions"][name] = result["partitions"].get(name, 0) + n
        result["moved"] += n
    parts = [p for p in list_partitions(conn, parent_of(mt), mt.key_type) if not p.is_default]
    bounded = [(aware(p.lower, tz), aware(p.upper, tz)) for p in parts]
    limit = published_move_limit(settings) if is_published(conn, d) else None
    held: list[str] = []
    taken: list[str] = []
    for lo, hi in _ranges_with_rows(conn, mt, d):
        if any(overlaps(lo, hi, plo, phi) for plo, phi in bounded):
            result["unmovable"].append(naming.partition_name(mt.table_name, lo))
            continue
        name = QualifiedName(mt.schema_name, naming.partition_name(mt.table_name, lo))
        if relation_kind(conn, name) is not None:  # no partition of this range: a table restored or detached
            taken.append(f"{name.arg} ({_rows_in_range(conn, mt, d, lo, hi):,} rows of "
                         f"[{intervals.literal(lo, mt.key_type)}, {intervals.literal(hi, mt.key_type)}))")
            continue
        if limit is not None and (waiting := _rows_in_range(conn, mt, d, lo, hi)) > limit:
            held.append(f"{naming.partition_name(mt.table_name, lo)} ({waiting:,} rows)")
            continue
        name, n = _move_range(conn, settings, mt, d, lo, hi, leader_check)
        result["partitions"][name] = result["partitions"].get(name, 0) + n
        result["moved"] += n
    result["null_key_rows"], result["infinite_key_rows"] = unplaceable(conn, mt, d)
    errors = []
    if result["unmovable"]:
        errors.append(
            f"rows in {d.name} fall into ranges that overlap existing partitions not aligned to the "
            f"{mt.interval} interval ({', '.join(result['unmovable'])}); move them by hand."
        )
    if taken:
        errors.append(
            f"rows in {d.name} belong to ranges whose partition name is taken by a table that is no partition of "
            f"{mt.qualified} (a partition restored from its archive without --attach, or one retention detached): "
            f"{', '.join(taken)}. If that table is a copy `partman restore` made from an archive, `partman restore "
            f"{mt.qualified} <partition> --attach` attaches it with these rows. If retention detached it, it is the "
            "only copy of its rows: never drop it; rename it (ALTER TABLE ... RENAME TO ...) and the next pass makes "
            "the partition for these rows.")
    if held:
        errors.append(
            f"{mt.qualified} is published, so rows leave {d.name} in one transaction that writers wait for (in "
            f"batches, subscribers would lose them), and partman moves at most {limit:,} rows per partition so "
            f"(10 x PARTMAN_BATCH_SIZE); left there for {', '.join(held)}. Run `partman maintain` with a larger "
            "PARTMAN_BATCH_SIZE at a quiet moment to move them.")
    if errors:
        result["error"] = " ".join(errors)
    return result


def published_move_limit(settings: Settings) -> int:
    """The most rows of one range a published table's default partition gives up in one
    transaction, which writers wait for: 10 batches."""
    return 10 * max(1, settings.batch_size)


def _rows_in_range(conn: psycopg.Connection, mt: ManagedTable, d: Partition, lo: datetime, hi: datetime) -> int:
    key = sql.Identifier(mt.column_name)
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {k} >= {lo} AND {k} < {hi}").format(
        d.qualified.ident(), k=key, lo=sql.Literal(intervals.literal(lo, mt.key_type)),
        hi=sql.Literal(intervals.literal(hi, mt.key_type)))).fetchone()[0]
