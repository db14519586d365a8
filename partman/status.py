"""`partman status [TABLE] [--json]`: gather what the catalog and pg_catalog say about each
registered table, then render it as readable tables (rich) or one JSON document on stdout."""

from __future__ import annotations

import json
import re
import sys
from datetime import date, datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import dict_row

from . import catalog, db, log
from .catalog import ManagedTable
from .convert.progress import Progress
from .db import QualifiedName
from .durations import approximately
from .errors import PartmanError
from .health import Coverage, coverage, required_ahead
from .partitions import Partition
from .settings import Settings


# ---------------------------------------------------------------- facts shared with /metrics

def default_rows(conn: psycopg.Connection, mt: ManagedTable, cov: Coverage) -> int | None:
    """Rows sitting in the table's default partition (None when it has none)."""
    if cov.default_partition is None:
        return None
    from .lifecycle.default_rows import count

    try:
        return int(count(conn, mt))
    except psycopg.errors.LockNotAvailable:
        return None  # maintenance holds the default partition right now (the daemon's probe has a lock_timeout)


def _stranded(conn: psycopg.Connection, mt: ManagedTable) -> list[dict[str, Any]]:
    """Rows a stopped pass left on their way out of the default partition (default_rows.stranded)."""
    from .lifecycle.default_rows import stranded

    return stranded(conn, mt)


def _unplaceable(conn: psycopg.Connection, mt: ManagedTable, cov: Coverage) -> int:
    """Default-partition rows with a NULL or +-infinity key: maintenance cannot move them."""
    from .lifecycle.default_rows import unplaceable

    try:
        return sum(unplaceable(conn, mt, cov.default_partition))  # type: ignore[arg-type]
    except psycopg.errors.LockNotAvailable:
        return 0


def holds(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, cov: Coverage) -> dict[str, dict[str, Any]]:
    names = [p.name for p in cov.partitions]
    if not names:
        return {}
    q = sql.SQL(
        "SELECT partition_name, reason, held_by, held_at FROM {} WHERE schema_name = %s AND partition_name = ANY(%s)"
    ).format(catalog.ident(settings, "hold"))
    return {r[0]: {"reason": r[1], "held_by": r[2], "held_at": r[3]} for r in conn.execute(q, (mt.schema_name, names))}


def retention_due(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, held: dict[str, Any]) -> list[str]:
    """Names of partitions retention would remove now (held ones excluded): retention's own rule."""
    if not mt.retention:
        return []
    from .lifecycle.retention import due

    return [d["partition"] for d in due(conn, settings, mt) if not d["held"] and d["partition"] not in held]


def removals(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL(
                "SELECT partition_name, lower_bound, upper_bound, row_count, min_id, max_id, action, archive_uri, "
                "archive_sha256, archive_bytes, removed_at, removed_by FROM {} "
                "WHERE schema_name = %s AND table_name = %s ORDER BY id"
            ).format(catalog.ident(settings, "removal")),
            (mt.schema_name, mt.table_name),
        ).fetchall()


def conversion_progress(conn: psycopg.Connection, settings: Settings, mt: ManagedTable) -> dict[str, Any] | None:
    conv = catalog.latest_conversion(conn, settings, mt.schema_name, mt.table_name)
    return _conversion_doc(conv) if conv else None


def _conversion_doc(conv: dict[str, Any]) -> dict[str, Any]:
    est = conv.get("rows_estimate") or 0
    copied = conv.get("rows_copied") or 0
    ratio = 1.0 if conv.get("status") == "done" else (min(copied / est, 1.0) if est > 0 else 0.0)
    return {
        "id": conv.get("id"),
        "status": conv.get("status"),
        "phase": conv.get("phase"),
        "rows_estimate": conv.get("rows_estimate"),
        "rows_copied": copied,
        "rows_caught_up": conv.get("rows_caught_up"),
        "progress": round(ratio, 4),
        "swap_lock_ms": conv.get("swap_lock_ms"),
        # the copy's or the verification's figures as its progress lines show them, as of updated_at
        "pace": conv.get("pace"),
        "updated_at": conv.get("updated_at"),
        "started_at": conv.get("started_at"),
        "finished_at": conv.get("finished_at"),
        "error": log.redact(conv["error"]) if conv.get("error") else None,
    }


def running_conversions(conn: psycopg.Connection, settings: Settings) -> list[dict[str, Any]]:
    """Conversions in progress (the table is not registered until its conversion finishes)."""
    if not catalog.exists(conn, settings):
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql.SQL("SELECT * FROM {} WHERE status = 'running' ORDER BY id").format(catalog.ident(settings, "conversion"))
        ).fetchall()
    # a running conversion's process holds its advisory lock; none holding it: killed or stopped
    return [{"table": f"{r['schema_name']}.{r['table_name']}", **_conversion_doc(r),
             "arg": QualifiedName(r["schema_name"], r["table_name"]).arg,
             "active": db.advisory_holder(conn, db.advisory_key("convert", r["schema_name"], r["table_name"])) is not None}
            for r in rows]


def gather_table(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, now: datetime) -> dict[str, Any]:
    cov = coverage(conn, mt, now)
    doc: dict[str, Any] = {
        "table": mt.qualified,
        "column": mt.column_name,
        "key_type": mt.key_type,
        "interval": mt.interval,
        "premake": mt.premake,
        "timezone": mt.timezone,
        "retention": mt.retention,
        "retention_action": mt.retention_action,
        "exists": cov.exists,
        "registered_at": mt.registered_at,
        "maintenance": {
            "last_run": mt.maintenance_last_run,
            "last_attempt": mt.maintenance_last_attempt,
            "last_error": log.redact(mt.maintenance_last_error) if mt.maintenance_last_error else None,
        },
        "old_table": mt.old_table_name,
        "drop_old_after": mt.drop_old_after,
        "swapped_at": mt.swapped_at,
        "verified_at": mt.verified_at,
        # when maintenance drops <table>_old: drop_old_after past the verified swap (convert.finish)
        "old_table_drop_at": conn.execute("SELECT %s::timestamptz + %s::interval", (mt.verified_at, mt.drop_old_after)
                                          ).fetchone()[0] if mt.old_table_name and mt.verified_at and mt.drop_old_after else None,
    }
    held = holds(conn, settings, mt, cov) if cov.exists else {}
    doc["partitions"] = [_partition_doc(p, held) for p in cov.partitions]
    doc["partitions_ahead"] = cov.ahead
    doc["required_ahead"] = required_ahead(mt.premake)
    doc["covered_until"] = cov.covered_until
    doc["default_rows"] = default_rows(conn, mt, cov) if cov.exists else None
    doc["default_rows_unplaceable"] = _unplaceable(conn, mt, cov) if doc["default_rows"] else 0
    doc["stranded_default_rows"] = _stranded(conn, mt) if cov.exists else []
    doc["retention_due"] = retention_due(conn, settings, mt, held) if cov.exists else []
    doc["holds"] = [{"partition": k, **v} for k, v in held.items()]
    doc["conversion"] = conversion_progress(conn, settings, mt)
    doc["removals"] = removals(conn, settings, mt)
    doc["archive_bytes"] = sum(int(r["archive_bytes"] or 0) for r in doc["removals"] if r["action"] == "archive")
    doc["archive_objects"] = sum(1 for r in doc["removals"] if r["action"] == "archive" and r["archive_uri"])
    return doc


def _partition_doc(p: Partition, held: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": p.name,
        "schema": p.schema,
        "default": p.is_default,
        "lower": "DEFAULT" if p.is_default else ("MINVALUE" if p.lower is None else p.lower),
        "upper": None if p.is_default else ("MAXVALUE" if p.upper is None else p.upper),
        # reltuples; 0 where PostgreSQL has none: `status --json` prints null there, /metrics leaves it out of its sum and counts it
        "rows_estimate": p.estimated_rows,
        "rows_estimate_known": p.estimate_known,
        "held": p.name in held,
    }


def _for_output(doc: dict[str, Any]) -> dict[str, Any]:
    """The document `status --json` prints: an estimate PostgreSQL does not have is null, not 0."""
    for t in doc["tables"]:
        for p in t.get("partitions", []):
            if not p["rows_estimate_known"]:
                p["rows_estimate"] = None
    return doc


def gather(conn: psycopg.Connection, settings: Settings, table: str | None = None) -> dict[str, Any]:
    now: datetime = conn.execute("SELECT now()").fetchone()[0]
    managed = catalog.list_managed(conn, settings)
    wanted: str | None = None
    if table is not None:
        qn = _resolve_managed(conn, settings, table, managed)
        wanted = str(qn)
        managed = [m for m in managed if (m.schema_name, m.table_name) == (qn.schema, qn.name)]
    runs = catalog.last_runs(conn, settings)
    doc: dict[str, Any] = {
        "now": now,
        "instance": settings.instance_name,
        "last_maintenance": _run_doc(runs["last"]),
        "last_successful_maintenance": _run_doc(runs["last_ok"]),
        "tables": [gather_table(conn, settings, mt, now) for mt in managed],
        "conversions_running": [c for c in running_conversions(conn, settings) if wanted is None or c["table"] == wanted],
    }
    if wanted is not None:
        doc["asked_for"] = wanted
    return doc


def _resolve_managed(conn: psycopg.Connection, settings: Settings, table: str, managed: list[ManagedTable]) -> QualifiedName:
    try:
        qn = db.resolve_table(conn, table)
    except PartmanError:
        parts = db.split_name(table)
        if parts is None:
            raise
        schema, name = parts  # a registered table that no longer exists: its record, found as psql would
        path = [schema] if schema is not None else conn.execute("SELECT current_schemas(false)").fetchone()[0]
        hits = sorted((m for m in managed if m.table_name == name and m.schema_name in path),
                      key=lambda m: path.index(m.schema_name))
        if not hits:
            raise
        qn = QualifiedName(hits[0].schema_name, hits[0].table_name)
    if not any((m.schema_name, m.table_name) == (qn.schema, qn.name) for m in managed):
        conv = catalog.latest_conversion(conn, settings, qn.schema, qn.name)
        if conv is None:
            raise PartmanError(
                f"Table {qn} is not registered with partman. Convert it with `partman convert` or adopt an "
                "already partitioned table with `partman register`."
            )
    return qn


def _run_doc(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run["id"],
        "instance": run["instance"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "ok": run["ok"],
        "error": log.redact(run["error"]) if run.get("error") else None,
    }


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return "infinity" if v.year >= 9999 else v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


# ---------------------------------------------------------------- command

def cli_status(settings: Settings, args: Any) -> int:
    conn = db.connect(settings, application_name="partman status")
    try:
        doc = gather(conn, settings, getattr(args, "table", None))
    finally:
        conn.close()
    if getattr(args, "json", False):
        sys.stdout.write(log.redact(json.dumps(_for_output(doc), default=_json_default, indent=2)) + "\n")
        return 0
    render(doc)
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return "infinity" if v.year >= 9999 else v.strftime("%Y-%m-%d %H:%M:%S%z")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def _fmt_bound(v: Any) -> str:
    """Partition bounds fall on interval starts: midnight is shown as the date alone."""
    if isinstance(v, datetime) and v.year < 9999 and (v.hour, v.minute, v.second, v.microsecond) == (0, 0, 0, 0):
        off = v.strftime("%z")
        return v.strftime("%Y-%m-%d") + ("" if off in ("", "+0000") else f" {off}")
    if isinstance(v, str):
        return re.sub(r" 00:00:00(\+00(:00)?)?$", "", v)
    return _fmt(v)


def _copied(c: dict[str, Any]) -> str:
    """Rows copied, against the planner's estimate of the table's rows when the conversion began
    (rows written since and the estimate's own error make the count pass it: then no share)."""
    copied, est = c["rows_copied"] or 0, c["rows_estimate"]
    if c.get("status") == "done" or not est:
        return f"{copied:,} rows copied"
    if copied > est:
        return f"{copied:,} rows copied (the table was estimated at ~{est:,} when it began)"
    return f"{copied:,} of ~{est:,} rows copied ({c['progress'] * 100:.1f}%)"


def _pace(c: dict[str, Any], now: datetime) -> str:
    """A running conversion's pace as its process last wrote it (with the copy's batches, every
    few seconds of the verification): rows/s, the time left, the throttle's pause and why, and
    how long ago. Nothing when it is for another phase (one just begun) or none is written."""
    pace = c.get("pace") or {}
    if not c.get("active") or pace.get("phase") != c.get("phase"):
        return ""
    parts = []
    if pace["phase"] == "verify":
        parts.append(f"{pace.get('rows') or 0:,} of ~{pace.get('total_estimate') or 0:,} rows compared")
    parts.append(f"{pace.get('rows_per_s') or 0:,} rows/s")
    if pace.get("eta_s") is not None:
        parts.append(f"about {approximately(pace['eta_s'])} left")
    if pace.get("pause_s") is not None:
        parts.append(Progress.pace_text(pace))
    ago = f" ({approximately(max((now - c['updated_at']).total_seconds(), 0))} ago)" if c.get("updated_at") else ""
    return "; " + ", ".join(parts) + ago


def _old_table_fate(t: dict[str, Any], now: datetime) -> str:
    """When maintenance drops <table>_old (--drop-old-after past the verified swap), or that it does not."""
    if not t["drop_old_after"]:
        return " (no --drop-old-after: kept until you drop it)"
    at = t.get("old_table_drop_at")
    if at is None:
        return "; maintenance drops it once --drop-old-after has passed since the verification, which has not finished"
    if at <= now:
        return f"; due to be dropped since {_fmt(at)} (--drop-old-after): the next maintenance pass drops it"
    return f"; maintenance drops it from {_fmt(at)} on (--drop-old-after, counted from the verified swap)"


def render(doc: dict[str, Any], file: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    console = Console(file=out, highlight=False, soft_wrap=False, width=None if out.isatty() else 120)
    last = doc.get("last_maintenance")
    if last:
        state = "ok" if last["ok"] else f"FAILED: {last['error']}"
        console.print(f"Last maintenance pass: {_fmt(last['finished_at'])} by {last['instance']} ({state})")
    else:
        console.print("Last maintenance pass: never")
    if not doc["tables"] and not doc["conversions_running"]:
        console.print(f"{doc['asked_for']} is not registered with partman, and no conversion of it is running."
                      if doc.get("asked_for") else "No table is registered with partman.")
    for c in doc["conversions_running"]:
        progress = _copied(c)
        if c["active"]:
            console.print(f"Conversion of {c['table']} running: phase {c['phase']}, {progress}{_pace(c, doc['now'])}")
        else:
            console.print(
                f"[yellow]Conversion of {c['table']} interrupted[/yellow] at phase {c['phase']}, {progress}: no partman "
                f"process is working on it. Run the same `partman convert` command to resume it"
                + ("." if c["phase"] in ("verify", "analyze") else f", or `partman revert {c['arg']}` to abandon it.")
            )
    for t in doc["tables"]:
        console.print()
        console.rule(f"[bold]{t['table']}[/bold]")
        if not t["exists"]:
            console.print("[red]registered, but no longer a range-partitioned table[/red]")
            continue
        ok_ahead = t["partitions_ahead"] >= t["required_ahead"]
        lines = [
            f"key {t['column']} ({t['key_type']}), {t['interval']} partitions in {t['timezone']}, premake {t['premake']}",
            f"coverage ahead: {t['partitions_ahead']} future partition(s), covered until {_fmt(t['covered_until'])}"
            + ("" if ok_ahead else f"  [red]LOW (needs {t['required_ahead']})[/red]"),
            f"default partition rows: {_fmt(t['default_rows'])}"
            + ("  [yellow]rows in default: run maintain[/yellow]"
               if (t["default_rows"] or 0) > t["default_rows_unplaceable"] else "")
            + (f" ({t['default_rows_unplaceable']} with a NULL or infinite key, which no range partition holds)"
               if t["default_rows_unplaceable"] else ""),
            *(f"[red]{s['rows']} rows moved out of the default partition wait in {s['staging']}, out of sight of "
              "queries on the table, until a maintenance pass attaches it (a pass stopped there): run `partman "
              "maintain`[/red]" for s in t.get("stranded_default_rows") or []),
            f"retention: {t['retention'] or 'none'} ({t['retention_action']}); due now: "
            + (", ".join(t["retention_due"]) or "none"),
            "holds: " + (", ".join(f"{h['partition']} ({h['reason']})" for h in t["holds"]) or "none"),
        ]
        m = t["maintenance"]
        lines.append(
            f"last maintenance: {_fmt(m['last_run'])}"
            + (f"  [red]last attempt {_fmt(m['last_attempt'])} failed: {m['last_error']}[/red]" if m["last_error"] else "")
        )
        conv = t["conversion"]
        if conv:
            lines.append(
                f"conversion: {conv['status']} (phase {conv['phase']}), {_copied(conv)}"
            )
        if t["old_table"]:
            lines.append(f"old table kept: {t['old_table']}{_old_table_fate(t, doc['now'])}")
        for line in lines:
            console.print(line)
        table = Table(show_header=True, header_style="bold")
        table.add_column("partition")
        table.add_column("from")
        table.add_column("to")
        table.add_column("rows (est.)", justify="right")
        table.add_column("notes")
        for p in t["partitions"]:
            flags = []
            if p["held"]:
                flags.append("held")
            if p["name"] in t["retention_due"]:
                flags.append("retention due")
            rows = str(p["rows_estimate"]) if p["rows_estimate_known"] else "?"
            table.add_row(p["name"], _fmt_bound(p["lower"]), _fmt_bound(p["upper"]), rows, ", ".join(flags))
        console.print(table)
        unknown = [p for p in t["partitions"] if not p["rows_estimate_known"]]
        if unknown:
            example = QualifiedName(unknown[0]["schema"], unknown[0]["name"]).literal
            console.print(f"rows (est.) ?: PostgreSQL has no estimate for {len(unknown)} partition(s) yet (not analyzed "
                          f"since created or written to); `ANALYZE {example}` gives one now, autovacuum does once "
                          "enough rows are written.")
        if t["removals"]:
            _render_removals(console, t["removals"], out.isatty())


def _render_removals(console: Any, removals: list[dict[str, Any]], terminal: bool) -> None:
    """The record of removed partitions. Piped or redirected: one full line each, nothing cut to a
    width. On a terminal: a table when it fits the width whole; else (the archive URI and its sha256
    alone are ~170 characters) a few lines each, none cut: the object's URI and sha256 on lines of their own."""
    from rich.measure import Measurement
    from rich.table import Table

    def where(r: dict[str, Any]) -> str:
        return f"{_fmt_bound(r['lower_bound'])} .. {_fmt_bound(r['upper_bound'])}"

    def ids(r: dict[str, Any]) -> str:
        return f"{r['min_id'] or '-'} .. {r['max_id'] or '-'}"

    if not terminal:
        console.print("removed partitions:")
        for r in removals:
            archive = f" -> {r['archive_uri']} sha256 {r['archive_sha256']}" if r["archive_uri"] else ""
            console.print(f"  {r['partition_name']}  {where(r)}  {r['row_count']} rows, ids {ids(r)}  {r['action']}{archive}  "
                          f"at {_fmt(r['removed_at'])}", overflow="ignore", crop=False)
        return
    rt = Table(title="removed partitions", show_header=True, header_style="bold")
    for col in ("partition", "range", "rows", "ids", "action", "archive", "removed"):
        rt.add_column(col, no_wrap=True)
    for r in removals:
        rt.add_row(r["partition_name"], where(r), str(r["row_count"]), ids(r), r["action"],
                   (r["archive_uri"] or "-") + (f" sha256 {r['archive_sha256']}" if r["archive_sha256"] else ""),
                   _fmt(r["removed_at"]))
    if Measurement.get(console, console.options.update_width(10_000), rt).maximum <= console.width:  # unclamped
        console.print(rt)
        return
    console.print("removed partitions:")
    for r in removals:
        console.print(f"  {r['partition_name']}  {where(r)}  {r['action']}")
        console.print(f"    {r['row_count']} rows, ids {ids(r)}; removed {_fmt(r['removed_at'])}")
        if r["archive_uri"]:
            console.print(f"    {r['archive_uri']}", soft_wrap=True)
        if r["archive_sha256"]:
            console.print(f"    sha256 {r['archive_sha256']}", soft_wrap=True)
