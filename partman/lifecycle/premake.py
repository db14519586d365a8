"""Premake: keep `premake` future partitions beyond the current one, and fill gaps between
existing partitions. Bounds align to the interval in the table's time zone; every DDL runs
with a short lock_timeout and a few retries (a blocked table is skipped, not waited on)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import errors as pgerrors

from .. import failpoints, intervals, log, naming
from ..catalog import ManagedTable
from ..db import QualifiedName, with_lock_retry
from ..partitions import Partition, create_partition_sql, list_partitions
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
) -> list[tuple[datetime, datetime]]:
    """Interval ranges from the oldest existing partition through `premake` beyond the current
    one that no existing partition overlaps (gaps and future), excluding ranges retention would
    remove anyway. Pure."""
    tz = intervals.zone(mt.timezone)
    bounded = [(aware(p.lower, tz), aware(p.upper, tz)) for p in parts if not p.is_default]
    lowers = [lo for lo, _ in bounded if lo is not None]
    lowest = min(lowers) if lowers else None
    exact = {(lo.timestamp(), hi.timestamp()) for lo, hi in bounded if lo is not None and hi is not None}
    out = []
    for lo, hi in intervals.ranges(lowest, None, now, mt.interval, tz, mt.premake):
        if cutoff is not None and hi <= cutoff:
            continue
        if (lo.timestamp(), hi.timestamp()) in exact:  # the common case, without the quadratic scan
            continue
        if any(overlaps(lo, hi, plo, phi) for plo, phi in bounded):
            continue
        out.append((lo, hi))
    return out


def create(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, lo: datetime, hi: datetime) -> str:
    parent = parent_of(mt)
    name = QualifiedName(mt.schema_name, naming.partition_name(mt.table_name, lo))
    stmt = create_partition_sql(parent, name, lo, hi, mt.key_type)
    failpoints.hit("maintain.premake.before_ddl")
    with_lock_retry(conn, settings, f"creating partition {name}", lambda c: c.execute(stmt),
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
    for lo, hi in missing_ranges(parts, mt, now, retention_cutoff(conn, mt)):
        try:
            created.append(create(conn, settings, mt, lo, hi))
        except pgerrors.CheckViolation:
            # rows for this range sit in the default partition: the default move creates it
            blocked.append(naming.partition_name(mt.table_name, lo))
    return {"created": created, "blocked_by_default": blocked}


def future_count(conn: psycopg.Connection, mt: ManagedTable) -> int:
    """Partitions starting after the current interval (for health)."""
    tz = intervals.zone(mt.timezone)
    cur = intervals.floor(server_now(conn), mt.interval, tz)
    parts = list_partitions(conn, parent_of(mt), mt.key_type)
    return sum(1 for p in parts if not p.is_default and p.lower is not None and aware(p.lower, tz) > cur)
