"""Materialized views that read the converted table, rebuilt after the swap rather than inside it.

A materialized view is bound to the table's OID, so after the swap it still reads `<table>_old`
and must be built again from its query, which for a summary of the 44M-row ledger takes as long
as reading it. Inside the swap that would hold every writer behind the table's ACCESS EXCLUSIVE
lock for that long. Instead the swap records each one's statements in the conversion's options
(pending), and after it (rebuild, before the verification; a resumed run does it too) partman
builds a new one under another name in the work schema, reading the partitioned table, while
the old one keeps answering its readers, then swaps them in a short transaction that locks only
the materialized view. Its data is the query's result at that moment, as after a REFRESH."""

from __future__ import annotations

from typing import Any

import psycopg

from .. import failpoints, log
from ..db import QualifiedName, with_lock_retry
from ..settings import Settings
from . import ddl


def pending(conn: psycopg.Connection, model: Any, work_schema: str) -> list[dict[str, Any]]:
    """For the conversion's options, in the swap's transaction: each materialized view's name
    and the SQL text of its build and switch (ddl.matview_rebuild)."""
    out = []
    for i, v in enumerate(mv for mv in model.views if mv.materialized):
        build, switch = ddl.matview_rebuild(v, QualifiedName(work_schema, f"partman_matview_{i}"))
        out.append({"name": [v.name.schema, v.name.name],
                    "build": [s.as_string(conn) for s in build], "switch": [s.as_string(conn) for s in switch]})
    return out


def rebuild(conn: psycopg.Connection, settings: Settings, table: QualifiedName, items: list[dict[str, Any]],
            *, lock_timeout_ms: int | None = None) -> int:
    """Build and switch each pending materialized view that still reads another table than
    `table` (the old one); one already switched (a resumed run) or dropped meanwhile is left
    alone. Returns how many were rebuilt."""
    logger = log.get().bind(table=str(table))
    done = 0
    for item in items:
        name = QualifiedName(*item["name"])
        state = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid "
            "               WHERE d.classid = 'pg_rewrite'::regclass AND rw.ev_class = c.oid "
            "                 AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass) "
            "FROM pg_class c WHERE c.oid = to_regclass(%s) AND c.relkind = 'm'",
            (table.literal, name.literal),
        ).fetchone()
        if state is None:
            logger.warning("materialized_view_gone", view=str(name))
            continue
        if state[0]:
            continue  # switched by an earlier run
        logger.info("materialized_view_building", view=str(name))
        with conn.transaction():
            for stmt in item["build"]:
                conn.execute(stmt)
        failpoints.hit("convert.matview.built")

        def switch(c: psycopg.Connection, statements: list[str] = item["switch"]) -> None:
            for stmt in statements:
                c.execute(stmt)

        with_lock_retry(conn, settings, f"replacing the materialized view {name}", switch,
                        lock_timeout_ms=lock_timeout_ms)
        logger.info("materialized_view_rebuilt", view=str(name))
        done += 1
    return done
