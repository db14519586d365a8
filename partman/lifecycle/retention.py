"""Retention: a partition is due when its whole range is older than the retention
(`upper <= now() - retention`), judged from the catalog bounds, never from names. The current
and future partitions are never touched; a partition under legal hold is never removed.
Every removal appends a record (bounds, rows, id range, last row = chain anchor, archive)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .. import archive, catalog, failpoints, intervals, log
from ..catalog import ManagedTable
from ..db import with_lock_retry
from ..errors import LockTimeoutGaveUp, PartmanError
from ..partitions import Partition, list_partitions
from ..settings import Settings
from . import aware, lock_hold, parent_of
from .default_rows import NotLeader
from .premake import ddl_attempts


def holds(conn: psycopg.Connection, settings: Settings, schema: str) -> dict[str, dict[str, Any]]:
    if not catalog.exists(conn, settings):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT partition_name, reason, held_by, held_at FROM {} WHERE schema_name = %s").format(
            catalog.ident(settings, "hold")), (schema,)).fetchall()
    return {r[0]: {"reason": r[1], "held_by": r[2], "held_at": r[3]} for r in rows}


def _due_partitions(conn: psycopg.Connection, mt: ManagedTable) -> list[Partition]:
    if not mt.retention:
        return []
    tz = intervals.zone(mt.timezone)
    cutoff, now = conn.execute("SELECT now() - %s::interval, now()", (mt.retention,)).fetchone()
    return [p for p in list_partitions(conn, parent_of(mt), mt.key_type)
            if not p.is_default and intervals.past_retention(p.upper, cutoff, now, mt.interval, tz)]


def due(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> list[dict[str, Any]]:
    """Partitions retention would remove now: [{partition, lower, upper, action, held, hold}]."""
    held = holds(conn, settings, mt.schema_name)
    return [
        {
            "partition": p.name,
            "schema": p.schema,
            "lower": p.lower,
            "upper": p.upper,
            "action": mt.retention_action,
            "held": p.name in held,
            "hold": held.get(p.name),
        }
        for p in _due_partitions(conn, mt)
    ]


def _append_removal(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, part: Partition, action: str,
                    info: dict[str, Any], arch: archive.ArchiveResult | None) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (schema_name, table_name, partition_name, lower_bound, upper_bound, row_count, min_id, "
            "max_id, last_row, action, archive_uri, archive_sha256, archive_bytes, removed_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(catalog.ident(settings, "removal")),
        (
            mt.schema_name, mt.table_name, part.name,
            intervals.literal(aware(part.lower, intervals.zone(mt.timezone)), mt.key_type) if part.lower is not None else None,
            intervals.literal(aware(part.upper, intervals.zone(mt.timezone)), mt.key_type) if part.upper is not None else None,
            info["row_count"], info["min_id"], info["max_id"],
            json.dumps(info["last_row"]) if info["last_row"] is not None else None,
            action,
            arch.uri if arch else None, arch.sha256 if arch else None, arch.bytes if arch else None,
            settings.instance_name,
        ),
    )


def _held(conn: psycopg.Connection, settings: Settings, part: Partition) -> bool:
    return conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE schema_name = %s AND partition_name = %s)").format(
            catalog.ident(settings, "hold")), (part.schema, part.name)).fetchone()[0]


class Held(Exception):
    pass


class _RowsChanged(Exception):
    """Rows were written to a partition after its verified upload (seen under its lock)."""


def remove(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, part: Partition,
           leader_check: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Apply the table's retention action to one due partition. Raises on failure (the
    partition stays); returns what was done."""
    action = mt.retention_action
    parent = parent_of(mt)
    arch: archive.ArchiveResult | None = None
    if action == "archive":
        arch = archive.archive_partition(conn, settings, mt, part)
    if leader_check is not None and not leader_check():
        raise NotLeader()
    target_schema = mt.retention_schema or settings.retention_schema or None

    def txn(c: psycopg.Connection) -> dict[str, Any]:
        lock_hold(c, part.schema, part.name)
        if _held(c, settings, part):
            raise Held()
        # writers to this (old) partition wait; the parent is locked only by the DETACH below
        c.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(part.qualified.ident()))
        info = archive.describe(c, mt, part)
        if arch is not None and (info["row_count"], info["max_id"]) != (arch.row_count, arch.manifest.get("max_id")):
            # (marked to upload again by the caller: here it would roll back with this transaction)
            raise _RowsChanged(
                f"{part.qualified} has {info['row_count']} rows but its verified archive has {arch.row_count}: rows "
                "were written after the upload. The partition was kept; the next pass archives it again."
            )
        failpoints.hit(f"{'archive' if arch else 'retention'}.detach")
        c.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident(), part.qualified.ident()))
        if action in ("drop", "archive"):
            failpoints.hit(f"{'archive' if arch else 'retention'}.drop")
            c.execute(sql.SQL("DROP TABLE {}").format(part.qualified.ident()))
        elif target_schema and target_schema != part.schema:
            c.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)))
            c.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(part.qualified.ident(), sql.Identifier(target_schema)))
        _append_removal(c, settings, mt, part, action, info, arch)
        if arch is not None:
            archive.mark_removed(c, settings, part.schema, part.name)
        return info

    try:
        info = with_lock_retry(conn, settings, f"removing {part.qualified} ({action})", txn,
                               attempts=ddl_attempts(settings), tables=[part.qualified],
                               partitions_of=[parent])
    except Held:
        return {"partition": part.name, "action": "held", "removed": False}
    except _RowsChanged as exc:
        archive.upload_again(conn, settings, part.schema, part.name)  # the next pass, under the same key
        raise archive.ArchiveError(str(exc)) from None
    log.get().info("partition_removed", table=mt.qualified, partition=part.name, action=action,
                   rows=info["row_count"], uri=arch.uri if arch else None)
    out = {"partition": part.name, "action": action, "removed": True, "rows": info["row_count"]}
    if arch is not None:
        out.update(uri=arch.uri, sha256=arch.sha256, bytes=arch.bytes)
    if action == "detach" and target_schema:
        out["moved_to"] = target_schema
    return out


def apply(conn: psycopg.Connection, settings: Settings, mt: ManagedTable,
          leader_check: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Remove every due, unheld partition. Keeps going after a failure; returns
    {"removed": [...], "held": [...], "errors": [...]}."""
    result: dict[str, Any] = {"removed": [], "held": [], "errors": []}
    held = holds(conn, settings, mt.schema_name)
    for part in _due_partitions(conn, mt):
        if part.name in held:
            result["held"].append(part.name)
            continue
        if leader_check is not None and not leader_check():
            raise NotLeader()
        try:
            r = remove(conn, settings, mt, part, leader_check)
        except LockTimeoutGaveUp:
            raise  # the table is blocked: the caller skips it and reports it
        except (PartmanError, failpoints.FailpointError, psycopg.Error) as exc:
            if isinstance(exc, psycopg.Error) and conn.closed:
                raise
            msg = " ".join(str(exc).split())
            log.get().warning("retention_failed", table=mt.qualified, partition=part.name, error=msg)
            result["errors"].append({"partition": part.name, "error": msg})
            continue
        if r["removed"]:
            result["removed"].append(r)
        else:
            result["held"].append(part.name)
    return result
