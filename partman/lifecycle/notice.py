"""What a table's registration does at once, told before it happens: the partitions already past
the retention (which the first maintenance pass removes, irreversibly with `drop`) and, for
`register`, the current or future partitions the table lacks. The wording `convert` (its plan and
prompt) and `register` share; which partitions are due is retention's own rule
(intervals.past_retention). Pure: no connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

LISTED = 10  # partitions named in a paragraph; the rest are counted (status lists them all)

EFFECT = {
    "drop": "drops them: their rows are deleted for good, with no archive",
    "detach": "detaches them: each is left as a plain table{where}, its rows no longer part of {table}",
    "archive": "archives each to S3 (uploaded and verified) and then drops it from the database",
}


# what the action does to one partition that was removed before and is back (partman restore --attach)
AGAIN = {
    "drop": "drops it again, deleting its rows from the database (its archive in S3 stays)",
    "detach": "detaches it again, leaving it a plain table",
    "archive": "archives and removes it again",
}


def again(action: str | None) -> str:
    return AGAIN.get(action or "drop", AGAIN["drop"])


@dataclass
class Due:
    """A partition past the retention as soon as the table is registered."""

    name: str
    lower: date | datetime | None
    upper: date | datetime | None
    rows: int | None = None  # None: not known
    estimated: bool = False  # rows is the planner's estimate (pg_class.reltuples), not a count
    held: bool = False  # under legal hold: retention keeps it

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.name, "from": _iso(self.lower), "to": _iso(self.upper), "rows": self.rows,
                "rows_estimated": self.estimated, "held": self.held}


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, (date, datetime)) else v


def effect(action: str | None, table: str, moved_to: str | None = None) -> str:
    """What the retention action does to the partitions it removes."""
    text = EFFECT.get(action or "drop", EFFECT["drop"])
    return text.format(where=f" in schema {moved_to}" if moved_to else "", table=table)


def rows_text(d: Due) -> str:
    if d.rows is None:
        return "rows not counted"
    return f"{'~' if d.estimated else ''}{d.rows:,} row{'' if d.rows == 1 else 's'}"


def _listing(items: list[Due]) -> str:
    named = ", ".join(f"{d.name} ({rows_text(d)})" for d in items[:LISTED])
    more = len(items) - LISTED
    return named + (f" and {more} more" if more > 0 else "")


def past_retention_note(*, table: str, retention: str, action: str | None, cutoff: datetime | None,
                        items: list[Due], when: str, keep: str, moved_to: str | None = None) -> str | None:
    """One paragraph: which partitions are past the retention, what the first pass does to them
    and how to keep one; None when there are none (held ones are named as kept)."""
    removed = [d for d in items if not d.held]
    held = [d for d in items if d.held]
    if not removed:
        return None
    n = len(removed)
    total = sum(d.rows for d in removed if d.rows is not None)
    counted = all(d.rows is not None for d in removed)
    rows = f"; {'~' if any(d.estimated for d in removed) else ''}{total:,} rows in all" if counted and n > 1 else ""
    end = f"on or before {cutoff.replace(microsecond=0).isoformat(sep=' ')}, " if cutoff is not None else ""
    text = (f"{n} partition{'s' if n > 1 else ''} of {table} {'are' if n > 1 else 'is'} already past its retention "
            f"of {retention} ({'each range ends' if n > 1 else 'its range ends'} {end}now - {retention}): "
            f"{_listing(removed)}{rows}. "
            f"{when} {effect(action, table, moved_to)}. {keep}")
    if held:
        text += f" Under legal hold, so kept: {', '.join(d.name for d in held)}."
    return text


def past_retention_doc(*, retention: str | None, action: str | None, cutoff: datetime | None, items: list[Due],
                       note: str | None, table: str, moved_to: str | None = None) -> dict[str, Any] | None:
    """The same for a --json document; None when the table has no retention."""
    if not retention:
        return None
    removed = [d for d in items if not d.held]
    return {
        "retention": retention,
        "action": action or "drop",
        "cutoff": _iso(cutoff),
        "effect": effect(action, table, moved_to),
        "partitions": [d.to_json() for d in items],
        "rows": sum(d.rows for d in removed) if all(d.rows is not None for d in removed) else None,
        "note": note,
    }


def coverage_note(*, table: str, interval: str, premake: int, current: tuple[datetime, datetime],
                  current_covered: bool, ahead: int, has_default: bool, unhealthy: bool,
                  retention_first: bool) -> str | None:
    """`register`: the current period's partition or future ones the table lacks, what that means
    for writes and /health until maintenance creates them, and to run `partman maintain` now.
    None when the table is covered as maintain keeps it."""
    if current_covered and ahead >= premake:
        return None
    lo, hi = current
    if not current_covered:
        what = (f"{table} has no partition for the current {interval} ({lo.isoformat(sep=' ')} .. "
                f"{hi.isoformat(sep=' ')})")
        what += (": rows written for now land in its default partition" if has_default else
                 " and no default partition: an INSERT of a row for now fails with \"no partition of relation "
                 "... found for row\"")
        if premake:
            what += f", and it has {ahead} of the {premake} future partition{'s' if premake > 1 else ''} premake keeps"
    else:
        what = (f"{table} has {ahead} of the {premake} future {interval} partition{'s' if premake > 1 else ''} "
                "premake keeps beyond the current one")
    health = " /health reports the table unhealthy (503) until then." if unhealthy else ""
    first = (" That pass also applies the retention: hold first what it should keep (above)."
             if retention_first else "")
    return (f"{what}. partman creates the missing ones at the next maintenance pass, which the daemon runs on "
            f"its schedule (PARTMAN_MAINTENANCE_INTERVAL, default 1h).{health} Run `partman maintain` now to "
            f"create them at once.{first}")
