"""Closing a conversion's revert window: drop `<table>_old` once `--drop-old-after` has passed
since a verified swap (the daemon calls this in each pass), and remove the revert capture once
the old table is gone (dropped here or by the DBA)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .. import catalog, failpoints, log
from ..catalog import ManagedTable
from ..db import QualifiedName, with_lock_retry
from ..settings import Settings
from . import capture
from .swap import REVERT_TRIGGER, drop_work_schema, relation_exists


def drop_old_if_due(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> str | None:
    """Returns the name of the table dropped, or None when nothing was due."""
    if not mt.old_table_name:
        return None
    table = QualifiedName(mt.schema_name, mt.table_name)
    old = QualifiedName(mt.schema_name, mt.old_table_name)
    dropped = None
    if relation_exists(conn, old):
        if mt.verified_at is None or mt.drop_old_after is None:
            return None
        due = conn.execute(
            "SELECT %s::timestamptz + %s::interval <= now()", (mt.verified_at, mt.drop_old_after)
        ).fetchone()[0]
        if not due:
            return None
        failpoints.hit("finish.before_drop_old")
        with_lock_retry(conn, settings, f"dropping {old}",
                        lambda c: c.execute(sql.SQL("DROP TABLE {}").format(old.ident())), attempts=3,
                        tables=[old])
        dropped = str(old)
        log.get().info("dropped_old_table", table=str(table), old=dropped)
    conv = catalog.latest_conversion(conn, settings, mt.schema_name, mt.table_name)
    work = (conv or {}).get("options", {}).get("work_schema")
    if relation_exists(conn, table) and capture.trigger_exists(conn, REVERT_TRIGGER, table):
        with_lock_retry(conn, settings, f"removing the revert capture from {table}",
                        lambda c: c.execute(capture.drop_trigger(REVERT_TRIGGER, table)), attempts=3,
                        tables=[table])
    with conn.transaction():
        if work:
            conn.execute(drop_work_schema(work))
        catalog.update_managed(conn, settings, mt.schema_name, mt.table_name, old_table_name=None)
    return dropped
