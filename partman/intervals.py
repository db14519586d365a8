"""Partition bounds per interval and time zone. Pure.

Bounds are aware datetimes in the table's time zone, on interval starts in that zone (a year
starts on Jan 1 00:00 local time). Wall-clock arithmetic follows PostgreSQL for times that do
not exist (DST gaps): the offset before the transition is used, as zoneinfo's fold=0 does."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Interval = Literal["year", "quarter", "month", "week", "day"]
INTERVALS: tuple[str, ...] = ("year", "quarter", "month", "week", "day")
KeyType = Literal["timestamptz", "timestamp", "date"]


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _local(value: date | datetime, tz: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=tz)  # timestamp without time zone: wall time
        return value.astimezone(tz)
    return datetime(value.year, value.month, value.day, tzinfo=tz)


def floor(value: date | datetime, interval: str, tz: ZoneInfo) -> datetime:
    """The start of the interval containing value, as an aware local datetime."""
    t = _local(value, tz)
    if interval == "year":
        d = date(t.year, 1, 1)
    elif interval == "quarter":
        d = date(t.year, 3 * ((t.month - 1) // 3) + 1, 1)
    elif interval == "month":
        d = date(t.year, t.month, 1)
    elif interval == "week":
        d = t.date() - timedelta(days=t.weekday())
    elif interval == "day":
        d = t.date()
    else:
        raise ValueError(f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}")
    # fold=0: a midnight inside a DST gap takes the offset before the transition, as PostgreSQL does
    start = datetime(d.year, d.month, d.day, tzinfo=tz)
    # Where clocks fell back across midnight (St. John's until 2011: 00:01 -> 23:01), midnight
    # comes twice and the bound is the first one; an instant in the repeated hour before the
    # second midnight reads as the previous day but lies past that bound: it belongs to the range
    # that starts there, as PostgreSQL routes it (compared in UTC: same-zone comparison ignores fold).
    if isinstance(value, datetime) and value.tzinfo is not None:
        nxt = step(start, interval)
        if value.astimezone(timezone.utc) >= nxt.astimezone(timezone.utc):
            return nxt
    return start


def step(start: datetime, interval: str, n: int = 1) -> datetime:
    """start moved by n intervals in wall-clock terms (start must be an interval start)."""
    tz = start.tzinfo
    d = start.date()
    if interval == "year":
        nd = date(d.year + n, d.month, d.day)
    elif interval in ("quarter", "month"):
        months = n * (3 if interval == "quarter" else 1)
        total = d.year * 12 + (d.month - 1) + months
        nd = date(total // 12, total % 12 + 1, 1)
    elif interval == "week":
        nd = d + timedelta(weeks=n)
    elif interval == "day":
        nd = d + timedelta(days=n)
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return datetime(nd.year, nd.month, nd.day, tzinfo=tz)


def ranges(
    lowest: date | datetime | None,
    highest: date | datetime | None,
    now: datetime,
    interval: str,
    tz: ZoneInfo,
    premake: int,
) -> list[tuple[datetime, datetime]]:
    """Contiguous [lower, upper) ranges from the interval of `lowest` (or now's) through the
    interval of max(highest, now), plus `premake` future ones."""
    current = floor(now, interval, tz)
    start = floor(lowest, interval, tz) if lowest is not None else current
    last = step(current, interval, premake)
    if highest is not None:
        last = max(last, floor(highest, interval, tz))
    out = []
    lo = min(start, current)
    while lo <= last:
        hi = step(lo, interval)
        out.append((lo, hi))
        lo = hi
    return out


def future_ranges(now: datetime, interval: str, tz: ZoneInfo, premake: int) -> list[tuple[datetime, datetime]]:
    """The current interval and `premake` ones after it."""
    cur = floor(now, interval, tz)
    return [(step(cur, interval, i), step(cur, interval, i + 1)) for i in range(premake + 1)]


def literal(value: datetime, key_type: str) -> str:
    """The bound as text the key type's input function reads back exactly."""
    if key_type == "date":
        return value.date().isoformat()
    if key_type == "timestamp":
        return value.replace(tzinfo=None).isoformat(sep=" ")
    return value.isoformat(sep=" ")


def is_due(upper: datetime | None, cutoff: datetime) -> bool:
    """A partition is due when its whole range is older than the retention."""
    return upper is not None and upper <= cutoff


def past_retention(upper: date | datetime | None, cutoff: datetime, now: datetime, interval: str, tz: ZoneInfo) -> bool:
    """The retention rule for a partition whose range ends at `upper` (None: MAXVALUE): due when
    its whole range is older than the retention (`upper <= now() - retention`, `cutoff` being the
    server's `now() - retention`), and never the current or a future partition, whatever the
    retention. Pure: maintenance (lifecycle.retention) and a conversion's plan both judge by it."""
    if upper is None:
        return False
    end = _local(upper, tz)
    if end > now or end > floor(now, interval, tz):
        return False
    return is_due(end, cutoff)
