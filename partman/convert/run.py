"""`partman convert`: the phase state machine. Each phase records itself in the catalog, so a
killed run resumes where it stopped; a session advisory lock keeps two runs of one table apart.

prepare (work schema, shadow, partitions, capture trigger) -> copy -> indexes (and foreign keys)
-> catchup -> swap -> (materialized views rebuilt) -> verify -> done. A failure before the swap
removes everything partman made (the original table is left as it was); a failure after it keeps
both tables and exits non-zero, and the same command finishes the job."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import catalog, db, failpoints, intervals, log, naming
from ..db import QualifiedName, with_lock_retry
from ..errors import PartmanError, UsageError
from ..partitions import key_cast
from ..settings import Settings
from . import capture, changes, ddl, matviews, plan as planning, render, replicas, rollback
from .copy import GENTLE_BATCH_MS, next_batch_size, run_copy
from .progress import Progress
from .swap import AFTER_SWAP, CONVERT_TRIGGER, WorkNames, drop_work_schema, relation_exists, swap
from .throttle import Throttle
from .verify import GENTLE_FIRST_RANGE, GENTLE_RANGE_MS, typed_columns, verify

CATCHUP_ROUND = 10_000
CATCHUP_DONE_BELOW = 1_000
CATCHUP_MAX_ROWS = 1_000_000  # then the swap (its final round replays what is left under the lock)
GENTLE_CATCHUP_FIRST = 1_000  # paced: the first round's log entries; later rounds aim at GENTLE_BATCH_MS


def options_from(settings: Settings, args: argparse.Namespace) -> planning.Options:
    return planning.Options(
        column=db.column_arg(args.column),
        interval=settings.interval,
        batch_size=settings.batch_size,
        sleep=settings.sleep,
        premake=settings.premake,
        retention=settings.retention,
        retention_action=settings.retention_action,
        lock_timeout_ms=settings.lock_timeout_ms,
        timezone=settings.timezone,
        drop_old_after=settings.drop_old_after,
        throttle=settings.throttle,
    )


def cli_convert(settings: Settings, args: argparse.Namespace) -> int:
    from ..cli import confirm

    opts = options_from(settings, args)
    conn = db.connect(settings, "partman convert")
    try:
        _check_durations(conn, opts)
        qn = db.resolve_table(conn, args.table)
        running = catalog.running_conversion(conn, settings, qn.schema, qn.name) if catalog.exists(conn, settings) else None
        if running and running["phase"] in ("verify", "analyze"):
            if args.dry_run:
                _say(args, f"{qn} is swapped; the conversion resumes at its {running['phase']} phase.",
                     table=str(qn), resumes_at=running["phase"])
                return 0
            with db.advisory_lock(conn, db.advisory_key("convert", qn.schema, qn.name),
                                  f"Another `partman convert` of {qn} is running. Wait for it to finish."):
                try:
                    return _finish(conn, settings, running)
                except psycopg.Error as exc:
                    if rollback.connection_lost(conn):
                        raise rollback.lost_connection(settings, qn, None, exc) from None
                    raise rollback.after_swap_error(exc, qn, QualifiedName(qn.schema, naming.old_name(qn.name))) from None
        if running:
            _check_resumable(qn, running, opts)
        p, model = make_plan(conn, settings, qn, opts)
        if p.refusals and not running and _already_converted(conn, settings, qn):
            last = catalog.latest_conversion(conn, settings, qn.schema, qn.name)
            mt = catalog.get_managed(conn, settings, qn.schema, qn.name)
            shape, kept = _registered_otherwise(mt, opts, args) if mt else ([], [])
            if shape:
                raise PartmanError(
                    f"{qn} is already converted, partitioned otherwise than this command asks: {'; '.join(shape)}. "
                    f"Converting again cannot change its partitions: `partman revert {qn.arg}` (while "
                    f"{naming.old_name(qn.name)} exists) and convert it afresh, or run the command with the "
                    "table's own options.")
            text = f"{qn} is already converted and registered; nothing to do."
            if kept:
                text += (f" Its registration stays as it is ({'; '.join(kept)}): `partman register {qn.arg} ...` "
                         "changes premake and retention.")
            _say(args, text, already_converted=True, **render.result_summary(last, mt))
            return 0
        if args.dry_run:
            resumes = {"phase": running["phase"], "rows_copied": running["rows_copied"]} if running else None
            if args.json:
                print(json.dumps({**render.plan_json(p, conn), "resumes_conversion": resumes}, indent=2, default=str))
            else:
                print(render.plan_text(p, conn))
                if resumes:
                    print(f"-- resumes the conversion in progress at its {resumes['phase']} phase "
                          f"({resumes['rows_copied']:,} rows copied)")
        if p.refusals:  # a refused dry-run fails as the conversion would, after showing why
            raise PartmanError(f"Cannot convert {qn}: " + " ".join(p.refusals))
        if args.dry_run:
            return 0
        for w in p.warnings:
            log.get().warning("plan_warning", table=str(qn), warning=w)
        for w in p.widened:
            log.get().warning("key_widened", table=str(qn), note=w)
        past = render.past_retention_note(p)
        if past:
            log.get().warning("past_retention", table=str(qn), note=past)
        if opts.retention and opts.retention_action == "archive" and not settings.archive_bucket:
            log.get().warning("archive_bucket_missing", table=str(qn),
                              note="retention action is archive but PARTMAN_ARCHIVE_BUCKET is not set here; "
                                   "maintain will refuse to remove partitions until it is set where it runs")
        if not running and not confirm(
            f"Convert {qn} into {len(p.partitions)} {opts.interval} partitions by {opts.column}?", args.yes,
            details=render.plan_summary(p),
        ):
            raise PartmanError("Conversion cancelled at the prompt. Nothing was changed.")
        return execute(conn, settings, p, model, running, json_out=args.json)
    finally:
        conn.close()


RESUME_SHAPE = ("column", "interval", "timezone", "premake")  # prepared in the shadow: a resume must keep them


def _check_resumable(qn: QualifiedName, running: dict[str, Any], opts: planning.Options) -> None:
    """A conversion in progress resumes with the partitions it prepared: other ones are refused
    now rather than failing after the copy. Pace and retention may change on a resume."""
    was = running.get("options") or {}
    now = opts.to_json()
    changed = [f"--{k} {now.get(k)!r} (it was started with {was.get(k)!r})" for k in RESUME_SHAPE
               if k in was and str(was.get(k)) != str(now.get(k))]
    if changed:
        raise UsageError(
            f"A conversion of {qn} is in progress (phase {running['phase']}, {running['rows_copied']:,} rows copied) "
            f"with other partitions than asked for: {'; '.join(changed)}. Run it again with its own options to resume "
            f"it, or `partman revert {qn.arg}` to abandon it and then convert afresh."
        )


def _check_durations(conn: psycopg.Connection, opts: planning.Options) -> None:
    """--retention and --drop-old-after that are no duration are usage errors, found before
    anything is planned (a dry-run included)."""
    from ..lifecycle.registry import check_retention

    check_retention(conn, opts.retention)
    text = opts.drop_old_after
    if text is None:
        return
    try:
        with conn.transaction():
            positive = conn.execute("SELECT %s::interval > interval '0'", (_pg_interval(text) or "",)).fetchone()[0]
    except psycopg.Error:
        positive = None
    if not positive:
        raise UsageError(f"--drop-old-after (PARTMAN_DROP_OLD_AFTER) {text!r} is not a positive duration. Give one such as 7d, 36h or '7 days'.")


def _say(args: argparse.Namespace, text: str, **doc: Any) -> None:
    """A one-line answer on stdout, or with --json one JSON document of its figures."""
    print(json.dumps({**doc, "message": text}, indent=2, default=str) if args.json else text)


def _registered_otherwise(mt: catalog.ManagedTable, opts: planning.Options,
                          args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Where a converted table's registration differs from what this convert command's flags ask
    (those given; a default asks nothing): its partitions' shape (column, interval, time zone),
    and what the registration keeps (premake, retention)."""
    def differs(name: str, asked: Any, registered: Any) -> str | None:
        given = getattr(args, name.replace("-", "_"), None) is not None
        return f"--{name} {asked} (it has {registered})" if given and str(asked) != str(registered) else None

    shape = [d for d in (differs("column", opts.column, mt.column_name), differs("interval", opts.interval, mt.interval),
                         differs("timezone", opts.timezone, mt.timezone)) if d]
    kept = [d for d in (differs("premake", opts.premake, mt.premake),
                        differs("retention", opts.retention, mt.retention),
                        differs("retention-action", opts.retention_action, mt.retention_action)) if d]
    return shape, kept


def _already_converted(conn: psycopg.Connection, settings: Settings, qn: QualifiedName) -> bool:
    last = catalog.latest_conversion(conn, settings, qn.schema, qn.name)
    return bool(last and last["status"] == "done" and catalog.get_managed(conn, settings, qn.schema, qn.name))


def key_stats(conn: psycopg.Connection, table: QualifiedName, column: str, indexed: bool = True) -> planning.KeyStats:
    """The key column's lowest and highest finite values, its NULL and infinite rows. `indexed`
    (a btree index leads with the column): four short index scans; `NOT isfinite(c)` read the
    whole index (90 ms at 2M rows, freshly vacuumed); the infinities are the only values it is
    false for. Otherwise one pass over the table instead of four."""
    c, t = sql.Identifier(column), table.ident()
    if indexed:
        query = sql.SQL(
            "SELECT (SELECT min({c}) FROM {t} WHERE isfinite({c})), (SELECT max({c}) FROM {t} WHERE isfinite({c})), "
            "(SELECT count(*) FROM {t} WHERE {c} IS NULL), now(), "
            "(SELECT count(*) FROM {t} WHERE {c} IN ('infinity', '-infinity'))"
        )
    else:
        query = sql.SQL(
            "SELECT min({c}) FILTER (WHERE isfinite({c})), max({c}) FILTER (WHERE isfinite({c})), "
            "count(*) FILTER (WHERE {c} IS NULL), now(), count(*) FILTER (WHERE {c} IN ('infinity', '-infinity')) FROM {t}"
        )
    row = conn.execute(query.format(c=c, t=t)).fetchone()
    return planning.KeyStats(row[0], row[1], row[2], row[3], row[4])


def past_retention_rows(conn: psycopg.Connection, table: QualifiedName, column: str, key_type: str,
                        due: list[Any]) -> list[int]:
    """Rows of `table` in each of the planned partitions past the retention (contiguous ranges,
    oldest first: notice.Due), in one statement over those keys only (a range scan where an index
    leads with the key)."""
    c = sql.Identifier(column)
    bounds = [intervals.literal(d.lower, key_type) for d in due]
    rows = conn.execute(
        sql.SQL("SELECT width_bucket({c}, %s::text[]::{t}[]), count(*) FROM {table} "
                "WHERE {c} >= %s::{t} AND {c} < %s::{t} GROUP BY 1").format(
            c=c, t=key_cast(key_type), table=table.ident()),
        (bounds, bounds[0], intervals.literal(due[-1].upper, key_type))).fetchall()
    counts = dict(rows)
    return [counts.get(i, 0) for i in range(1, len(due) + 1)]


def make_plan(
    conn: psycopg.Connection, settings: Settings, qn: QualifiedName, opts: planning.Options
) -> tuple[planning.ConversionPlan, Any]:
    from ..introspect import introspect, key_type_of, not_ours

    model = introspect(conn, qn)
    owner_ok = conn.execute(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = %s::regclass",
        (qn.literal,),
    ).fetchone()[0]
    stats = planning.KeyStats(None, None, 0, conn.execute("SELECT now()").fetchone()[0])
    if key_type_of(model, opts.column) and not getattr(model, "is_partitioned", False):
        stats = key_stats(conn, qn, opts.column, indexed=opts.column in model.index_leads())
    if opts.retention:  # as maintain judges it, in this session's time zone
        stats.retention_cutoff = conn.execute("SELECT %s::timestamptz - %s::interval",
                                              (stats.now, opts.retention)).fetchone()[0]
    if model.relkind == "r" and model.estimated_rows <= 0:  # never analyzed: count, for honest progress and ETA
        model.estimated_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qn.ident())).fetchone()[0]
    key = capture.copy_key(conn, qn)
    p = planning.build(model, opts, stats, settings.catalog_schema, key)
    if p.past_retention and not p.refusals and model.relkind == "r":
        for due, rows in zip(p.past_retention, past_retention_rows(conn, qn, opts.column, p.key_type, p.past_retention)):
            due.rows = rows
    if not model.is_partitioned and model.relkind == "r":
        wanted = [p.old.name, p.default, *(x.name for x in p.partitions), *(i.final_name for i in p.index_ddl)]
        rows = conn.execute(  # each name taken, and the table it is a partition or an index of
            "SELECT c.relname, coalesce((SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid), "
            "(SELECT indrelid FROM pg_index WHERE indexrelid = c.oid))::regclass::text "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.oid <> %s "
            "AND NOT (c.relkind = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = c.oid AND i.indrelid = %s))",
            (qn.schema, wanted, model.oid, model.oid)).fetchall()
        if rows:
            owners = sorted({r[1] for r in rows if r[1]})
            p.refusals.append(
                f"{', '.join(sorted(r[0] for r in rows))} already exist(s) in schema {qn.schema}, but the conversion "
                f"needs those names (the kept original {p.old.name}, partitions, the default partition)"
                + (f"; they belong to {', '.join(owners)} (a partitioned table a `partman revert` kept is one; "
                   "dropping it drops its partitions)" if owners else "")
                + ". Rename or drop them first."
            )
    if not owner_ok:
        p.refusals.insert(
            0,
            f"the current user is not the owner of {qn} (nor a member of its owner role): converting recreates the "
            "table, so connect as its owner.",
        )
    others = not_ours(conn, model)
    if others:  # found here, not by the swap after the whole copy
        p.refusals.append(
            "the conversion recreates, alters or uses objects the current user has no right to: "
            f"{', '.join(f'{what} ({right})' for what, right in others)}. Run it as a role that has them (a member "
            f"of each owner role), or grant them first (or make {model.owner} the owner).")
    if model.relkind == "r" and not p.refusals:  # the replicas the copy could leave behind
        found = replicas.read(conn)
        p.extra["replicas"] = found
        p.extra["replicas_note"] = replicas.summary(found, throttled=p.throttled,
                                                    max_lag=settings.throttle_max_replica_lag)
        role = conn.execute("SELECT current_user").fetchone()[0] if found.hidden else ""
        p.warnings += replicas.warnings(found, throttled=p.throttled, max_lag=settings.throttle_max_replica_lag,
                                        role=role)
    return p, model


def execute(
    conn: psycopg.Connection,
    settings: Settings,
    p: planning.ConversionPlan,
    model: Any,
    running: dict[str, Any] | None,
    *,
    json_out: bool = False,
) -> int:
    catalog.ensure(conn, settings)
    qn = p.table
    lock_key = db.advisory_key("convert", qn.schema, qn.name)
    with db.advisory_lock(conn, lock_key, f"Another `partman convert` of {qn} is running. Wait for it to finish."):
        running = catalog.running_conversion(conn, settings, qn.schema, qn.name)
        if running is None:
            from ..digests import fingerprints

            definition, statistics = fingerprints(conn, model.oid)
            options = {**p.options.to_json(), "work_schema": p.work_schema,
                       "fingerprint": definition, "widened_keys": p.widened, "statistics": statistics}
            with conn.transaction():
                catalog.start_conversion(conn, settings, qn.schema, qn.name, p.options.column, options, p.rows_estimate)
            running = catalog.running_conversion(conn, settings, qn.schema, qn.name)
        assert running is not None
        try:
            return _run_phases(conn, settings, p, model, running, json_out)
        except BaseException as exc:
            rollback.handle_failure(conn, settings, qn, p.old, p.work_schema, running["id"], exc)
            raise  # (handle_failure always raises)


def _run_phases(
    conn: psycopg.Connection, settings: Settings, p: planning.ConversionPlan, model: Any,
    running: dict[str, Any], json_out: bool,
) -> int:
    cid = running["id"]
    phase = running["phase"]
    work = WorkNames(p.work_schema)
    qn = p.table
    logger = log.get().bind(table=str(qn), conversion=cid)
    recorded = running.get("options") or {}
    expected = (recorded.get("fingerprint"), recorded.get("statistics"))
    if phase != "prepare":
        changes.check_unchanged(conn, qn, model.oid, expected)
    if phase != "prepare" and phase not in AFTER_SWAP:
        changes.check_capturing(conn, qn)
    with Progress(p.rows_estimate, str(qn)) as progress:
        if phase == "prepare":
            progress.set_phase("prepare")
            _prepare(conn, settings, p, work, cid)
            phase = "copy"
        if phase == "copy":
            progress.set_phase("copy")
            progress.begin(running["rows_copied"])
            copied, longest = run_copy(
                conn, settings, cid, qn, p.shadow, p.copy_key, p.columns,
                overriding=p.overriding, start_after=running["last_key"], rows_done=running["rows_copied"],
                upper=(running["upper_from"], running["upper_key"]) if running["upper_from"] else None,
                exact=running["exact_cursor"],
                batch_size=p.options.batch_size, sleep=p.options.sleep, on_progress=progress.update,
                on_pacing=progress.watch, figures=progress.figures, work_schema=p.work_schema,
                workers=settings.convert_workers or (2 if p.options.sleep == 0 else 1),
            )
            logger.info("copied", rows=copied, longest_batch_ms=round(longest, 1))
            with conn.transaction():
                catalog.update_conversion(conn, settings, cid, phase="indexes")
            failpoints.hit("convert.after_copy")
            phase = "indexes"
        if phase == "indexes":
            progress.set_phase("indexes")
            _build_indexes(conn, settings, p, model, cid)
            phase = "catchup"
        if phase == "catchup":
            progress.set_phase("catchup")
            _catch_up(conn, settings, p, work, cid, logger)
            phase = "swap"
        if phase == "swap":
            progress.set_phase("swap")
            failpoints.hit("convert.swap.before")  # the final catch-up window: rows written now wait for the lock
            stats = swap(
                conn, settings, conversion_id=cid, source=qn, old=p.old, shadow=p.shadow, work=work, model=model,
                index_ddl=p.index_ddl, key=p.copy_key, columns=p.columns, overriding=p.overriding, part=p.partition_key,
                registration=_registration(p), lock_timeout_ms=p.options.lock_timeout_ms,
                check=lambda c: (changes.check_unchanged(c, qn, model.oid, expected),
                                 changes.redecorate_if_changed(c, settings, p, model.oid, cid)),
            )
            logger.info("swapped", lock_ms=round(stats["lock_ms"], 1), replay_ms=round(stats["replay_ms"], 1),
                        commit_ms=round(stats["commit_ms"], 1), caught_up=stats.get("caught_up"),
                        attempts=stats["attempts"])
    running = catalog.running_conversion(conn, settings, qn.schema, qn.name) or running
    return _finish(conn, settings, running, json_out=json_out)


def _registration(p: planning.ConversionPlan) -> dict[str, Any]:
    o = p.options
    values: dict[str, Any] = dict(
        schema_name=p.table.schema, table_name=p.table.name, column_name=o.column, key_type=p.key_type,
        interval=o.interval, premake=o.premake, timezone=o.timezone, retention=o.retention,
        retention_action=o.retention_action or "drop", old_table_name=p.old.name,
        drop_old_after=_pg_interval(o.drop_old_after),
    )
    return values


def _pg_interval(text: str | None) -> str | None:
    if not text:
        return None
    from ..durations import to_pg_interval

    try:
        return to_pg_interval(text)
    except ValueError:
        return text  # a PostgreSQL interval string such as '7 days 12 hours'


def _prepare(conn: psycopg.Connection, settings: Settings, p: planning.ConversionPlan, work: WorkNames, cid: int) -> None:
    """Work schema, shadow table and partitions (paced: with their indexes), the change log; then
    the capture trigger on the source and the phase change in one transaction."""
    with conn.transaction():
        conn.execute(drop_work_schema(work.schema))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(work.schema)))
        for stmt in p.shadow_ddl:
            conn.execute(stmt)
        for stmt in capture.create_log(work.convert_log, p.copy_key, p.partition_key):
            conn.execute(stmt)
        conn.execute(capture.create_function(work.convert_fn, work.convert_log, p.copy_key, p.partition_key))
        if p.indexes_first:  # paced: the copy keeps them up to date (plan.ConversionPlan.indexes_first)
            for idx in p.index_ddl:
                conn.execute(idx.statement)
    failpoints.hit("convert.prepare.before_trigger")

    def install(c: psycopg.Connection) -> None:
        c.execute(capture.create_trigger(CONVERT_TRIGGER, p.table, work.convert_fn))
        c.execute(capture.fire_always(CONVERT_TRIGGER, p.table))
        catalog.update_conversion(c, settings, cid, phase="copy", last_key=None, upper_from=None, upper_key=None,
                                  rows_copied=0)

    with_lock_retry(conn, settings, f"adding the change-capture trigger to {p.table}", install,
                    lock_timeout_ms=p.options.lock_timeout_ms, tables=[p.table])


def _build_indexes(conn: psycopg.Connection, settings: Settings, p: planning.ConversionPlan, model: Any, cid: int) -> None:
    """Indexes after the bulk copy (much faster than maintaining them row by row), on two
    connections at full speed (indexes.py), then grants, comments, policies, owner, replica
    identity. Resumable: existing ones are kept. Paced, the indexes were made before the copy
    (_prepare): only the ANALYZE is left."""
    from . import indexes
    todo = [idx for idx in p.index_ddl if not relation_exists(conn, QualifiedName(p.work_schema, idx.temp_name))]
    workers = indexes.worker_count(settings, p.options.sleep)
    # ANALYZE overlaps the index builds unless an expression index wants its statistics gathered too
    expressions = any(None in (getattr(i, "columns", None) or []) for i in getattr(model, "indexes", []))
    with Throttle(settings, p.work_schema, p.options.sleep, enabled=settings.throttle and workers == 1,
                  paces="indexes") as throttle:
        analyzed = indexes.build(conn, settings, todo, workers=workers, gentle=throttle.enabled, pause=throttle.pause,
                                 shadow=p.shadow, analyze=not expressions, every=p.index_ddl)
    _add_foreign_keys(conn, settings, p)
    with conn.transaction():
        for stmt in p.decorate_ddl:
            conn.execute(stmt)
        changes.partitions_replica_identity(conn, p.shadow, db.oid_of(conn, p.shadow))
        # what the decorations were made from: the swap sets them again if the original's change
        catalog.merge_options(conn, settings, cid, {"decorations": model.decorations})
        if not analyzed:
            indexes.analyze(conn, p.shadow, gentle=p.options.sleep > 0 and settings.throttle)
        catalog.update_conversion(conn, settings, cid, phase="catchup")


def _add_foreign_keys(conn: psycopg.Connection, settings: Settings, p: planning.ConversionPlan) -> None:
    """ddl.foreign_keys, step by step, each in its own transaction; a resumed run skips the
    constraints that exist (validating one again costs nothing). Adding one takes a SHARE ROW
    EXCLUSIVE lock on the referenced table, under lock_timeout and retried."""
    for step in p.foreign_keys:
        exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s)",
                              (step.table.literal, step.name)).fetchone()[0]
        if not exists:
            def add(c: psycopg.Connection, step: ddl.ConstraintStep = step) -> None:
                for stmt in (step.add, step.comment):
                    if stmt is not None:
                        c.execute(stmt)

            with_lock_retry(conn, settings, f"adding the foreign key {step.name} to {step.table}", add,
                            lock_timeout_ms=p.options.lock_timeout_ms)
        if step.validate is not None:
            with conn.transaction():
                conn.execute(step.validate)
        failpoints.hit("convert.foreign_key.after_step")


def _catch_up(conn: psycopg.Connection, settings: Settings, p: planning.ConversionPlan, work: WorkNames, cid: int,
              logger: Any) -> None:
    """Replay captured changes in rounds until few are left for the swap's lock. At full speed
    rounds of CATCHUP_ROUND log entries back to back; paced (the default), rounds sized as the
    copy sizes its batches (GENTLE_BATCH_MS) with the throttle's pause after each: the writes of
    an hours-long copy wait in the log, and 10,000-entry rounds back to back held an application's
    commits behind their WAL (a writer's p99 36 ms through a 1M-row conversion's catch-up)."""
    total = rounds = 0
    size = GENTLE_CATCHUP_FIRST if p.throttled else CATCHUP_ROUND
    with ExitStack() as stack:
        # started when a second round is needed: a probe connection, and ~1 s of baseline on a resumed run
        throttle: Throttle | None = None
        while total < CATCHUP_MAX_ROWS:
            t0 = time.perf_counter()
            with conn.transaction():
                n = capture.replay(conn, work.convert_log, p.table, p.shadow, p.copy_key, p.columns,
                                   overriding=p.overriding, limit=size, part=p.partition_key)
                catalog.add_caught_up(conn, settings, cid, n)
            total += n
            rounds += 1
            failpoints.hit("convert.catchup.after_round")
            # a round short of its size found the log (nearly) drained
            if n < size and capture.pending(conn, work.convert_log) < CATCHUP_DONE_BELOW:
                break
            if p.throttled:
                if throttle is None:
                    throttle = stack.enter_context(Throttle(settings, p.work_schema, p.options.sleep, enabled=True,
                                                            paces="catchup"))
                size = next_batch_size(size, CATCHUP_ROUND, (time.perf_counter() - t0) * 1000, GENTLE_BATCH_MS)
                throttle.pause()
    logger.info("caught_up", rows=total, rounds=rounds)
    with conn.transaction():
        catalog.update_conversion(conn, settings, cid, phase="swap")


def _finish(conn: psycopg.Connection, settings: Settings, running: dict[str, Any], *, json_out: bool = False) -> int:
    """materialized views -> verify -> done (also the resume path after a swap)."""
    qn = QualifiedName(running["schema_name"], running["table_name"])
    opts = running["options"]
    work = WorkNames(opts["work_schema"])
    managed = catalog.get_managed(conn, settings, qn.schema, qn.name)
    old = QualifiedName(qn.schema, managed.old_table_name) if managed and managed.old_table_name else None
    if old is None or not relation_exists(conn, old):
        raise PartmanError(f"The conversion of {qn} is past its swap but {old} is missing: cannot verify.")
    key = capture.copy_key(conn, old)
    from ..introspect import introspect

    old_model = introspect(conn, old)
    columns = ddl.column_names(old_model)
    matviews.rebuild(conn, settings, qn, opts.get("matviews") or [], lock_timeout_ms=opts.get("lock_timeout_ms"))
    failpoints.hit("convert.verify.before")
    sleep = float(opts.get("sleep") or 0)
    with Progress(int(running.get("rows_copied") or 0) + int(running.get("rows_caught_up") or 0), str(qn)) as progress:
        progress.set_phase("verify")

        def record(c: psycopg.Connection) -> None:  # the progress, for `partman status`
            c.execute("SET LOCAL synchronous_commit = off")  # a range need not wait for its flush
            catalog.update_conversion(c, settings, running["id"], pace=Jsonb(progress.figures()))

        compare = dict(typed=typed_columns(old_model), partition_key=running["column_name"],
                       on_progress=progress.update, record=record)
        if sleep > 0 and settings.throttle:  # default settings: gentle, in short ranges, throttled
            with Throttle(settings, work.schema, sleep, enabled=True, paces="verify") as throttle:
                if throttle.enabled:
                    progress.watch(throttle.pacing)
                figures = verify(conn, old, qn, work.revert_log, key, columns, chunk_rows=GENTLE_FIRST_RANGE,
                                 target_ms=GENTLE_RANGE_MS, pause=throttle.pause, **compare)
        else:  # full speed: larger ranges, on two connections unless PARTMAN_CONVERT_WORKERS says 1
            two = (settings.convert_workers or 2) > 1
            figures = verify(conn, old, qn, work.revert_log, key, columns,
                             connect=(lambda: db.connect(settings, "partman verify worker")) if two else None,
                             **compare)
    with conn.transaction():
        catalog.update_conversion(conn, settings, running["id"], verify=figures)
    if not figures["ok"]:
        raise PartmanError(
            f"Verification of {qn} failed: {figures['missing_or_different']} row(s) of {old} are missing or differ in "
            f"the partitioned table and could not be repaired ({json.dumps(figures)}). Both tables are kept; "
            f"inspect them, then run `partman convert` again to re-verify or `partman revert {qn.arg}`."
        )
    # statistics: the partitions were ANALYZEd with the data just before the swap (index phase)
    with conn.transaction():
        catalog.update_managed(conn, settings, qn.schema, qn.name, verified_at=_server_now(conn))
        catalog.update_conversion(conn, settings, running["id"], phase="done", status="done", finished_at=_server_now(conn))
    result = catalog.latest_conversion(conn, settings, qn.schema, qn.name)
    summary = render.result_summary(result, managed)
    if json_out:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(render.result_text(summary))
    return 0


def _server_now(conn: psycopg.Connection) -> Any:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]
