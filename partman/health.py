"""Judging health from the database's catalog (never from this process's memory, so that every
instance, leader or standby, answers the same): database reachable, each registered table
covered far enough ahead, last maintenance neither failed nor overdue.

Coverage has one interval of slack: a table with `premake` N is healthy while at least N - 1
future partitions exist beyond the current one, so crossing a period boundary (when one future
partition becomes the current one) does not flap the check before the next pass runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from . import catalog, log
from .catalog import ManagedTable
from .db import QualifiedName
from .intervals import floor, step, zone
from .lifecycle import aware
from .partitions import Partition, key_column, list_partitions
from .settings import Settings


@dataclass
class Coverage:
    """How far ahead a table is covered by contiguous partitions."""

    table: str
    exists: bool
    partitions: list[Partition] = field(default_factory=list)
    current_covered: bool = False
    ahead: int = 0  # contiguous partitions after the current interval
    covered_until: datetime | None = None  # upper bound of the contiguous coverage from now
    default_partition: Partition | None = None

    @property
    def regular(self) -> list[Partition]:
        return [p for p in self.partitions if not p.is_default]


def coverage(conn: psycopg.Connection, mt: ManagedTable, now: datetime) -> Coverage:
    """Partitions of a managed table and how far ahead of `now` they cover without a gap."""
    parent = QualifiedName(mt.schema_name, mt.table_name)
    if conn.execute("SELECT to_regclass(%s)", (parent.literal,)).fetchone()[0] is None:
        return Coverage(mt.qualified, exists=False)
    key_type = mt.key_type
    if key_column(conn, parent) is None:  # no longer range-partitioned (e.g. reverted by hand)
        return Coverage(mt.qualified, exists=False)
    parts = list_partitions(conn, parent, key_type)
    tz = zone(mt.timezone)
    cov = Coverage(mt.qualified, exists=True, partitions=parts)
    cov.default_partition = next((p for p in parts if p.is_default), None)
    ranges = [(aware(p.lower, tz), aware(p.upper, tz)) for p in parts if not p.is_default]
    start = floor(now, mt.interval, tz)
    local_now = now.astimezone(tz)
    # walk contiguous coverage from now
    point = local_now
    covered_until: datetime | None = None
    while True:
        hit = next(
            (hi for lo, hi in ranges if (lo is None or lo <= point) and (hi is None or hi > point)), "none"
        )
        if hit == "none":
            break
        if hit is None:  # MAXVALUE
            covered_until = datetime.max.replace(tzinfo=tz)
            break
        covered_until = hit
        point = hit
    cov.covered_until = covered_until
    cov.current_covered = covered_until is not None
    if covered_until is not None:
        n = 0
        nxt = step(start, mt.interval, 1)
        while nxt < covered_until and n < 1000:
            n += 1
            nxt = step(nxt, mt.interval, 1)
        cov.ahead = n
    return cov


def required_ahead(premake: int) -> int:
    return max(premake - 1, 0)


def _iso(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        if isinstance(v, datetime) and v.year >= 9999:
            return "infinity"
        return v.isoformat()
    return v


def judge(conn: psycopg.Connection | None, settings: Settings, *, leader: bool, error: str | None = None) -> dict[str, Any]:
    """The /health document. `conn` None (with `error`) means the database is unreachable."""
    body: dict[str, Any] = {
        "status": "ok",
        "leader": bool(leader),
        "instance": settings.instance_name,
        "database": "up",
        "reasons": [],
        "tables": [],
    }
    if conn is None:
        body.update(status="unavailable", database="down")
        body["reasons"].append(f"database unreachable: {log.redact(error or 'no connection')}")
        return body
    now: datetime = conn.execute("SELECT now()").fetchone()[0]
    body["checked_at"] = now.isoformat()
    interval: timedelta = settings.maintenance_interval
    overdue_after = 2 * interval
    reasons: list[str] = body["reasons"]
    runs = catalog.last_runs(conn, settings)
    last = runs["last"]
    last_ok = runs["last_ok"]
    body["last_maintenance"] = {
        "finished_at": _iso(last["finished_at"]) if last else None,
        "ok": last["ok"] if last else None,
        "instance": last["instance"] if last else None,
        "error": log.redact(last["error"]) if last and last["error"] else None,
        "last_success_at": _iso(last_ok["finished_at"]) if last_ok else None,
    }
    if last is not None and last["ok"] is False:
        reasons.append(f"last maintenance pass failed: {log.redact(str(last['error'] or 'unknown error'))}")
    for mt in catalog.list_managed(conn, settings):
        entry: dict[str, Any] = {
            "table": mt.qualified,
            "interval": mt.interval,
            "premake": mt.premake,
            "required_ahead": required_ahead(mt.premake),
        }
        cov = coverage(conn, mt, now)
        if not cov.exists:
            entry["status"] = "missing"
            reasons.append(f"{mt.qualified}: registered but not a range-partitioned table")
            body["tables"].append(entry)
            continue
        entry["partitions_ahead"] = cov.ahead
        entry["covered_until"] = _iso(cov.covered_until)
        problems = []
        if not cov.current_covered:
            problems.append("the current period has no partition")
        elif cov.ahead < required_ahead(mt.premake):
            problems.append(
                f"only {cov.ahead} future partition(s) ahead, fewer than premake - 1 = {required_ahead(mt.premake)}"
            )
        from .lifecycle.default_rows import stranded as stranded_rows

        stranded = stranded_rows(conn, mt)
        if stranded:
            entry["stranded_default_rows"] = stranded
            problems.append(
                "a maintenance pass stopped while it moved rows out of the default partition: "
                + ", ".join(f"{s['rows']} rows in {s['staging']}" for s in stranded)
                + " are out of sight of queries on the table until the next pass attaches them (run `partman maintain`)")
        last_run = mt.maintenance_last_run
        entry["maintenance_last_run"] = _iso(last_run)
        entry["maintenance_last_attempt"] = _iso(mt.maintenance_last_attempt)
        failed = bool(mt.maintenance_last_error) and (
            last_run is None or (mt.maintenance_last_attempt is not None and mt.maintenance_last_attempt > last_run)
        )
        if failed:
            entry["last_error"] = log.redact(str(mt.maintenance_last_error))
            problems.append(f"last maintenance failed: {entry['last_error']}")
        # never run yet (just registered): not overdue; coverage is what protects it until the first pass
        overdue = last_run is not None and now - last_run > overdue_after
        entry["overdue"] = overdue
        if overdue:
            problems.append(
                f"maintenance overdue: last successful run {_iso(last_run) or 'never'} is older than 2 x "
                f"maintenance interval ({int(overdue_after.total_seconds())}s)"
            )
        entry["status"] = "ok" if not problems else "unhealthy"
        if problems:
            entry["problems"] = problems
            reasons.extend(f"{mt.qualified}: {p}" for p in problems)
        body["tables"].append(entry)
    if reasons:
        body["status"] = "unhealthy"
    return body
