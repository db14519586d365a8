"""Legal holds: `partman hold PARTITION --reason TEXT` / `partman release PARTITION`.
Retention never removes a held partition. Every hold and release is recorded with who and when."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog
from ..db import QualifiedName, connect, split_name
from ..errors import PartmanError, UsageError
from ..settings import Settings
from . import lock_hold


def actor(conn: psycopg.Connection) -> str:
    user = conn.execute("SELECT current_user").fetchone()[0]
    try:
        os_user = getpass.getuser()
    except Exception:  # noqa: BLE001
        os_user = "?"
    return f"{user} (os user {os_user})"


def resolve_partition(conn: psycopg.Connection, settings: Settings, name: str) -> QualifiedName:
    """A partition name, schema-qualified or bare; a bare name is looked up among the
    partitions of partitioned tables (registered ones first) and must be unambiguous."""
    parts = split_name(name)
    if parts is None or not parts[1]:
        raise UsageError(f"{name!r} is not a partition name; give it as schema.partition or partition.")
    schema, rel = parts
    rows = conn.execute(
        """SELECT n.nspname, c.relname, c.relispartition FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = %s AND (%s::text IS NULL OR n.nspname = %s) AND c.relkind IN ('r', 'p')""",
        (rel, schema, schema),
    ).fetchall()
    partitions = [r for r in rows if r[2]]
    if len(partitions) == 1:
        return QualifiedName(partitions[0][0], partitions[0][1])
    if len(partitions) > 1:
        raise UsageError(
            f"Partition {rel!r} exists in several schemas ({', '.join(sorted(r[0] for r in partitions))}); "
            "qualify it as schema.partition."
        )
    if rows:
        raise PartmanError(f"{rows[0][0]}.{rows[0][1]} is not a partition of a partitioned table, so it cannot be held.")
    raise PartmanError(f"Partition {name!r} does not exist. Check the name with `partman status`.")


def hold(conn: psycopg.Connection, settings: Settings, partition: str, reason: str) -> dict[str, Any]:
    if not reason or not reason.strip():
        raise UsageError("--reason must say why the partition is held (for example a case or ticket number).")
    catalog.ensure(conn, settings)
    qn = resolve_partition(conn, settings, partition)
    who = actor(conn)
    with conn.transaction():
        lock_hold(conn, qn.schema, qn.name)
        existing = conn.execute(
            sql.SQL("SELECT reason, held_by, held_at FROM {} WHERE schema_name = %s AND partition_name = %s").format(
                catalog.ident(settings, "hold")), (qn.schema, qn.name)).fetchone()
        if existing is not None:
            if existing[0] == reason:  # the same hold again: nothing changes
                return {"partition": str(qn), "reason": reason, "held_by": existing[1]}
            # one hold per partition, so one release ends it: never let a second case replace the first unseen
            raise PartmanError(
                f"{qn} is already under legal hold for {existing[0]!r} (by {existing[1]} since {existing[2]:%Y-%m-%d}). "
                "A partition has one hold: to record another reason, release it and hold it again with both "
                "reasons in --reason (both steps are kept in the hold log)."
            )
        conn.execute(
            sql.SQL("INSERT INTO {} (schema_name, partition_name, reason, held_by) VALUES (%s, %s, %s, %s)").format(
                catalog.ident(settings, "hold")),
            (qn.schema, qn.name, reason, who))
        conn.execute(
            sql.SQL("INSERT INTO {} (schema_name, partition_name, event, reason, actor) VALUES (%s, %s, 'hold', %s, %s)").format(
                catalog.ident(settings, "hold_event")), (qn.schema, qn.name, reason, who))
    return {"partition": str(qn), "reason": reason, "held_by": who}


def release(conn: psycopg.Connection, settings: Settings, partition: str) -> dict[str, Any]:
    catalog.ensure(conn, settings)
    parts = split_name(partition)
    if parts is None or not parts[1]:
        raise UsageError(f"{partition!r} is not a partition name; give it as schema.partition or partition.")
    schema, rel = parts
    q = sql.SQL("SELECT schema_name, partition_name FROM {} WHERE partition_name = %s AND (%s::text IS NULL OR schema_name = %s)").format(
        catalog.ident(settings, "hold"))
    rows = conn.execute(q, (rel, schema, schema)).fetchall()
    if not rows:
        raise PartmanError(f"Partition {partition!r} is not under legal hold, so there is nothing to release.")
    if len(rows) > 1:
        raise UsageError(f"Holds on {rel!r} exist in several schemas; qualify it as schema.partition.")
    qn = QualifiedName(rows[0][0], rows[0][1])
    who = actor(conn)
    with conn.transaction():
        lock_hold(conn, qn.schema, qn.name)
        conn.execute(sql.SQL("DELETE FROM {} WHERE schema_name = %s AND partition_name = %s").format(
            catalog.ident(settings, "hold")), (qn.schema, qn.name))
        conn.execute(
            sql.SQL("INSERT INTO {} (schema_name, partition_name, event, actor) VALUES (%s, %s, 'release', %s)").format(
                catalog.ident(settings, "hold_event")), (qn.schema, qn.name, who))
    return {"partition": str(qn), "released_by": who}


def cli_hold(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        r = hold(conn, settings, args.partition, args.reason)
    print(f"held {r['partition']}: {r['reason']} (by {r['held_by']}); retention will not remove it")
    return 0


def cli_release(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        r = release(conn, settings, args.partition)
    print(f"released {r['partition']} (by {r['released_by']}); retention applies to it again")
    return 0
