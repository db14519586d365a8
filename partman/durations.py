"""Durations as the contract spells them: `90s`, `30m`, `1h`, `7d`, or a PostgreSQL
interval string such as `7 days` / `1 hour 30 minutes`. Pure."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    # as PostgreSQL converts an interval to seconds (extract(epoch ...)): a month is 30 days, a
    # year 365.25 days
    "mon": 2592000, "mons": 2592000, "month": 2592000, "months": 2592000,
    "y": 31557600, "year": 31557600, "years": 31557600,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse a duration; raise ValueError with a readable message when it is not one."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)):
        return timedelta(seconds=float(text))
    s = str(text).strip().lower()
    if not s:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return timedelta(seconds=float(s))
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", s):
        parts = [int(p) for p in s.split(":")]
        while len(parts) < 3:
            parts.append(0)
        return timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.group(2) not in _UNITS:
            raise ValueError(
                f"{text!r} is not a duration: use 90s, 30m, 1h, 7d or an interval such as '7 days'"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=total)


def to_pg_interval(text: str | timedelta) -> str:
    """A PostgreSQL interval literal for a duration (`7d` -> `604800 seconds`)."""
    td = parse_duration(text)
    return f"{int(td.total_seconds())} seconds"
