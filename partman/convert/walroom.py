"""Room in the WAL buffers for the copy's next batch, so no batch waits inside its transaction
for the disk.

Every row a batch inserts goes through the server's WAL buffers (`wal_buffers`, 8 MB with the
default 256 MB of shared buffers, at most 16 MB when left to PostgreSQL). When they are full of
WAL not yet written, an inserting backend must write some out itself, and for that it waits on
the WAL write lock, which the WAL writer holds for as long as its fsync takes: on a busy disk
(a checkpoint's fsyncs) a few hundred milliseconds, spent inside the batch's transaction.
Measured at 10M rows (bench/RESULTS.md): those waits were most of the copy transactions that ran
over 250 ms.

So before each batch the copy waits, outside any transaction, until at most GATE_SHARE of the
WAL buffers hold unwritten WAL (at most MAX_WAIT_S: WAL that other sessions write must not stall
the copy for good), and it keeps a batch's WAL, together with what the other copy worker writes
in the same time, within BATCH_SHARE of them: the bytes a row cost in the last batch, measured
from the server's WAL insert position, cap the next batch's rows. The waits then happen between
transactions, where they hold no lock and no snapshot.

The WAL positions are read with pg_current_wal_insert_lsn() and pg_current_wal_lsn(), the
write position as the backends see it (the server publishes it when a write, and the fsync that
goes with it, is done), which any role may call; a server that does not offer them (a standby
cannot run a conversion anyway) turns the room off and the copy runs as before. Measured (10M
rows, bench/RESULTS.md "Room in the WAL buffers"): waiting for a quarter of the buffers cost 7%
at 2M, waiting for half nothing measurable, and both kept every batch under 250 ms."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg.pq import TransactionStatus

GATE_SHARE = 0.5
BATCH_SHARE = 0.5
MAX_WAIT_S = 1.0
FIRST_POLL_S = 0.001
LAST_POLL_S = 0.01

WAL_BUFFERS = "SELECT pg_size_bytes(current_setting('wal_buffers'))"
POSITIONS = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_lsn())::bigint, "
    "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
)


def rows_within(budget: float, wal_bytes: int, rows: int) -> int | None:
    """The rows whose WAL fits in `budget` bytes, when `rows` rows took `wal_bytes` (None when
    there is nothing to go by)."""
    if rows <= 0 or wal_bytes <= 0:
        return None
    return max(1, int(rows * budget / wal_bytes))


@dataclass
class Room:
    """What the wait before a batch found: a cap on the batch's rows (None: none), the
    milliseconds waited, and the unwritten WAL bytes when it stopped waiting."""

    cap: int | None
    waited_ms: float
    unwritten: int


class WalRoom:
    """One per copying connection. `before_batch(rows)` is called before every batch with the
    rows the previous one inserted (0 before the first)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.buffers = 0
        self.position: int | None = None
        if conn.info.transaction_status != TransactionStatus.IDLE:
            return  # a statement that fails here would abort the caller's transaction
        try:
            self.buffers = int(conn.execute(WAL_BUFFERS).fetchone()[0])
            conn.execute(POSITIONS).fetchone()
        except (psycopg.ProgrammingError, psycopg.NotSupportedError, psycopg.errors.ObjectNotInPrerequisiteState):
            self.buffers = 0  # no WAL positions here (a role or a server without them): no room kept

    @property
    def enabled(self) -> bool:
        return self.buffers > 0

    def before_batch(self, rows: int) -> Room:
        if not self.enabled:
            return Room(None, 0.0, 0)
        t0 = time.perf_counter()
        poll = FIRST_POLL_S
        while True:
            unwritten, position = self.conn.execute(POSITIONS).fetchone()
            if unwritten <= self.buffers * GATE_SHARE or time.perf_counter() - t0 >= MAX_WAIT_S:
                break
            time.sleep(poll)
            poll = min(LAST_POLL_S, poll * 2)
        cap = None
        if self.position is not None:
            cap = rows_within(self.buffers * BATCH_SHARE, position - self.position, rows)
        self.position = position
        return Room(cap, (time.perf_counter() - t0) * 1000, unwritten)
