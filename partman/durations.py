"""Durations as the contract spells them: `90s`, `30m`, `1h`, `7d`, or a PostgreSQL
interval string such as `7 days` / `1 hour 30 minutes` / `1 day 02:00` / `@ 1 hour` / ISO 8601's
`PT5M`. Converted to seconds as PostgreSQL's `extract(epoch ...)` does (a month 30 days, a year
365.25), but for ISO 8601's years, which pydantic (parsing that form) counts as 365 days. Pure."""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

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
    "decade": 315576000, "decades": 315576000,
    "century": 3155760000, "centuries": 3155760000,
    "millennium": 31557600000, "millennia": 31557600000, "millenniums": 31557600000,
    "ms": 0.001, "msec": 0.001, "msecs": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "us": 0.000001, "usec": 0.000001, "usecs": 0.000001, "microsecond": 0.000001, "microseconds": 0.000001,
}
# a number and its unit, or a time of day's form (`02:00`, `1:30:15.5`), as PostgreSQL reads them
_PART = re.compile(r"\s*(?:([+-]?\d+(?:\.\d+)?)\s*([a-z]+)|([+-])?(\d+):(\d{2})(?::(\d{2}(?:\.\d+)?))?)\s*")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse a duration; raise ValueError with a readable message when it is not one."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)):
        return timedelta(seconds=float(text))
    s = str(text).strip()
    wrong = ValueError(f"{text!r} is not a duration: use 90s, 30m, 1h, 7d or an interval such as '7 days'")
    if not s:
        raise ValueError("empty duration")
    if s[0] in "pP":  # ISO 8601: P1DT2H, PT5M
        try:
            return TypeAdapter(timedelta).validate_python(s.upper())
        except ValidationError:
            raise wrong from None
    s = s.lower().removeprefix("@").strip()  # PostgreSQL's verbose output: `@ 1 hour`
    if s.endswith(" ago"):  # `1 hour ago`: negative
        return -parse_duration(s[: -len(" ago")])
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", s):
        return timedelta(seconds=float(s))
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or (m.group(2) is not None and m.group(2) not in _UNITS):
            raise wrong
        if m.group(2) is not None:
            total += float(m.group(1)) * _UNITS[m.group(2)]
        else:
            hours, minutes, seconds = int(m.group(4)), int(m.group(5)), float(m.group(6) or 0)
            total += (-1 if m.group(3) == "-" else 1) * (hours * 3600 + minutes * 60 + seconds)
        pos = m.end()
    if pos == 0:
        raise wrong
    return timedelta(seconds=total)


def to_pg_interval(text: str | timedelta) -> str:
    """A PostgreSQL interval literal for a duration (`7d` -> `604800 seconds`)."""
    td = parse_duration(text)
    return f"{int(td.total_seconds())} seconds"


def approximately(seconds: float) -> str:
    """A duration as a person reads an estimate: `40 s`, `25 min`, `3.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
