"""Connections, identifiers, lock_timeout retries and advisory locks: everything that every
command needs from the database layer."""

from __future__ import annotations

import random
import selectors
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from . import autovacuum, log
from .errors import LockTimeoutGaveUp, PartmanError, UsageError, sentences
from .settings import Settings

T = TypeVar("T")
MIN_SERVER_VERSION = 140000


@contextmanager
def pipeline(conn: psycopg.Connection) -> Iterator[None]:
    """psycopg's pipeline mode: the statements sent inside the block travel together, one round
    trip for all of them, where each would wait for its own (~1 ms each to a server in another
    availability zone; it counts under a lock the application waits for). A cursor's rowcount
    is -1 until the block's end, where an error raises; a row fetched inside it sends what is
    queued and waits for it (one round trip so far), and a block nested inside ends with one.
    Where libpq lacks pipeline mode (before 14; the binary wheels have it) the statements run one
    by one, with the same results.

    A pipeline that finds its session ended reports only "server closed the connection
    unexpectedly", not the server's reason. So when the server has sent something while partman
    sat in its transaction (its socket is readable: most likely the session was ended, by
    pg_terminate_backend or a shutdown, with the reason on its way), one plain statement goes
    first and raises that reason; otherwise this costs a poll of the socket and no round trip."""
    if not psycopg.Pipeline.is_supported():
        yield
        return
    if not conn.closed and _readable(conn):
        conn.execute("SELECT 1")
    with conn.pipeline():
        yield


def _readable(conn: psycopg.Connection) -> bool:
    """Whether the server has sent something not read yet (a poll that does not wait)."""
    with selectors.DefaultSelector() as poll:
        poll.register(conn.fileno(), selectors.EVENT_READ)
        return bool(poll.select(0))


@dataclass(frozen=True)
class QualifiedName:
    schema: str
    name: str

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def literal(self) -> str:
        """The name as regclass text accepts it (quoted as needed)."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def arg(self) -> str:
        """The name as a partman command line takes it, for advice in messages (`public."odd name"`,
        shell-quoted when needed)."""
        return shlex.quote(self.literal)


def quote_ident(name: str) -> str:
    if name.isidentifier() and name == name.lower() and name.isascii():
        return name
    return '"' + name.replace('"', '""') + '"'


def _one_line(exc: BaseException) -> str:
    """libpq's message as one paragraph of sentences (ending with its stop), without any password."""
    return log.redact(sentences(str(exc)))


DSN_FORMS = ("Use a libpq URI, postgresql://user@host:5432/db with the password after the user name and a colon, "
             "its special characters (and the user name's) percent-encoded: '@' as %40, a space as %20, '/' as %2F, "
             "'%' as %25; or a key=value string (host=... dbname=..., a value with blanks in single quotes: 'a b').")


def check_dsn(dsn: str) -> None:
    """A connection string libpq cannot parse, or would misread, is a usage error, reported
    before any work and without its password."""
    log.add_dsn_secret(dsn)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise UsageError(
            f"The connection string given by --dsn / PARTMAN_DATABASE_URL is not valid: {_one_line(exc)} {DSN_FORMS}"
        ) from None
    authority = dsn.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0] if "://" in dsn else ""
    if authority.count("@") > 1:  # libpq splits at the first '@' and reads the rest as the host
        raise UsageError(
            "The connection string given by --dsn / PARTMAN_DATABASE_URL has more than one '@' before its host: "
            f"libpq would take part of the user name or password for the host name. {DSN_FORMS}"
        )


def connect(settings: Settings, application_name: str = "partman", autocommit: bool = True) -> psycopg.Connection:
    """Open a connection with partman's session settings; turn failures into a clear error."""
    log.add_dsn_secret(settings.dsn)
    try:
        conn = psycopg.connect(
            settings.dsn,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=10,
        )
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise PartmanError(
            f"Could not connect to PostgreSQL: {_one_line(exc)} Check"
            " --dsn / PARTMAN_DATABASE_URL (or the PG* variables), that the server is running "
            "and that the user and password are right."
        ) from None
    if conn.info.server_version < MIN_SERVER_VERSION:
        version = conn.info.server_version
        conn.close()
        raise PartmanError(
            f"PostgreSQL {version // 10000} is too old: partman needs PostgreSQL 14 or newer "
            "(DETACH CONCURRENTLY, row triggers on partitioned tables). Upgrade the server first."
        )
    conn.execute(sql.SQL("SET TimeZone TO {}").format(sql.Literal(settings.timezone)))
    # partman's statements are short by design (batches, DDL under lock_timeout); a low
    # statement_timeout or idle_in_transaction_session_timeout meant for the application must
    # not kill an index build or a swap half way
    conn.execute("SET statement_timeout = 0")
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    return conn


def flush_statistics(conn: psycopg.Connection) -> None:
    """Hand this session's pending activity statistics (the rows it inserted, table by table) to
    the server now. A session hands them over when it goes idle, at most once a second, or as it
    ends; rows a copy worker inserted in its last second would otherwise be counted after the
    ANALYZE that follows the copy: as rows changed since that ANALYZE (autovacuum analyzes the
    partition again) and once more in `n_live_tup`. PostgreSQL 15+: `pg_stat_force_next_flush()`
    makes the session flush as this statement ends, before the server answers. PostgreSQL 14's
    sessions send theirs to the statistics collector on their own schedule. Outside a transaction."""
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")


def resolve_table(conn: psycopg.Connection, name: str) -> QualifiedName:
    """`schema.table` or unqualified through search_path, as psql does. Raises when missing."""
    try:
        row = conn.execute(
            """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.oid = to_regclass(%s)""",
            (name,),
        ).fetchone()
    except pgerrors.InvalidName:  # not even a name: treat like a missing table
        row = None
    if row is None:
        # Accept an unquoted mixed-case name the way a user typed it.
        parts = split_name(name)
        if parts is not None:
            row = conn.execute(
                """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relname = %s AND (n.nspname = %s OR (%s::text IS NULL AND n.nspname = ANY(current_schemas(false))))
                   ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1""",
                (parts[1], parts[0], parts[0]),
            ).fetchone()
    if row is None:
        raise PartmanError(
            f"Table {name!r} does not exist (looked up as psql would, through search_path "
            f"{conn.execute('SHOW search_path').fetchone()[0]!r}). Check the name, or qualify it as schema.table."
        )
    return QualifiedName(row[0], row[1])


def column_arg(text: str) -> str:
    """A --column value: the column's name as it is, or quoted as in SQL ("Event TS")."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def split_name(name: str) -> tuple[str | None, str] | None:
    """Split `schema.table` (quotes allowed) into parts without touching the database."""
    parts: list[str] = []
    cur = ""
    i = 0
    quoted = False
    while i < len(name):
        ch = name[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(name) and name[i + 1] == '"':
                    cur += '"'
                    i += 1
                else:
                    quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None


def with_lock_retry(
    conn: psycopg.Connection,
    settings: Settings,
    what: str,
    fn: Callable[[psycopg.Connection], T],
    *,
    attempts: int | None = None,
    lock_timeout_ms: int | None = None,
    tables: Sequence[QualifiedName] = (),
    partitions_of: Sequence[QualifiedName] = (),
) -> T:
    """Run fn(conn) in its own transaction with a short lock_timeout, retrying with
    exponential backoff and jitter when the lock is not granted; give up cleanly.

    `tables`: the tables fn locks (a partitioned one with its partitions); `partitions_of`: parents
    whose partitions fn creates, attaches or detaches (their default partition gets locked). An
    autovacuum holding one of these is cancelled or waited out first (see partman.autovacuum)."""
    attempts = attempts or settings.lock_retries
    timeout = lock_timeout_ms or settings.lock_timeout_ms
    vacuums = autovacuum.Clearance(tables, partitions_of)
    delay = 0.05
    for attempt in range(1, attempts + 1):
        wait_ms = vacuums.before_attempt(conn, what, timeout)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_ms}ms")))
                return fn(conn)
        except pgerrors.LockNotAvailable:
            log.get().info("lock_wait", what=what, attempt=attempt, lock_timeout_ms=wait_ms)
            if attempt == attempts:
                break
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 2.0)
    held_by = ""
    if vacuums.blocking:
        held_by = (" At the last attempt " + "; ".join(h.describe() for h in vacuums.blocking) + " held it (partman "
                   "cancels an ordinary autovacuum when its role may, never an anti-wraparound one or a manual VACUUM).")
    raise LockTimeoutGaveUp(
        f"Gave up on {what}: the lock was not granted within {timeout} ms in {attempts} attempts, "
        "because other sessions hold the table (see pg_locks / pg_stat_activity for long transactions)."
        f"{held_by} Nothing was changed by this step; run the command again later, or raise --lock-timeout."
    )


QUIET_LOCK_TIMEOUT_MS = 30_000


def lock_private_first(conn: psycopg.Connection, tables: list[QualifiedName], lock_timeout_ms: int) -> None:
    """Inside a with_lock_retry attempt, before locking the application's table: take ACCESS
    EXCLUSIVE on tables only partman uses (a shadow and its partitions, a staging table, the old
    table). Waiting for them blocks no application session, so it may take up to
    QUIET_LOCK_TIMEOUT_MS: long enough for the server to cancel an autovacuum holding one (it does
    so once a lock request has waited deadlock_timeout, 1 s by default; freshly loaded partitions
    attract autovacuum; where partman's role may, it cancels an autovacuum at once). Then the
    attempt's own short lock_timeout applies again."""
    autovacuum.cancel(conn, "locking partman's own tables", tables)
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{QUIET_LOCK_TIMEOUT_MS}ms")))
    for t in tables:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t.ident()))
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))


def advisory_key(*parts: str) -> str:
    return "partman:" + ":".join(parts)


def try_advisory_lock(conn: psycopg.Connection, key: str) -> bool:
    """Session-level advisory lock on a string key (hashed by the server)."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0])


def advisory_unlock(conn: psycopg.Connection, key: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def advisory_holder(conn: psycopg.Connection, key: str) -> int | None:
    """The backend pid holding the session advisory lock on `key` in this database (None: free).
    Reads pg_locks, takes nothing."""
    row = conn.execute(
        """WITH k AS (SELECT hashtextextended(%s, 0) AS h)
           SELECT l.pid FROM pg_locks l, k
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid::text::bigint = ((k.h >> 32) & 4294967295) AND l.objid::text::bigint = (k.h & 4294967295)
           LIMIT 1""",
        (key,),
    ).fetchone()
    return row[0] if row else None


@contextmanager
def advisory_lock(conn: psycopg.Connection, key: str, busy_message: str, wait_s: float = 0) -> Iterator[None]:
    """Hold the session advisory lock on `key`, trying for up to `wait_s` seconds; busy_message
    when it stays taken."""
    deadline = time.monotonic() + wait_s
    while not try_advisory_lock(conn, key):
        if time.monotonic() >= deadline:
            raise PartmanError(busy_message)
        time.sleep(0.2)
    try:
        yield
    finally:
        if not conn.closed:
            try:
                advisory_unlock(conn, key)
            except psycopg.Error:
                pass


def is_standby(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])


def oid_of(conn: psycopg.Connection, table: QualifiedName) -> int:
    return conn.execute("SELECT %s::regclass::oid", (table.literal,)).fetchone()[0]


def fetch_dicts(conn: psycopg.Connection, query: Any, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()
