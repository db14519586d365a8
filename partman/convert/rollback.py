"""When a conversion fails: before its swap it is rolled back (the capture trigger off the live
table, the work schema dropped, the attempt recorded as failed: one transaction), after it both
tables are kept and the same command finishes the job. What the user is told in each case."""

from __future__ import annotations

import psycopg

from .. import catalog, db, failpoints, log
from ..db import QualifiedName, with_lock_retry
from ..errors import PartmanError, sentences
from ..settings import Settings
from . import capture
from .swap import AFTER_SWAP, CONVERT_TRIGGER, drop_work_schema, relation_exists


def remove_work(conn: psycopg.Connection, settings: Settings, table: QualifiedName, work_schema: str, cid: int,
                error: str) -> None:
    """Undo a conversion before its swap: the capture trigger off the live table, the work schema
    (shadow, partitions, change log) dropped, the attempt recorded as failed with `error`. All in
    one transaction: a run killed half way must not leave a conversion that a rerun would resume
    without its trigger (writes since then never reach the new table, deletes come back)."""
    failpoints.hit("convert.rollback.before_trigger")

    def undo(c: psycopg.Connection) -> None:
        if relation_exists(c, table) and capture.trigger_exists(c, CONVERT_TRIGGER, table):
            c.execute(capture.drop_trigger(CONVERT_TRIGGER, table))
        failpoints.hit("convert.rollback.after_trigger")
        c.execute(drop_work_schema(work_schema))
        catalog.update_conversion(c, settings, cid, status="failed", error=error[:2000])

    # keep trying longer than a swap would: a long transaction must end before the table is clean
    with_lock_retry(conn, settings, f"removing the change-capture trigger from {table}", undo,
                    attempts=max(settings.lock_retries, 40), tables=[table])


def connection_lost(conn: psycopg.Connection) -> bool:
    return conn.closed or conn.broken


def reason(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        diag = exc.diag.message_primary if exc.diag is not None else None
        return f"PostgreSQL error: {sentences(diag or str(exc))}"
    return str(exc)


def after_swap_error(exc: psycopg.Error, qn: QualifiedName, old: QualifiedName) -> PartmanError:
    return PartmanError(
        f"{reason(exc)} This came after the swap: {qn} is the partitioned table and in use, the original is kept "
        f"as {old}, no row is lost. Fix the cause and run the same command again: it finishes what is left "
        "(materialized views, verification)."
    )


def handle_failure(conn: psycopg.Connection, settings: Settings, table: QualifiedName, old: QualifiedName,
                   work_schema: str, cid: int, exc: BaseException) -> None:
    """A conversion's phases raised `exc`: roll it back if it has not swapped, and raise what the
    user is told (a PartmanError), or `exc` itself when there is nothing to add. Killed or
    disconnected, the recorded state stays as it is: the next run continues."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    if connection_lost(conn):
        if isinstance(exc, psycopg.Error):
            raise lost_connection(settings, table, work_schema, exc) from None
        raise exc
    outcome = _rollback(conn, settings, table, work_schema, cid, exc)
    if not isinstance(exc, (PartmanError, psycopg.Error)):
        raise exc
    if outcome == "rolled back":
        raise PartmanError(
            f"{reason(exc)} The conversion was rolled back: {table} is as it was, and partman's work schema is "
            "gone; fix the cause and run the command again."
        ) from None
    if outcome != "after the swap":
        raise PartmanError(
            f"{reason(exc)} Rolling the conversion back did not finish either ({outcome.rstrip('.')}): partman's "
            f"change-capture trigger {CONVERT_TRIGGER} is still on {table} and records its writes in partman's work "
            f"schema {work_schema}. Once the sessions holding {table} are done, run the same command again to resume "
            f"the conversion, or `partman revert {table.arg}` to abandon it, which removes them."
        ) from None
    if isinstance(exc, psycopg.Error) and _swapped(conn, settings, table):
        raise after_swap_error(exc, table, old) from None
    raise exc


def lost_connection(settings: Settings, table: QualifiedName, work_schema: str | None, exc: psycopg.Error) -> PartmanError:
    """What the user is told when partman's connection was cut (a terminated backend, a failover,
    a network cut): the conversion keeps its state, as a killed one does, since nothing can be
    cleaned up without a connection and the copy may have taken hours. A new connection, if the
    server answers, tells which side of the swap it stopped on."""
    phase = None
    try:
        with db.connect(settings, "partman convert") as c:
            running = catalog.running_conversion(c, settings, table.schema, table.name)
            phase = running["phase"] if running else None
    except Exception:  # noqa: BLE001 - the server may be down still: say what is known
        pass
    lost = f"The connection to PostgreSQL was lost ({reason(exc).removeprefix('PostgreSQL error: ').rstrip('.')})"
    if phase in AFTER_SWAP:
        return PartmanError(
            f"{lost} after {table} was swapped, in the conversion's {phase} phase. {table} is partitioned and in use; "
            f"run the same command again to finish the conversion.")
    if phase is not None:
        return PartmanError(
            f"{lost} in the conversion's {phase} phase, before its swap: {table} is as it was, except that partman's "
            f"change-capture trigger {CONVERT_TRIGGER} stays on it and records its writes in partman's work schema "
            f"{work_schema}. Run the same command again to resume the conversion where it stopped, or "
            f"`partman revert {table.arg}` to abandon it (which removes the trigger and the work schema).")
    return PartmanError(
        f"{lost}, and partman could not reconnect to see where the conversion stopped. The conversion keeps its "
        f"recorded state: once the server answers, run the same command again to resume it (`partman status "
        f"{table.arg}` shows its phase), or `partman revert {table.arg}` to abandon it.")


def _rollback(conn: psycopg.Connection, settings: Settings, table: QualifiedName, work_schema: str, cid: int,
              exc: BaseException) -> str:
    """Before the swap: remove the capture trigger and the work schema, record the failure.
    Returns "rolled back", "after the swap" (both tables are kept; the rerun re-verifies), or
    why cleaning up failed."""
    running = catalog.running_conversion(conn, settings, table.schema, table.name)
    if running and running["phase"] in AFTER_SWAP:
        return "after the swap"
    try:
        remove_work(conn, settings, table, work_schema, cid, log.redact(f"{type(exc).__name__}: {exc}"))
        return "rolled back"
    except Exception as cleanup_error:  # noqa: BLE001 - report both, keep the first
        log.get().error("rollback_incomplete", table=str(table), error=str(cleanup_error),
                        advice="run the same convert command again to resume, or partman revert to abandon it")
        return " ".join(str(cleanup_error).split()) or type(cleanup_error).__name__


def _swapped(conn: psycopg.Connection, settings: Settings, qn: QualifiedName) -> bool:
    try:
        running = catalog.running_conversion(conn, settings, qn.schema, qn.name)
    except psycopg.Error:
        return False
    return bool(running and running["phase"] in AFTER_SWAP)
