"""`partman register` / `unregister`: adopt an already range-partitioned table for maintenance,
or stop managing it (no data changes either way)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog, intervals, log
from ..catalog import ManagedTable
from ..db import QualifiedName, column_arg, connect, resolve_table
from ..errors import PartmanError, UsageError
from ..intervals import INTERVALS, zone
from ..partitions import key_column
from ..settings import Settings
from . import notice

ACTIONS = ("drop", "detach", "archive")


def pg_partman_manages(conn: psycopg.Connection, qn: QualifiedName) -> bool:
    """True when pg_partman's own config (`partman.part_config`) still lists the table."""
    exists = conn.execute("SELECT to_regclass('partman.part_config') IS NOT NULL").fetchone()[0]
    if not exists:
        return False
    names = [f"{qn.schema}.{qn.name}", qn.literal]
    row = conn.execute(
        "SELECT 1 FROM partman.part_config WHERE parent_table::text = ANY(%s) LIMIT 1", (names,)
    ).fetchone()
    return row is not None


def check_retention(conn: psycopg.Connection, retention: str | None) -> str | None:
    """Normalise a retention interval ('10 years'); None/empty means keep forever."""
    if retention is None or not str(retention).strip():
        return None
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT %s::interval::text, %s::interval > interval '0'", (retention, retention)
            ).fetchone()
    except psycopg.Error:
        raise UsageError(
            f"--retention (PARTMAN_RETENTION) {retention!r} is not a PostgreSQL interval. Give one such as '10 years' or '18 months'."
        ) from None
    if not row[1]:
        raise UsageError(f"--retention (PARTMAN_RETENTION) {retention!r} must be a positive interval, such as '10 years'.")
    return row[0]


def register(
    conn: psycopg.Connection,
    settings: Settings,
    table: str,
    *,
    column: str,
    interval: str,
    premake: int | None = None,
    retention: str | None = None,
    retention_action: str | None = None,
    retention_schema: str | None = None,
    timezone: str | None = None,
) -> ManagedTable:
    if interval not in INTERVALS:
        raise UsageError(f"--interval {interval!r} is not one of {', '.join(INTERVALS)}.")
    if retention_action is not None and retention_action not in ACTIONS:
        raise UsageError(f"--retention-action {retention_action!r} is not one of {', '.join(ACTIONS)}.")
    if premake is not None and premake < 0:
        raise UsageError(f"--premake {premake} must be 0 or more.")
    tz_name = timezone or settings.timezone
    _check_zone(tz_name)
    qn = resolve_table(conn, table)
    kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (qn.literal,)).fetchone()[0]
    if kind != "p":
        raise PartmanError(
            f"{qn} is not a partitioned table, so there is nothing to register. "
            f"Convert it first with `partman convert {qn.arg} --column {shlex.quote(column)} --interval {interval}`."
        )
    key = key_column(conn, qn)
    if key is None:
        raise PartmanError(
            f"{qn} is not partitioned BY RANGE on a single timestamptz, timestamp or date column; "
            "partman only manages time-range partitioning."
        )
    if key[0] != column:
        raise UsageError(f"{qn} is partitioned by column {key[0]!r}, not {column!r}. Pass --column {shlex.quote(key[0])}.")
    if pg_partman_manages(conn, qn):
        raise PartmanError(
            f"{qn} is still managed by pg_partman (it is listed in partman.part_config). Two managers would "
            "create and drop partitions against each other. Remove it from pg_partman first "
            "(partman.undo_partition or DELETE FROM partman.part_config for this parent), then register it here."
        )
    retention_text = check_retention(conn, retention)
    catalog.ensure(conn, settings)
    existing = catalog.get_managed(conn, settings, qn.schema, qn.name)
    values = dict(
        schema_name=qn.schema,
        table_name=qn.name,
        column_name=column,
        key_type=key[1],
        interval=interval,
        premake=premake if premake is not None else (existing.premake if existing else settings.premake),
        timezone=tz_name,
        retention=retention_text if retention is not None else (existing.retention if existing else None),
        retention_action=retention_action or (existing.retention_action if existing else "drop"),
        retention_schema=retention_schema if retention_schema is not None else (existing.retention_schema if existing else None),
    )
    if existing is not None:
        changed = {k: f"{getattr(existing, k)} -> {v}" for k, v in values.items() if str(getattr(existing, k)) != str(v)}
        if changed:  # registering again is how a registration is changed: say what changed
            log.get().warning("registration_changed", table=str(qn), changes=changed)
    catalog.upsert_managed(conn, settings, **values)
    mt = catalog.get_managed(conn, settings, qn.schema, qn.name)
    assert mt is not None
    return mt


def unregister(conn: psycopg.Connection, settings: Settings, table: str) -> QualifiedName:
    try:
        qn = resolve_table(conn, table)
    except PartmanError:
        from ..db import split_name

        parts = split_name(table)
        if parts is None or parts[0] is None:
            raise
        qn = QualifiedName(parts[0], parts[1])  # the table may be gone already
    removed = catalog.exists(conn, settings) and catalog.delete_managed(conn, settings, qn.schema, qn.name)
    if not removed:
        raise PartmanError(f"{qn} is not registered with partman, so there is nothing to unregister.")
    return qn


def _check_zone(name: str) -> None:
    try:
        zone(name)
    except ValueError:
        raise UsageError(f"--timezone {name!r} is not a known time zone. Use an IANA name such as 'Europe/Berlin' or 'UTC'.") from None


def _estimates(conn: psycopg.Connection, due: list[dict[str, Any]]) -> dict[str, tuple[int, bool]]:
    """Rows of each due partition: the planner's estimate where it has one, else (never analyzed)
    a count. partition name -> (rows, estimated)."""
    if not due:
        return {}
    tuples = dict(conn.execute(  # one statement however many (a daily table's may be hundreds)
        "SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s)", (due[0]["schema"], [d["partition"] for d in due])).fetchall())
    out: dict[str, tuple[int, bool]] = {}
    for d in due:
        estimate = tuples.get(d["partition"])
        if estimate is not None and estimate >= 0:
            out[d["partition"]] = (int(estimate), True)
        else:
            qn = QualifiedName(d["schema"], d["partition"])
            out[d["partition"]] = (conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qn.ident())).fetchone()[0], False)
    return out


def report(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> dict[str, Any]:
    """What the registration does at once, before any maintenance pass: the partitions already
    past the retention (which the next pass removes; retention.due, the rule maintain applies)
    and the current or future partitions the table lacks (which the next pass creates)."""
    from ..health import coverage, required_ahead
    from .retention import due

    now = conn.execute("SELECT now()").fetchone()[0]
    tz = zone(mt.timezone)
    items: list[notice.Due] = []
    cutoff = None
    if mt.retention:
        cutoff = conn.execute("SELECT now() - %s::interval", (mt.retention,)).fetchone()[0]
        found = due(conn, settings, mt)
        rows = _estimates(conn, found)
        items = [notice.Due(d["partition"], d["lower"], d["upper"], *rows[d["partition"]], held=d["held"]) for d in found]
    moved_to = (mt.retention_schema or settings.retention_schema or None) if mt.retention_action == "detach" else None
    past = notice.past_retention_note(
        table=mt.qualified, retention=mt.retention or "", action=mt.retention_action, cutoff=cutoff, items=items,
        when="The next maintenance pass (`partman maintain`, or the daemon's next scheduled pass)",
        keep=(f"To keep one, hold it before that pass (`partman hold {mt.schema_name}.{items[0].name if items else ''} "
              "--reason ...`): retention never removes a held partition."),
        moved_to=moved_to)
    cov = coverage(conn, mt, now)
    start = intervals.floor(now, mt.interval, tz)
    gap = notice.coverage_note(
        table=mt.qualified, interval=mt.interval, premake=mt.premake, current=(start, intervals.step(start, mt.interval)),
        current_covered=cov.current_covered, ahead=cov.ahead, has_default=cov.default_partition is not None,
        unhealthy=not cov.current_covered or cov.ahead < required_ahead(mt.premake), retention_first=past is not None)
    return {
        "past_retention": notice.past_retention_doc(retention=mt.retention, action=mt.retention_action, cutoff=cutoff,
                                                    items=items, note=past, table=mt.qualified, moved_to=moved_to),
        "coverage": {
            "current_partition": cov.current_covered,
            "partitions_ahead": cov.ahead,
            "premake": mt.premake,
            "default_partition": cov.default_partition.name if cov.default_partition else None,
            "covered_until": cov.covered_until.isoformat() if cov.current_covered and cov.covered_until else None,
            "note": gap,
        },
        "warnings": [w for w in (past, gap) if w],
    }


def cli_register(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        mt = register(
            conn, settings, args.table, column=column_arg(args.column), interval=args.interval,
            premake=args.premake, retention=settings.retention, retention_action=settings.retention_action,
            retention_schema=getattr(args, "retention_schema", None), timezone=getattr(args, "timezone", None),
        )
        found = report(conn, settings, mt)
    keep = f", retention {mt.retention} ({mt.retention_action})" if mt.retention else ", no retention"
    message = f"registered {mt.qualified}: {mt.interval} partitions on {mt.column_name} ({mt.timezone}), premake {mt.premake}{keep}"
    warnings = list(found["warnings"])
    if mt.retention_action == "archive" and mt.retention and not settings.archive_bucket:
        warnings.append("retention action is archive but PARTMAN_ARCHIVE_BUCKET is not set here; "
                        "maintain will refuse to remove partitions until it is.")
    if getattr(args, "json", False):
        doc = {"table": mt.qualified, "column": mt.column_name, "key_type": mt.key_type, "interval": mt.interval,
               "timezone": mt.timezone, "premake": mt.premake, "retention": mt.retention,
               "retention_action": mt.retention_action, "retention_schema": mt.retention_schema,
               **found, "warnings": warnings, "message": message}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(message)
    for w in warnings:
        sys.stderr.write(f"partman: warning: {w}\n")
    return 0


def cli_unregister(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        qn = unregister(conn, settings, args.table)
    print(f"unregistered {qn}: partman no longer maintains it (no data was changed)")
    return 0
