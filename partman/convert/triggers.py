"""Trigger enabled-states: read, and statements that restore them exactly (O, D, R, A)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ..db import QualifiedName

_ENABLE = {"O": "ENABLE TRIGGER", "D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


def states(conn: psycopg.Connection, table: QualifiedName, *, clones: bool = False) -> list[tuple[str, str]]:
    """(name, tgenabled) of the table's user triggers; with `clones`, also those a partition
    inherits from its parent."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "AND (tgparentid = 0 OR %s) ORDER BY tgname",
            (table.literal, clones),
        )
    ]


def disable_all(table: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(table.ident())


def restore(table: QualifiedName, saved: list[tuple[str, str]]) -> list[sql.Composed]:
    return [
        sql.SQL("ALTER TABLE {} {} {}").format(table.ident(), sql.SQL(_ENABLE[state]), sql.Identifier(name))
        for name, state in saved
    ]


@contextmanager
def off(conn: psycopg.Connection, table: QualifiedName) -> Iterator[None]:
    """The table's user triggers off for what the caller does inside its transaction, then
    restored exactly (a failure rolls the whole transaction back, their states with it)."""
    saved = states(conn, table)
    conn.execute(disable_all(table))
    yield
    for stmt in restore(table, saved):
        conn.execute(stmt)
