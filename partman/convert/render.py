"""How a plan and a result read: SQL on stdout with the plan's figures as SQL comments (so the
dry-run output can be reviewed, or even run by hand), or one JSON document."""

from __future__ import annotations

from typing import Any

import psycopg

from ..durations import approximately
from ..lifecycle import notice
from .plan import MAX_PAUSE, ConversionPlan


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _pace(p: ConversionPlan) -> str:
    o = p.options
    if o.sleep == 0:
        return f"full speed (--sleep 0, no throttle), batches of up to {o.batch_size:,} rows: expected ~{approximately(p.expected_seconds)}"
    if not p.throttled:
        return f"batches of up to {o.batch_size:,} rows, {o.sleep}s apart: expected ~{approximately(p.expected_seconds)}"
    return (f"gentle: short batches {o.sleep}s apart, each pause stretched (up to {MAX_PAUSE:.0f} s) while the "
            f"application's inserts are slower than idle: expected ~{approximately(p.expected_seconds)} for the copy and "
            f"the verification on an idle server, up to ~{approximately(p.expected_seconds_max)} on a busy one (--sleep 0: full speed)")


def past_retention_note(p: ConversionPlan) -> str | None:
    """The planned partitions already past the retention, which the first maintenance pass after
    the conversion removes, and how to keep one; None when there are none."""
    o = p.options
    if not o.retention:
        return None
    action = o.retention_action or "drop"
    return notice.past_retention_note(
        table=str(p.table), retention=o.retention, action=action, cutoff=p.stats.retention_cutoff,
        items=p.past_retention,
        when="The first maintenance pass after the conversion (`partman maintain`, or the daemon's next pass)",
        keep=(f"To keep one, convert without --retention, hold it once converted (`partman hold "
              f"{p.table.schema}.{p.past_retention[0].name if p.past_retention else '<partition>'} --reason ...`; "
              "retention never removes a held partition), then set the retention with `partman register "
              f"{p.table.arg} --column {o.column} --interval {o.interval} --retention '{o.retention}' "
              f"--retention-action {action}`."))


def plan_json(p: ConversionPlan, conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "table": str(p.table),
        "column": p.options.column,
        "key_type": p.key_type,
        "interval": p.options.interval,
        "timezone": p.options.timezone,
        "premake": p.options.premake,
        "retention": p.options.retention,
        "retention_action": p.options.retention_action,
        "drop_old_after": p.options.drop_old_after,
        "past_retention": notice.past_retention_doc(
            retention=p.options.retention, action=p.options.retention_action, cutoff=p.stats.retention_cutoff,
            items=p.past_retention, note=past_retention_note(p), table=str(p.table)),
        "rows_estimate": p.rows_estimate,
        "bytes_estimate": p.bytes_estimate,
        "disk_needed_bytes": p.bytes_estimate,
        "expected_seconds": round(p.expected_seconds, 1),
        "expected_seconds_max": round(p.expected_seconds_max, 1),
        "indexes_before_copy": p.indexes_first,
        "replicas": _replicas_json(p.extra.get("replicas")),
        "key_range": [p.stats.min_key, p.stats.max_key],
        "null_keys": p.stats.null_keys,
        "partitions": [
            {"name": x.name, "from": x.lower.isoformat(), "to": x.upper.isoformat()} for x in p.partitions
        ],
        "default_partition": p.default,
        "old_table": str(p.old),
        "work_schema": p.work_schema,
        "copy_key": [k.name for k in p.copy_key],
        "widened_keys": p.widened,
        "recreated": p.recreated,
        "warnings": p.warnings,
        "refusals": p.refusals,
        "sql": [{"phase": phase, "sql": stmt.as_string(conn)} for phase, stmt in p.statements()],
    }


def _replicas_json(r: Any) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"connected": r.connected, "lag_hidden": r.hidden, "replay_lag_s": sorted(r.lags, reverse=True)}


_WHEN = {
    "indexes": {True: ": on the empty partitions, before the copy (which keeps them up to date)",
                False: ": built after the copy, partition by partition, then attached by these statements"},
    "foreign keys": {b: ": each partition's NOT VALID, then validated (writers of the referenced table go on), then "
                        "the table's, which takes the partitions' as its own without reading them" for b in (True, False)},
    "swap": {False: ": autovacuum back on the partitions as on the original (off while the copy filled them), "
                    "before the table is locked"},  # paced (True): autovacuum is left alone, no such statements
}


def plan_text(p: ConversionPlan, conn: psycopg.Connection) -> str:
    o = p.options
    if p.refusals:  # no plan to show, only why (and what else it would warn about)
        return "\n".join([f"-- partman convert plan for {p.table}: refused",
                           *(f"-- REFUSED: {r}" for r in p.refusals), *(f"-- WARNING: {w}" for w in p.warnings)])
    lines = [
        f"-- partman convert plan for {p.table}",
        f"-- partition key {o.column} ({p.key_type or '?'}), one partition per {o.interval}, bounds in {o.timezone}",
        f"-- rows: ~{p.rows_estimate:,} ({_size(p.bytes_estimate)} with indexes); the copy needs about "
        f"{_size(p.bytes_estimate)} of free disk until <table>_old is dropped",
        f"-- key range: {p.stats.min_key} .. {p.stats.max_key}; rows with a NULL key: {p.stats.null_keys}",
        f"-- pace: {_pace(p)}",
        *([f"-- replicas: {p.extra['replicas_note']}"] if p.extra.get("replicas_note") else []),
        f"-- partitions ({len(p.partitions)}, {o.premake} beyond the current {o.interval}) + default {p.default}:",
    ]
    past = {d.name: d for d in p.past_retention}
    for x in p.partitions:
        mark = (f"  past retention: {notice.rows_text(past[x.name])}, removed ({o.retention_action or 'drop'}) by the first pass"
                if x.name in past else "")
        lines.append(f"--   {x.name:<40} [{x.lower.isoformat(sep=' ')}, {x.upper.isoformat(sep=' ')}){mark}")
    for note in p.widened:
        lines.append(f"-- widened key: {note}")
    for kind, names in p.recreated.items():
        lines.append(f"-- recreated on the new table: {kind}: {', '.join(names)}")
    lines.append(f"-- the original table is kept as {p.old}; the swap takes ACCESS EXCLUSIVE for milliseconds, "
                 f"with lock_timeout {o.lock_timeout_ms} ms per attempt, retried")
    if o.retention:
        lines.append(f"-- retention registered (applied by maintain): {o.retention}, action {o.retention_action or 'drop'}"
                     + ("" if p.past_retention else "; no planned partition is past it yet"))
        note = past_retention_note(p)
        if note:
            lines.append(f"-- PAST RETENTION: {note}")
    for w in p.warnings:
        lines.append(f"-- WARNING: {w}")
    lines.append("")
    lines.append(f"CREATE SCHEMA {p.work_schema};  -- partman's work schema for this conversion")
    copy = ("\n-- copy: batched INSERT ... SELECT by primary-key ranges, change capture trigger on the source\n"
            "-- catch-up: replay captured changes")
    phase = None
    for ph, stmt in p.statements():
        if ph != phase:
            if ph == "swap":
                lines.append(copy)
                copy = ""
            lines.append(f"\n-- {ph}{_WHEN.get(ph, {}).get(p.indexes_first, '')}")
            phase = ph
        lines.append(stmt.as_string(conn) + ";")
    if copy:
        lines.append(copy)
    lines.append(f"-- swap: LOCK, final replay, rename to {p.old.name}, move partitions into {p.table.schema}, "
                 "recreate triggers/views/sequence ownership")
    return "\n".join(lines)


def plan_summary(p: ConversionPlan) -> str:
    """What a conversion's confirmation asks about, in a few lines (the dry-run shows the whole plan)."""
    o = p.options
    span = (f"from {p.partitions[0].lower:%Y-%m-%d} to {p.partitions[-1].upper:%Y-%m-%d} "
            if p.partitions else "")
    lines = [
        f"partman convert {p.table} (--dry-run shows the whole plan):",
        f"  key {o.column} ({p.key_type or '?'}), ~{p.rows_estimate:,} rows ({_size(p.bytes_estimate)}), "
        f"expected ~{approximately(p.expected_seconds)}",
        f"  {len(p.partitions)} {o.interval} partitions {span}in {o.timezone} ({o.premake} beyond the current "
        f"{o.interval}) + default {p.default}",
        f"  the original is kept as {p.old}",
        *(f"  widened key: {w}" for w in p.widened),
        *(f"  WARNING: {w}" for w in p.warnings),
    ]
    note = past_retention_note(p)
    if note:
        lines.append(f"  PAST RETENTION: {note}")
    return "\n".join(lines)


def result_summary(conversion: dict[str, Any] | None, managed: Any) -> dict[str, Any]:
    c = conversion or {}
    return {
        "table": f"{c.get('schema_name')}.{c.get('table_name')}",
        "status": c.get("status"),
        "rows_copied": c.get("rows_copied"),
        "rows_caught_up": c.get("rows_caught_up"),
        "longest_batch_ms": c.get("longest_batch_ms"),
        "swap_lock_ms": c.get("swap_lock_ms"),
        "swap_attempts": c.get("swap_attempts"),
        "verify": c.get("verify"),
        "widened_keys": (c.get("options") or {}).get("widened_keys") or [],
        "old_table": getattr(managed, "old_table_name", None),
        "started_at": c.get("started_at"),
        "finished_at": c.get("finished_at"),
    }


def result_text(s: dict[str, Any]) -> str:
    v = s.get("verify") or {}
    lock = s.get("swap_lock_ms")
    longest = s.get("longest_batch_ms")
    return "\n".join(
        [
            f"converted {s['table']}: {s['status']}",
            f"  rows copied        {s.get('rows_copied') or 0:,}",
            f"  rows caught up     {s.get('rows_caught_up') or 0:,}",
            f"  longest batch      {longest:.0f} ms" if longest is not None else "  longest batch      -",
            f"  swap lock held     {lock:.0f} ms ({s.get('swap_attempts')} attempt(s))" if lock is not None else "  swap lock held     -",
            f"  verified           {v.get('old_rows', 0):,} rows of the old table present; "
            f"{v.get('missing_or_different', 0)} missing or different, {v.get('repaired', 0)} repaired",
            f"  original kept as   {s.get('old_table')}",
            *(f"  key widened        {w}" for w in s.get("widened_keys") or []),
        ]
    )
