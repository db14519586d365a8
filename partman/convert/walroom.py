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
WAL buffers hold unwritten WAL, and it keeps a batch's WAL, together with what the other copy
worker writes in the same time, within BATCH_SHARE of them: the bytes a row cost in the last
batch, measured from the server's WAL insert position, cap the next batch's rows. The waits then
happen between transactions, where they hold no lock and no snapshot. Before the first batch
there is no such figure yet: the source's bytes per row (its size with its TOAST table, which
large values' rows write WAL into too, over PostgreSQL's row estimate, when it has one) stand in
for it.

A wait ends after MAX_WAIT_S whatever the buffers hold: when other sessions keep the WAL writer
behind (a bulk load beside the conversion), waiting would not give the copy room, only slow it
to a batch a second. After a wait that gave up, the copy does not wait again for BACKOFF_S (the
rows' cap still holds): such a server costs it at most MAX_WAIT_S in every BACKOFF_S.

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
BACKOFF_S = 10.0
FIRST_POLL_S = 0.001
LAST_POLL_S = 0.01

WAL_BUFFERS = "SELECT pg_size_bytes(current_setting('wal_buffers'))"
ROW_BYTES = (
    "SELECT CASE WHEN reltuples > 0 THEN (pg_table_size(oid) / reltuples)::bigint END "
    "FROM pg_class WHERE oid = %s::regclass"
)
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
    milliseconds waited, the unwritten WAL bytes when it stopped waiting, and whether it gave up
    (MAX_WAIT_S)."""

    cap: int | None
    waited_ms: float
    unwritten: int
    gave_up: bool = False


class WalRoom:
    """One per copying connection. `before_batch(rows)` is called before every batch with the
    rows the previous one inserted (0 before the first)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.buffers = 0
        self.position: int | None = None
        self.no_wait_until = 0.0
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

    def first_cap(self, source: str) -> int | None:
        """The rows of the source's first batch whose WAL should fit: its bytes per row, TOAST
        included (`source` as a regclass literal), when PostgreSQL has a row estimate."""
        if not self.enabled:
            return None
        per_row = self.conn.execute(ROW_BYTES, (source,)).fetchone()[0]
        return rows_within(self.buffers * BATCH_SHARE, per_row, 1) if per_row else None

    def queue_reading(self) -> psycopg.Cursor | None:
        """The WAL positions, read as the last statement of a batch's transaction (in its pipeline:
        no round trip of its own); its row goes to the next before_batch(). None when off."""
        return self.conn.execute(POSITIONS) if self.enabled else None

    def before_batch(self, rows: int, reading: tuple[int, int] | None = None) -> Room:
        """`reading`: the positions read at the end of the previous batch (queue_reading), when
        nothing but bookkeeping came between (no pause): a batch that finds room in it goes ahead
        without a query; otherwise the positions are read again until there is room."""
        if not self.enabled:
            return Room(None, 0.0, 0)
        t0 = time.perf_counter()
        poll = FIRST_POLL_S
        gave_up = False
        while True:
            unwritten, position = reading or self.conn.execute(POSITIONS).fetchone()
            reading = None
            if unwritten <= self.buffers * GATE_SHARE or t0 < self.no_wait_until:
                break
            if time.perf_counter() - t0 >= MAX_WAIT_S:
                gave_up = True
                self.no_wait_until = time.perf_counter() + BACKOFF_S
                break
            time.sleep(poll)
            poll = min(LAST_POLL_S, poll * 2)
        cap = None
        if self.position is not None:
            cap = rows_within(self.buffers * BATCH_SHARE, position - self.position, rows)
        self.position = position
        return Room(cap, (time.perf_counter() - t0) * 1000, unwritten, gave_up)
