"""`partman register` / `unregister`: adopt an already range-partitioned table for maintenance,
or stop managing it (no data changes either way)."""

from __future__ import annotations

import argparse
import shlex
import sys

import psycopg

from .. import catalog, log
from ..catalog import ManagedTable
from ..db import QualifiedName, column_arg, connect, resolve_table
from ..errors import PartmanError, UsageError
from ..intervals import INTERVALS, zone
from ..partitions import key_column
from ..settings import Settings

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


def cli_register(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        mt = register(
            conn, settings, args.table, column=column_arg(args.column), interval=args.interval,
            premake=args.premake, retention=settings.retention, retention_action=settings.retention_action,
            retention_schema=getattr(args, "retention_schema", None), timezone=getattr(args, "timezone", None),
        )
    keep = f", retention {mt.retention} ({mt.retention_action})" if mt.retention else ", no retention"
    print(f"registered {mt.qualified}: {mt.interval} partitions on {mt.column_name} ({mt.timezone}), premake {mt.premake}{keep}")
    if mt.retention_action == "archive" and mt.retention and not settings.archive_bucket:
        sys.stderr.write("partman: warning: retention action is archive but PARTMAN_ARCHIVE_BUCKET is not set here; "
                         "maintain will refuse to remove partitions until it is.\n")
    return 0


def cli_unregister(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        qn = unregister(conn, settings, args.table)
    print(f"unregistered {qn}: partman no longer maintains it (no data was changed)")
    return 0
