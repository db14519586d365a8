"""Autovacuum in the way of partman's short lock_timeout.

An autovacuum worker holds SHARE UPDATE EXCLUSIVE on the table it vacuums, for minutes on a
large table. The server cancels it only once a conflicting lock request has waited
`deadlock_timeout` (1 s by default), and never an anti-wraparound one; a request that gives up
after partman's lock_timeout (500 ms by default) never waits that long, so every retry fails
while the worker goes on.

Before each locking attempt on an application's table (and after each timed-out one), partman
looks for a VACUUM or ANALYZE holding a lock on that table or one of its partitions:

- an ordinary autovacuum is cancelled with `pg_cancel_backend()`, what the server itself would do
  a second later (needs superuser, or `pg_signal_autovacuum_worker` on PostgreSQL 18);
- without that privilege, the next attempt waits `deadlock_timeout` + 250 ms, once, so the server
  cancels it (writers queued behind partman wait that long, once);
- an anti-wraparound autovacuum or someone's manual VACUUM is left alone: partman retries
  as usual and says who holds the table when it gives up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pgerrors

from . import log

if TYPE_CHECKING:
    from .db import QualifiedName

PATIENCE_MARGIN_MS = 250
MAX_PATIENT_WAIT_MS = 10_000  # beyond this deadlock_timeout, waiting it out would stall writers too long

# Who runs a VACUUM or ANALYZE holding a lock on one of the tables (a partitioned one with all its
# partitions: LOCK TABLE and most DDL recurse), or on the default partition of a parent whose set
# of partitions changes (CREATE ... PARTITION OF, ATTACH, DETACH lock it, not the siblings). A role
# without pg_read_all_stats sees the pid in pg_stat_progress_* and pg_locks, but not the
# activity row: `kind` is then NULL (unknown).
_HOLDERS = """
WITH rels AS (
    SELECT r::oid AS relid FROM unnest(%(tables)s::regclass[]) r
    UNION SELECT t.relid FROM unnest(%(tables)s::regclass[]) r, pg_partition_tree(r) t
    UNION SELECT partdefid FROM pg_partitioned_table
          WHERE partrelid = ANY (%(parents)s::regclass[]) AND partdefid <> 0
), maint AS (
    SELECT pid FROM pg_stat_progress_vacuum UNION SELECT pid FROM pg_stat_progress_analyze
)
SELECT DISTINCT ON (l.pid) l.pid, format('%%I.%%I', n.nspname, c.relname) AS relation,
       CASE WHEN a.backend_type = 'autovacuum worker'
                 THEN CASE WHEN a.query LIKE '%%to prevent wraparound%%' THEN 'wraparound' ELSE 'autovacuum' END
            WHEN a.backend_type IS NOT NULL THEN 'manual' END AS kind
FROM pg_locks l
JOIN maint m ON m.pid = l.pid
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation IN (SELECT relid FROM rels)
ORDER BY l.pid, c.relkind <> 'p', l.relation
"""


@dataclass(frozen=True)
class Holder:
    pid: int
    relation: str
    kind: str | None  # 'autovacuum', 'wraparound', 'manual', None: not visible to this role

    def describe(self) -> str:
        what = {"autovacuum": "an autovacuum", "wraparound": "an anti-wraparound autovacuum",
                "manual": "a manual VACUUM/ANALYZE"}.get(self.kind or "", "a VACUUM/ANALYZE")
        return f"{what} of {self.relation} (pid {self.pid})"


def holders(conn: psycopg.Connection, tables: Sequence[QualifiedName],
            parents: Sequence[QualifiedName] = ()) -> list[Holder]:
    rows = conn.execute(_HOLDERS, {"tables": [t.literal for t in tables],
                                   "parents": [t.literal for t in parents]}).fetchall()
    return [Holder(*r) for r in rows]


def deadlock_timeout_ms(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'").fetchone()[0])


@dataclass
class Clearance:
    """What one with_lock_retry call learnt about vacuums in its way."""

    tables: Sequence[QualifiedName]
    parents: Sequence[QualifiedName] = ()
    waited_out: bool = False  # the one patient attempt has been used
    blocking: list[Holder] | None = None  # vacuums last seen holding the tables and left running

    def before_attempt(self, conn: psycopg.Connection, what: str, timeout_ms: int) -> int:
        """Cancel what may be cancelled; return the lock_timeout for the coming attempt."""
        if not self.tables and not self.parents:
            return timeout_ms
        left = cancel(conn, what, self.tables, self.parents)
        self.blocking = left
        if not left:
            return timeout_ms
        # A worker the server would cancel itself (ordinary autovacuum, or one we cannot tell
        # apart) is waited out once, past deadlock_timeout.
        cancellable = [h for h in left if h.kind in ("autovacuum", None)]
        if cancellable and not self.waited_out:
            patient = deadlock_timeout_ms(conn) + PATIENCE_MARGIN_MS
            if timeout_ms < patient <= MAX_PATIENT_WAIT_MS:
                self.waited_out = True
                log.get().warning(
                    "waiting_out_autovacuum", what=what, holder=cancellable[0].describe(), lock_timeout_ms=patient,
                    hint="partman may not cancel it; waiting past deadlock_timeout lets the server cancel it "
                         "(writers wait this long, once)",
                )
                return patient
        return timeout_ms


def cancel(conn: psycopg.Connection, what: str, tables: Sequence[QualifiedName],
           parents: Sequence[QualifiedName] = ()) -> list[Holder]:
    """Cancel the ordinary autovacuums holding these tables, where this role may; return the
    vacuums left running."""
    return [h for h in holders(conn, tables, parents) if not (h.kind == "autovacuum" and _cancel(conn, h, what))]


def _cancel(conn: psycopg.Connection, h: Holder, what: str) -> bool:
    try:
        with conn.transaction():  # a savepoint when the caller has a transaction open
            done = bool(conn.execute("SELECT pg_cancel_backend(%s)", (h.pid,)).fetchone()[0])
    except pgerrors.InsufficientPrivilege:
        return False
    if done:
        log.get().info("autovacuum_cancelled", what=what, holder=h.describe(),
                       hint="the server would cancel it too; autovacuum comes back to the table later")
    return done
