"""The partition lifecycle after conversion: registry, premake, the default partition,
retention (drop / detach / archive), legal holds, restore, and the maintenance pass."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from ..catalog import ManagedTable
from ..db import QualifiedName, advisory_key


def parent_of(mt: ManagedTable) -> QualifiedName:
    return QualifiedName(mt.schema_name, mt.table_name)


def table_lock_key(mt: ManagedTable) -> str:
    """The session advisory lock a maintenance pass holds while it works on this table."""
    return advisory_key("maintain", mt.schema_name, mt.table_name)


def aware(value: date | datetime | None, tz: ZoneInfo) -> datetime | None:
    """A bound as an aware datetime in the table's zone (naive timestamps are wall time there)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=tz) if value.tzinfo is None else value.astimezone(tz)
    return datetime(value.year, value.month, value.day, tzinfo=tz)


def server_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def overlaps(lo: datetime | None, hi: datetime | None, plo: datetime | None, phi: datetime | None) -> bool:
    """[lo, hi) and [plo, phi) intersect; None is -inf for a lower and +inf for an upper bound."""
    a = lo is None or phi is None or lo < phi
    b = plo is None or hi is None or plo < hi
    return a and b


def hold_lock_key(schema: str, partition: str) -> str:
    return f"partman:hold:{schema}.{partition}"


def lock_hold(conn: psycopg.Connection, schema: str, partition: str) -> None:
    """Transaction-level lock serialising a hold with a removal of the same partition."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (hold_lock_key(schema, partition),))


def relation_kind(conn: psycopg.Connection, qn: QualifiedName) -> str | None:
    row = conn.execute(
        """SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (qn.schema, qn.name),
    ).fetchone()
    return row[0] if row else None


def columns(conn: psycopg.Connection, qn: QualifiedName) -> list[dict[str, Any]]:
    """Live columns in attnum order: name, type, not_null, generated."""
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> ''
           FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (qn.literal,),
    ).fetchall()
    return [{"name": r[0], "type": r[1], "not_null": bool(r[2]), "generated": bool(r[3])} for r in rows]


def id_column(cols: list[dict[str, Any]]) -> str | None:
    names = [c["name"] for c in cols]
    return "id" if "id" in names else None
