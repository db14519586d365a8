"""`partman revert TABLE`: while `<table>_old` exists, put it back. Rows changed in the
partitioned table since the swap (recorded by the revert capture trigger) are replayed into the
old table with its triggers off (a hash chain must not be recomputed), in short rounds and a
final round inside one short swap transaction that also restores names (extended statistics'
too), views, sequence ownership, publications and the registration. The partitioned table is kept as
`<table>_partitioned`. What retention removed from the partitioned table since the swap (a
partition dropped, detached or archived: no row change, so not in the log) is first deleted from
the old table, range by range (removed.py), so those rows do not come back.

Before the swap there is nothing to put back: revert then abandons the interrupted conversion
(the capture trigger off the table, partman's work schema dropped), as a failed one would be."""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog, db, failpoints, log, naming
from ..catalog import ManagedTable
from ..db import QualifiedName, lock_private_first, with_lock_retry
from ..errors import PartmanError
from ..introspect import publications
from ..settings import Settings
from . import capture, ddl, removed, triggers
from .swap import (AFTER_SWAP, REVERT_TRIGGER, WorkNames, drop_work_schema, existing_relations, free_name,
                   hand_over_identity_names, index_names, relation_exists, rename_statistics, spare_names,
                   statistics_exists)

ROUND = 10_000
MAINTENANCE_WAIT_S = 30  # a pass over one table takes seconds: wait for it rather than fail


def cli_revert(settings: Settings, args: argparse.Namespace) -> int:
    from ..cli import confirm

    conn = db.connect(settings, "partman revert")
    try:
        qn = db.resolve_table(conn, args.table)
        running = catalog.running_conversion(conn, settings, qn.schema, qn.name) if catalog.exists(conn, settings) else None
        if running and running["phase"] not in AFTER_SWAP:
            return _abandon(conn, settings, qn, running, args)
        mt = catalog.get_managed(conn, settings, qn.schema, qn.name)
        conv = catalog.latest_conversion(conn, settings, qn.schema, qn.name)
        if mt is None and conv is not None and conv["status"] == "reverted":
            return _already_reverted(conn, settings, qn, conv)
        old = QualifiedName(qn.schema, mt.old_table_name) if mt and mt.old_table_name else None
        if old is None or conv is None or not relation_exists(conn, old):
            raise PartmanError(
                f"Cannot revert {qn}: it was not converted by partman, or its original table "
                f"{old or naming.old_name(qn.name)} no longer exists (revert is possible only while it does)."
            )
        work = WorkNames(conv["options"]["work_schema"])
        if not relation_exists(conn, work.revert_log):
            raise PartmanError(
                f"Cannot revert {qn}: partman's record of rows changed since the swap ({work.revert_log}) is missing."
            )
        for pub in publications(conn, db.oid_of(conn, old)):
            if pub.scope != "table":  # a publication of its schema or of all tables cannot let it go
                log.get().warning(
                    "revert_published", table=str(qn), publication=pub.name,
                    warning=f"publication {pub.name} publishes {old} ({'its schema' if pub.scope == 'schema' else 'all tables'}): "
                            f"the rows revert copies into it are published as changes to {old.name}, and a subscriber "
                            "without a table of that name stops replicating until it has one")
        gone = removed.removed_since(conn, settings, qn, _swapped_at(mt, conv))
        also = (f" Retention removed {len(gone)} partition(s) of it since the swap ("
                f"{', '.join(r.partition for r in gone)}): their rows are deleted from {old} first." if gone else "")
        if not confirm(f"Swap {qn} back to the original table {old}?{also}", args.yes):
            raise PartmanError("Revert cancelled at the prompt. Nothing was changed.")
        from ..lifecycle.default_rows import pending_moves
        from ..lifecycle.maintain import table_lock_key

        with db.advisory_lock(conn, db.advisory_key("convert", qn.schema, qn.name),
                              f"A `partman convert` or `revert` of {qn} is running. Wait for it to finish."), \
                db.advisory_lock(conn, table_lock_key(mt),
                                 f"A maintenance pass has been working on {qn} for {MAINTENANCE_WAIT_S} s. Run the "
                                 "revert again when it is done.", wait_s=MAINTENANCE_WAIT_S):
            staged = pending_moves(conn, mt)
            if staged:  # their rows are in neither the partitioned table nor, if written since the swap, the original
                raise PartmanError(
                    f"Cannot revert {qn} yet: a maintenance pass was stopped while moving rows out of its default "
                    f"partition, and they wait in {', '.join(staged)}. Run `partman maintain` to finish that move, "
                    "then the revert.")
            figures = revert(conn, settings, qn, old, work, conv, mt, lock_timeout_ms=settings.lock_timeout_ms)
        print(json.dumps(figures, default=str) if getattr(args, "json", False) else _summary(qn, figures))
        return 0
    finally:
        conn.close()


def _already_reverted(conn: psycopg.Connection, settings: Settings, qn: QualifiedName, conv: dict[str, Any]) -> int:
    """A revert run again after it swapped back: nothing to do but what a run killed after its
    swap left, partman's work schema (the change logs), dropped now."""
    work = conv["options"]["work_schema"]
    left = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (work,)).fetchone()[0]
    if left:
        with_lock_retry(conn, settings, f"dropping partman's work schema {work}",
                        lambda c: c.execute(drop_work_schema(work)))
        log.get().info("work_schema_dropped", table=str(qn), schema=work, note="left by an interrupted revert")
    print(f"{qn} is already reverted (at {conv['updated_at']:%Y-%m-%d %H:%M:%S%z}); nothing to do"
          + (f" but drop partman's work schema {work}, which an interrupted run left." if left else "."))
    return 0


def _swapped_at(mt: ManagedTable, conv: dict[str, Any]) -> Any:
    return mt.swapped_at or conv["started_at"]


def _summary(qn: QualifiedName, figures: dict[str, Any]) -> str:
    lines = [f"reverted {qn}: {figures['replayed']} row change(s) since the swap carried into the original table; "
             f"the partitioned table is kept as {figures['partitioned_table']}; swap lock held {figures['lock_ms']:.0f} ms"]
    for r in figures["removed_ranges"]:
        lines.append(f"  {r['rows']} row(s) of {r['partition']} [{r['lower'] or 'MINVALUE'} .. {r['upper'] or 'MAXVALUE'}) "
                     f"deleted from the original table: retention removed that partition ({r['action']}) "
                     f"at {r['removed_at']:%Y-%m-%d %H:%M:%S%z}")
    return "\n".join(lines)


def _replay_into_old(c: psycopg.Connection, work: WorkNames, new: QualifiedName, old: QualifiedName,
                     key: list[capture.KeyColumn], columns: list[str], overriding: bool, limit: int | None) -> int:
    with triggers.off(c, old):
        return capture.replay(c, work.revert_log, new, old, key, columns, overriding=overriding, limit=limit)


def _abandon(conn: psycopg.Connection, settings: Settings, qn: QualifiedName, running: dict[str, Any],
             args: argparse.Namespace) -> int:
    """An interrupted conversion before its swap: the original table is still the live one; take
    partman's capture trigger off it and drop the work schema."""
    from ..cli import confirm
    from .rollback import remove_work

    if not confirm(f"Abandon the interrupted conversion of {qn} (phase {running['phase']}, "
                   f"{running['rows_copied']:,} rows copied)? The table stays as it is.", args.yes):
        raise PartmanError("Revert cancelled at the prompt. Nothing was changed.")
    with db.advisory_lock(conn, db.advisory_key("convert", qn.schema, qn.name),
                          f"A `partman convert` of {qn} is running right now (phase {running['phase']}). Stop it "
                          "first; then revert abandons what it prepared, or the same convert command resumes it."):
        remove_work(conn, settings, qn, running["options"]["work_schema"], running["id"],
                    "abandoned by `partman revert` before the swap")
    log.get().info("conversion_abandoned", table=str(qn), phase=running["phase"], rows_copied=running["rows_copied"])
    print(f"abandoned the conversion of {qn} at its {running['phase']} phase: the capture trigger is off the table "
          "and partman's work schema is dropped; the table is as it was")
    return 0


def revert(conn: psycopg.Connection, settings: Settings, qn: QualifiedName, old: QualifiedName, work: WorkNames,
           conv: dict[str, Any], mt: ManagedTable, *, lock_timeout_ms: int) -> dict[str, Any]:
    from ..introspect import introspect

    import time

    old_model = introspect(conn, old)
    new_model = introspect(conn, qn)
    key = capture.copy_key(conn, old)
    columns = ddl.column_names(old_model)
    overriding = ddl.needs_overriding(old_model)
    # before the replay: a row written since into a removed range (live again) is then kept either way
    taken = removed.take_out(conn, old, qn, mt.column_name, mt.key_type, key,
                             removed.removed_since(conn, settings, qn, _swapped_at(mt, conv)))
    replayed = 0
    while True:  # rounds outside the lock
        with conn.transaction():
            n = _replay_into_old(conn, work, qn, old, key, columns, overriding, ROUND)
        replayed += n
        failpoints.hit("revert.after_round")
        if n < ROUND:
            break
    partitioned = QualifiedName(qn.schema, naming.partitioned_name(qn.name))
    renames: dict[str, str] = conv["options"].get("index_renames", {})
    stats: dict[str, Any] = {}

    def attempt(c: psycopg.Connection) -> None:
        lock_private_first(c, [old], lock_timeout_ms)
        c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(qn.ident()))
        locked = time.perf_counter()
        failpoints.hit("revert.swap.locked")
        stats["final"] = _replay_into_old(c, work, qn, old, key, columns, overriding, None)
        # the reads first, then the statements in pipelines (db.pipeline, as the convert's swap):
        # the application waits one round trip per block instead of one per statement
        original_names = set(renames.values())
        spares = spare_names(c, qn.schema, [n for n in index_names(c, qn) if n in original_names], "_partitioned",
                             reserved={partitioned.name})
        back = existing_relations(c, qn.schema, renames)  # the original's indexes under their _old names
        for schema, spare, original in conv["options"].get("statistics_renames", []):
            if statistics_exists(c, QualifiedName(schema, original)):  # the partitioned table's
                rename_statistics(c, QualifiedName(schema, original), free_name(
                    original, "_partitioned", lambda n, s=schema: statistics_exists(c, QualifiedName(s, n))))
            if statistics_exists(c, QualifiedName(schema, spare)):
                rename_statistics(c, QualifiedName(schema, spare), original)
        # the publications hand back, as they are now: the original left them in the swap (so what
        # was just copied into it is not published twice), unless an older partman swapped it
        kept = {p.name for p in publications(c, old_model.oid) if p.scope == "table"}
        published = [p for p in publications(c, new_model.oid) if p.scope == "table"]
        with db.pipeline(c):
            c.execute(capture.drop_trigger(REVERT_TRIGGER, qn))
            c.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(qn.ident(), sql.Identifier(partitioned.name)))
            for name, spare in spares.items():
                c.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(qn.schema, name), sql.Identifier(spare)))
            c.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(old.ident(), sql.Identifier(qn.name)))
            for renamed, original in renames.items():
                if renamed in back:
                    c.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(qn.schema, renamed), sql.Identifier(original)))
            for stmt in [*ddl.swap_sequences(new_model, qn), *ddl.swap_views(new_model)]:
                c.execute(stmt)
            for p in published:
                c.execute(ddl.leave_publication(p, partitioned))
                if p.name not in kept:
                    c.execute(ddl.join_publication(p, qn))
        hand_over_identity_names(c, new_model, partitioned, qn, "_partitioned", undoing="_old")
        with db.pipeline(c):
            catalog.delete_managed(c, settings, qn.schema, qn.name)  # (its answer unread: pipelined)
            catalog.update_conversion(c, settings, conv["id"], status="reverted", phase="reverted")
        failpoints.hit("revert.swap.before_commit")
        stats["locked"] = locked

    with_lock_retry(conn, settings, f"the revert swap of {qn}", attempt, lock_timeout_ms=lock_timeout_ms,
                    tables=[qn])
    lock_ms = (time.perf_counter() - stats["locked"]) * 1000
    failpoints.hit("revert.after_swap")  # a rerun drops the work schema (_already_reverted)
    with conn.transaction():
        conn.execute(drop_work_schema(work.schema))
    db.flush_statistics(conn)  # the rows carried back, counted before the ANALYZE, not after it
    conn.execute(sql.SQL("ANALYZE {}").format(qn.ident()))
    log.get().info("reverted", table=str(qn), replayed=replayed + stats["final"], lock_ms=round(lock_ms, 1))
    return {"table": str(qn), "replayed": replayed + stats["final"], "partitioned_table": str(partitioned),
            "lock_ms": lock_ms, "removed_ranges": taken}
