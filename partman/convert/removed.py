"""What retention removed from the partitioned table since the swap comes out of `<table>_old`
before `partman revert` swaps it back.

Retention drops, detaches or archives a whole partition: no row changes, so the revert log has
nothing for it, and `<table>_old` still holds those rows. Each removal partman recorded for the
table since the swap names a range of the partition key; revert deletes the old table's rows in
that range with its triggers off (an append-only guard must not refuse the delete), one range per
transaction. A row the partitioned table holds under the same key and partition key value
(written there since, or in a restored partition attached back) is kept: it is live. Run again
after a crash, the ranges already done have nothing left to delete, and the kept rows are still
kept, so nothing is deleted twice nor a live row lost. A detached partition's table is left as it
is: its rows are outside the partitioned table, so they are not in the reverted one either."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog, failpoints, log
from ..db import QualifiedName
from ..settings import Settings
from . import triggers
from .capture import KeyColumn

KEY_TYPES = {"timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date"}


@dataclass(frozen=True)
class RemovedRange:
    partition: str
    action: str  # drop, detach or archive
    lower: str | None  # bounds as the removal record wrote them; None: unbounded
    upper: str | None
    removed_at: datetime

    def describe(self) -> str:
        return f"{self.partition} [{self.lower or 'MINVALUE'} .. {self.upper or 'MAXVALUE'}) ({self.action})"


def removed_since(conn: psycopg.Connection, settings: Settings, table: QualifiedName, since: Any) -> list[RemovedRange]:
    """The ranges retention removed from `table` at or after `since` (the swap), oldest first."""
    if not catalog.exists(conn, settings):
        return []
    rows = conn.execute(
        sql.SQL("SELECT partition_name, action, lower_bound, upper_bound, removed_at FROM {} "
                "WHERE schema_name = %s AND table_name = %s AND removed_at >= %s ORDER BY id").format(
            catalog.ident(settings, "removal")),
        (table.schema, table.name, since)).fetchall()
    return [RemovedRange(*r) for r in rows]


def delete_sql(old: QualifiedName, new: QualifiedName, column: str, key_type: str, key: list[KeyColumn],
               rng: RemovedRange) -> sql.Composed:
    """DELETE of the old table's rows in the range that the partitioned table does not hold
    (same key, same partition key value)."""
    col = sql.Identifier(column)
    cast = sql.SQL(KEY_TYPES[key_type])

    def in_range(alias: str) -> sql.Composable:
        conds = []
        if rng.lower is not None:
            conds.append(sql.SQL("{}.{} >= CAST({} AS {})").format(sql.Identifier(alias), col, sql.Literal(rng.lower), cast))
        if rng.upper is not None:
            conds.append(sql.SQL("{}.{} < CAST({} AS {})").format(sql.Identifier(alias), col, sql.Literal(rng.upper), cast))
        return sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")

    same = sql.SQL(" AND ").join(
        sql.SQL("n.{0} = o.{0}").format(sql.Identifier(c)) for c in dict.fromkeys([*(k.name for k in key), column]))
    # the range on n too, so the planner reads only the partitions that can hold it
    return sql.SQL("DELETE FROM {old} o WHERE {o_range} AND NOT EXISTS (SELECT 1 FROM {new} n WHERE {n_range} AND {same})").format(
        old=old.ident(), new=new.ident(), o_range=in_range("o"), n_range=in_range("n"), same=same)


def take_out(conn: psycopg.Connection, old: QualifiedName, new: QualifiedName, column: str, key_type: str,
             key: list[KeyColumn], ranges: list[RemovedRange]) -> list[dict[str, Any]]:
    """Delete each range's rows from the old table, one transaction each; the rows deleted per
    range (0 for one a killed earlier run already did)."""
    out = []
    for rng in ranges:
        with conn.transaction(), triggers.off(conn, old):
            n = conn.execute(delete_sql(old, new, column, key_type, key, rng)).rowcount
        out.append({"partition": rng.partition, "action": rng.action, "lower": rng.lower, "upper": rng.upper,
                    "removed_at": rng.removed_at, "rows": n})
        log.get().info("revert_removed_range", table=str(new), old=str(old), partition=rng.partition,
                       action=rng.action, rows=n)
        failpoints.hit("revert.after_removed_range")
    return out
