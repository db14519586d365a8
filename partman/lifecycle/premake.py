"""Premake: keep the current partition and `premake` future ones beyond it. Bounds align to the
interval in the table's time zone; every DDL runs with a short lock_timeout and a few retries (a
blocked table is skipped, not waited on).

Past ranges without a partition are left alone: a row that arrives for one lands in the default
partition, and the default move creates exactly the partition it needs. Filling every past gap
instead would turn one stray row (a mistyped year, an epoch-zero timestamp from a bug) in a
daily table into thousands of empty partitions between it and the others, as pg_partman too
leaves past gaps to an explicit gap fill."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import errors as pgerrors

from .. import failpoints, intervals, log, naming
from ..catalog import ManagedTable
from ..db import QualifiedName, with_lock_retry
from ..partitions import (ColumnSettings, ExtendedStatistics, Partition, clone_statistics_sql, column_settings,
                          column_settings_sql, create_partition_sql, list_partitions, newest_partition,
                          newest_statistics, replica_identity_sql, storage_options)
from ..settings import Settings
from . import aware, overlaps, parent_of, server_now

MAX_DDL_ATTEMPTS = 5


def ddl_attempts(settings: Settings) -> int:
    return min(settings.lock_retries, MAX_DDL_ATTEMPTS)


def retention_cutoff(conn: psycopg.Connection, mt: ManagedTable) -> datetime | None:
    if not mt.retention:
        return None
    return conn.execute("SELECT now() - %s::interval", (mt.retention,)).fetchone()[0]


def missing_ranges(
    parts: list[Partition], mt: ManagedTable, now: datetime, cutoff: datetime | None = None
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime, list[str]]]]:
    """The current interval's range and `premake` beyond it, excluding ranges retention would
    remove anyway: those no existing partition overlaps (to create), and those that partitions not
    aligned to the interval cover only in part (keys there have no partition and partman cannot
    create one: to report), with the names of the partitions in the way. Pure."""
    tz = intervals.zone(mt.timezone)
    bounded = [(aware(p.lower, tz), aware(p.upper, tz), p.name) for p in parts if not p.is_default]
    exact = {(lo.timestamp(), hi.timestamp()) for lo, hi, _ in bounded if lo is not None and hi is not None}
    missing, partial = [], []
    for lo, hi in intervals.future_ranges(now, mt.interval, tz, mt.premake):
        if cutoff is not None and hi <= cutoff:
            continue
        if (lo.timestamp(), hi.timestamp()) in exact:  # the common case, without the quadratic scan
            continue
        over = [(plo, phi, name) for plo, phi, name in bounded if overlaps(lo, hi, plo, phi)]
        if not over:
            missing.append((lo, hi))
        elif not _covered(lo, hi, over):
            partial.append((lo, hi, sorted(name for _, _, name in over)))
    return missing, partial


def _covered(lo: datetime, hi: datetime, parts: list[tuple[datetime | None, datetime | None, str]]) -> bool:
    """Do these ranges (None: unbounded) together cover [lo, hi)?"""
    at = lo
    for plo, phi, _ in sorted(parts, key=lambda p: (p[0] is not None, p[0] or lo)):
        if plo is not None and plo > at:
            return False
        if phi is None or phi >= hi:
            return True
        at = max(at, phi)
    return False


def create(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, lo: datetime, hi: datetime,
           options: list[str] | tuple[str, ...] = (), columns: ColumnSettings | None = None,
           statistics: list[ExtendedStatistics] | None = None, like: Partition | None = None) -> str:
    """One partition [lo, hi), with `options` (partitions.storage_options), the column
    statistics settings `columns` (partitions.column_settings), the extended statistics
    objects `statistics` (partitions.newest_statistics) and the replica identity of `like` (the
    newest partition)."""
    parent = parent_of(mt)
    name = QualifiedName(mt.schema_name, naming.partition_name(mt.table_name, lo))
    statements = [create_partition_sql(parent, name, lo, hi, mt.key_type, options),
                  *column_settings_sql(name, columns or []), *clone_statistics_sql(conn, statistics or [], name)]

    def make(c: psycopg.Connection) -> None:
        for stmt in statements:
            c.execute(stmt)
        for stmt in replica_identity_sql(c, like.oid, name) if like is not None else []:  # once its indexes exist
            c.execute(stmt)

    failpoints.hit("maintain.premake.before_ddl")
    with_lock_retry(conn, settings, f"creating partition {name}", make,
                    attempts=ddl_attempts(settings), partitions_of=[parent])
    log.get().info("partition_created", table=mt.qualified, partition=name.name,
                   lower=intervals.literal(lo, mt.key_type), upper=intervals.literal(hi, mt.key_type))
    return name.name


def run(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> dict:
    """Create what is missing. Returns {"created": [...], "blocked_by_default": [...]}."""
    parent = parent_of(mt)
    parts = list_partitions(conn, parent, mt.key_type)
    now = server_now(conn)
    created: list[str] = []
    blocked: list[str] = []
    missing, partial = missing_ranges(parts, mt, now, retention_cutoff(conn, mt))
    uncovered = [f"{intervals.literal(lo, mt.key_type)} .. {intervals.literal(hi, mt.key_type)} (in the way: "
                 f"{', '.join(names)})" for lo, hi, names in partial]
    options = storage_options(conn, parts) if missing else []
    columns = column_settings(conn, parts) if missing else []
    statistics = newest_statistics(conn, parts) if missing else []
    for lo, hi in missing:
        try:
            created.append(create(conn, settings, mt, lo, hi, options, columns, statistics, newest_partition(parts)))
        except pgerrors.CheckViolation:
            # rows for this range sit in the default partition: the default move creates it
            blocked.append(naming.partition_name(mt.table_name, lo))
    return {"created": created, "blocked_by_default": blocked, "uncovered": uncovered}


def future_count(conn: psycopg.Connection, mt: ManagedTable) -> int:
    """Partitions starting after the current interval (for health)."""
    tz = intervals.zone(mt.timezone)
    cur = intervals.floor(server_now(conn), mt.interval, tz)
    parts = list_partitions(conn, parent_of(mt), mt.key_type)
    return sum(1 for p in parts if not p.is_default and p.lower is not None and aware(p.lower, tz) > cur)
