"""`partman maintain`: one idempotent pass over every registered table.

Per table, under a per-table advisory lock (two processes never act on one table): move rows
out of the default partition, create missing partitions (the current one and `premake` ahead),
apply retention, drop `<table>_old` when due, ANALYZE the parent after changes or when its
statistics went stale (lifecycle.statistics). A table whose DDL is blocked (lock_timeout,
retried a few times) is skipped and reported; a failure on one table never stops the others. On
a standby nothing is done. The pass is recorded in `maintenance_run`, each table's outcome in
its registry row."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog, log
from ..catalog import ManagedTable
from ..db import advisory_unlock, connect, flush_statistics, is_standby, try_advisory_lock, with_lock_retry
from ..errors import LockTimeoutGaveUp, PartmanError
from ..settings import Settings
from . import default_rows, parent_of, premake, relation_kind, retention, statistics, table_lock_key
from .default_rows import NotLeader


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _per_error(failed: list[dict[str, Any]]) -> list[str]:
    """Partitions that failed for the same reason (no archive bucket set, say) in one entry that
    names them all, rather than the reason once per partition."""
    by_error: dict[str, list[str]] = {}
    for e in failed:
        by_error.setdefault(e["error"], []).append(e["partition"])
    return [f"{', '.join(names)}: {error}" for error, names in by_error.items()]


def _drop_old(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> str | None:
    try:
        from ..convert.finish import drop_old_if_due
    except ImportError:
        return None
    return drop_old_if_due(conn, settings, mt)


def maintain_table(conn: psycopg.Connection, settings: Settings, mt: ManagedTable,
                   leader_check: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One table's pass. The caller holds the table's advisory lock."""
    res: dict[str, Any] = {
        "created": [], "default_rows_moved": 0, "default_rows_remaining": 0, "null_key_rows": 0,
        "infinite_key_rows": 0,
        "retention": {"removed": [], "held": [], "errors": []}, "dropped_old": None,
        "analyzed": False, "skipped": None, "error": None,
    }
    parent = parent_of(mt)
    if relation_kind(conn, parent) != "p":
        res["error"] = (f"{mt.qualified} is registered but is no longer a partitioned table (dropped or renamed?); "
                        f"unregister it with `partman unregister {parent.arg}` or restore it.")
        return res
    changed = False
    errors: list[str] = []
    try:
        # 1. the default partition: move rows out, creating the partitions they belong in
        if leader_check is not None and not leader_check():
            raise NotLeader()
        try:
            moved = default_rows.move(conn, settings, mt, leader_check)
        except (NotLeader, LockTimeoutGaveUp):
            raise
        except Exception as exc:  # noqa: BLE001 - rows stuck in the default must not stop premake and retention
            if conn.closed:
                raise
            errors.append(f"moving rows out of the default partition failed: {_one_line(exc)}")
            moved = {"moved": 0, "partitions": {}, "null_key_rows": 0, "infinite_key_rows": 0}
        res["default_rows_moved"] = moved["moved"]
        res["created"].extend(n for n in moved["partitions"])
        res["null_key_rows"] = moved["null_key_rows"]
        res["infinite_key_rows"] = moved["infinite_key_rows"]
        changed |= moved["moved"] > 0 or bool(moved["partitions"])
        if moved.get("error"):
            errors.append(moved["error"])
        # 2. premake: the current and future partitions
        made = premake.run(conn, settings, mt)
        res["created"].extend(made["created"])
        changed |= bool(made["created"])
        if made["uncovered"]:
            errors.append(f"parts of these {mt.interval} ranges have no partition and partman cannot create one, "
                          f"because partitions not aligned to the interval overlap them: {'; '.join(made['uncovered'])}. "
                          "Rows with keys there fail (or land in the default partition); re-create those partitions "
                          f"on {mt.interval} boundaries by hand")
        if made["blocked_by_default"]:
            errors.append(f"rows arrived in the default partition for {', '.join(made['blocked_by_default'])} "
                          "during the pass; the next pass moves them")
        # 3. retention
        if mt.retention:
            if leader_check is not None and not leader_check():
                raise NotLeader()
            ret = retention.apply(conn, settings, mt, leader_check)
            res["retention"] = ret
            changed |= bool(ret["removed"])
            errors.extend(_per_error(ret["errors"]))
        # 4. the old table of a conversion, when its time has come
        res["dropped_old"] = _drop_old(conn, settings, mt)
        # 5. statistics: autovacuum never analyzes a partitioned parent
        if changed or statistics.parent_stale(conn, parent):
            flush_statistics(conn)  # the rows this pass moved, counted before the ANALYZE, not after it
            with_lock_retry(conn, settings, f"analyzing {parent}",
                            lambda c: c.execute(sql.SQL("ANALYZE {}").format(parent.ident())),
                            attempts=premake.ddl_attempts(settings), tables=[parent])
            res["analyzed"] = True
    except NotLeader:
        res["skipped"] = "this instance lost leadership during the pass; the leader continues"
    except LockTimeoutGaveUp as exc:
        res["skipped"] = "blocked: " + _one_line(exc)
        errors.append(res["skipped"])
    except (PartmanError, psycopg.Error) as exc:
        if conn.closed:
            raise
        errors.append(_one_line(exc))
    except Exception as exc:  # noqa: BLE001 - one table's bug must not stop the others
        if conn.closed:
            raise
        errors.append(f"{type(exc).__name__}: {_one_line(exc)}")
    try:
        res["default_rows_remaining"] = default_rows.count(conn, mt)
    except psycopg.Error:
        pass
    if errors:
        res["error"] = "; ".join(errors)
    return res


def _standby_summary() -> dict[str, Any]:
    return {
        "standby": True, "ok": True, "run_id": None, "tables": {}, "skipped": {}, "errors": {},
        "message": "connected to a standby (pg_is_in_recovery() is true): nothing to do; the primary's partman maintains the tables",
    }


def maintain(settings: Settings, *, conn: psycopg.Connection | None = None,
             leader_check: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One idempotent pass over all registered tables. Returns a summary:
    {"standby", "ok", "run_id", "tables": {name: {...}}, "skipped": {name: reason}, "errors": {name: message}}."""
    own = conn is None
    if conn is None:
        conn = connect(settings, application_name="partman maintain")
    logger = log.get()
    try:
        if is_standby(conn):
            logger.info("maintain_standby")
            return _standby_summary()
        catalog.ensure(conn, settings)
        tables = catalog.list_managed(conn, settings)
        run_id = catalog.start_run(conn, settings)
        summary: dict[str, Any] = {"standby": False, "ok": True, "run_id": run_id, "tables": {}, "skipped": {}, "errors": {}}
        t0 = time.monotonic()
        try:
            for mt in tables:
                name = mt.qualified
                if leader_check is not None and not leader_check():
                    summary["skipped"][name] = "not the leader"
                    continue
                key = table_lock_key(mt)
                if not try_advisory_lock(conn, key):
                    summary["skipped"][name] = "another partman process is maintaining this table right now"
                    continue
                try:
                    mt = catalog.get_managed(conn, settings, mt.schema_name, mt.table_name) or mt  # fresh row
                    res = maintain_table(conn, settings, mt, leader_check)
                    values: dict[str, Any] = {"maintenance_last_attempt": _now(conn)}
                    if res["error"]:
                        values["maintenance_last_error"] = res["error"]
                    elif res["skipped"] is None:
                        values["maintenance_last_run"] = values["maintenance_last_attempt"]
                        values["maintenance_last_error"] = None
                    catalog.update_managed(conn, settings, mt.schema_name, mt.table_name, **values)
                finally:
                    advisory_unlock(conn, key)
                summary["tables"][name] = res
                if res["skipped"]:
                    summary["skipped"][name] = res["skipped"]
                if res["error"]:
                    summary["errors"][name] = res["error"]
                # a table's failure is an error-level line, so log-based alerting sees it
                (logger.error if res["error"] else logger.info)(
                    "maintained", table=name, created=len(res["created"]), moved=res["default_rows_moved"],
                    removed=len(res["retention"]["removed"]), error=res["error"], skipped=res["skipped"])
        except BaseException as exc:
            if not conn.closed:
                try:
                    catalog.finish_run(conn, settings, run_id, False, _one_line(exc), summary)
                except psycopg.Error:
                    pass
            raise
        summary["ok"] = not summary["errors"]
        summary["seconds"] = round(time.monotonic() - t0, 3)
        error = "; ".join(f"{k}: {v}" for k, v in summary["errors"].items()) or None
        catalog.finish_run(conn, settings, run_id, summary["ok"], error, summary)
        return summary
    finally:
        if own:
            conn.close()


def _now(conn: psycopg.Connection) -> Any:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def render_text(summary: dict[str, Any]) -> str:
    if summary.get("standby"):
        return summary["message"]
    if not summary["tables"] and not summary["skipped"]:
        return "no registered tables: nothing to do"
    lines = []
    for name in sorted(set(summary["tables"]) | set(summary["skipped"])):
        res = summary["tables"].get(name)
        if res is None:
            lines.append(f"{name}: skipped ({summary['skipped'][name]})")
            continue
        parts = []
        if res["created"]:
            parts.append(f"created {', '.join(res['created'])}")
        if res["default_rows_moved"]:
            parts.append(f"moved {res['default_rows_moved']} rows out of the default partition")
        if res["default_rows_remaining"]:
            stuck = res["null_key_rows"] + res["infinite_key_rows"]
            parts.append(f"{res['default_rows_remaining']} rows remain in the default partition"
                         + (f" ({stuck} with a NULL or infinite key, which no range partition holds)" if stuck else ""))
        for r in res["retention"]["removed"]:
            extra = f" -> {r['uri']} (sha256 {r['sha256']})" if r.get("uri") else ""
            parts.append(f"{r['action']} {r['partition']} ({r['rows']} rows){extra}")
        if res["retention"]["held"]:
            parts.append(f"kept under legal hold: {', '.join(res['retention']['held'])}")
        if res["dropped_old"]:
            parts.append(f"dropped {res['dropped_old']}")
        if res["analyzed"]:
            parts.append("analyzed")
        if res["skipped"]:
            parts.append(f"skipped ({res['skipped']})")
        if res["error"]:
            parts.append(f"ERROR: {res['error']}")
        lines.append(f"{name}: " + ("; ".join(parts) if parts else "nothing to do"))
    return "\n".join(lines)


def cli_maintain(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        registered = catalog.exists(conn, settings) or is_standby(conn)  # a standby says so itself
    if not registered:  # nothing registered yet: do nothing at all (not even create the catalog)
        summary: dict[str, Any] = {"standby": False, "ok": True, "run_id": None, "tables": {}, "skipped": {},
                                   "errors": {}, "message": "no registered tables: nothing to do"}
        sys.stdout.write((json.dumps(summary) if getattr(args, "json", False) else summary["message"]) + "\n")
        return 0
    summary = maintain(settings)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        sys.stdout.write(render_text(summary) + "\n")
    if summary["errors"]:
        names = ", ".join(sorted(summary["errors"]))
        raise PartmanError(
            f"Maintenance failed for {names}: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(summary["errors"].items())).rstrip(".")
            + ". Nothing was removed that is not archived and verified; the next pass tries again."
        )
    return 0
