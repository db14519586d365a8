"""Property tests (hypothesis) for partition bounds: every instant falls in exactly one range,
ranges are contiguous and start on interval starts in the table's zone, across leap years, DST
changes (including zones whose clocks jump at midnight) and non-UTC zones; cross-checked
against PostgreSQL's own date_trunc(unit, ts, zone)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from partman import intervals, naming

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",     # DST used to begin at midnight: 00:00 did not exist on those days
    "America/Havana",        # DST at midnight, too
    "Australia/Lord_Howe",   # 30-minute DST shift
    "Asia/Kolkata",          # +05:30, no DST
    "Pacific/Chatham",       # +12:45 / +13:45
    "America/St_Johns",      # -03:30 with DST
]
INTERVALS = list(intervals.INTERVALS)

instants = st.datetimes(
    min_value=datetime(1995, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(timezone.utc)
)
# instants near the moments that matter: year ends, leap days, DST changes in March/October
critical = st.builds(
    lambda y, md, minutes: datetime(y, *md, tzinfo=timezone.utc) + timedelta(minutes=minutes),
    st.integers(1996, 2040),
    st.sampled_from([(1, 1), (2, 28), (2, 29), (3, 1), (3, 10), (3, 26), (3, 31), (10, 1), (10, 27), (11, 3), (12, 31)]),
    st.integers(-36 * 60, 36 * 60),
)


@st.composite
def moments(draw):
    try:
        return draw(st.one_of(instants, critical))
    except ValueError:  # Feb 29 of a non-leap year
        assume(False)


@settings(max_examples=400, deadline=None)
@given(moments(), st.sampled_from(ZONES), st.sampled_from(INTERVALS))
def test_every_instant_is_in_its_range(t, zone_name, interval):
    tz = intervals.zone(zone_name)
    lo = intervals.floor(t, interval, tz)
    hi = intervals.step(lo, interval)
    assert lo <= t < hi
    # the bounds are interval starts: flooring them again changes nothing
    assert intervals.floor(lo, interval, tz) == lo
    assert intervals.floor(hi, interval, tz) == hi
    # on local midnight of the right day
    local = lo.astimezone(timezone.utc).astimezone(tz)  # normalised: a DST-gap midnight moves forward
    wall = lo.replace(tzinfo=None)
    assert (wall.hour, wall.minute) == (0, 0)
    if interval == "year":
        assert (wall.month, wall.day) == (1, 1)
    elif interval == "quarter":
        assert wall.month in (1, 4, 7, 10) and wall.day == 1
    elif interval == "month":
        assert wall.day == 1
    elif interval == "week":
        assert wall.weekday() == 0
    # the real instant is local midnight, or just after it when midnight fell into a DST gap
    assert timedelta(0) <= local.replace(tzinfo=None) - wall <= timedelta(hours=1)


@settings(max_examples=200, deadline=None)
@given(moments(), st.sampled_from(ZONES), st.sampled_from(INTERVALS), st.integers(0, 6))
def test_ranges_are_contiguous_and_cover_now_plus_premake(t, zone_name, interval, premake):
    tz = intervals.zone(zone_name)
    lowest = t - timedelta(days=400)
    r = intervals.ranges(lowest, None, t, interval, tz, premake)
    assert r[0][0] == intervals.floor(lowest, interval, tz)
    assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
    assert all(lo < hi for lo, hi in r)
    cur = intervals.floor(t, interval, tz)
    assert r[-1][0] == intervals.step(cur, interval, premake)
    fut = intervals.future_ranges(t, interval, tz, premake)
    assert fut == r[-(premake + 1):]
    # names are unique per range and carry the local lower bound
    names = [naming.partition_name("events", lo) for lo, _ in r]
    assert len(set(names)) == len(names)


@settings(max_examples=200, deadline=None)
@given(moments(), st.sampled_from(ZONES), st.sampled_from(INTERVALS), st.sampled_from(["timestamptz", "timestamp", "date"]))
def test_literals_read_back_exactly(t, zone_name, interval, key_type):
    tz = intervals.zone(zone_name)
    lo = intervals.floor(t, interval, tz)
    text = intervals.literal(lo, key_type)
    if key_type == "timestamptz":
        # the same instant (compared as instants: a lower bound at a local midnight that a
        # spring-forward skips, America/Havana 2001-04-01, is a wall time in the gap, and PEP 495
        # makes such a datetime unequal to every datetime of another zone)
        assert datetime.fromisoformat(text).timestamp() == lo.timestamp()
    elif key_type == "timestamp":
        assert datetime.fromisoformat(text) == lo.replace(tzinfo=None)
    else:
        assert datetime.fromisoformat(text).date() == lo.date()


def test_leap_years():
    utc = intervals.zone("UTC")
    feb29 = datetime(2024, 2, 29, 23, 59, tzinfo=timezone.utc)
    assert intervals.floor(feb29, "day", utc) == datetime(2024, 2, 29, tzinfo=utc)
    assert intervals.step(datetime(2024, 2, 29, tzinfo=utc), "day") == datetime(2024, 3, 1, tzinfo=utc)
    assert intervals.floor(feb29, "month", utc) == datetime(2024, 2, 1, tzinfo=utc)
    assert intervals.step(datetime(2024, 2, 1, tzinfo=utc), "month") == datetime(2024, 3, 1, tzinfo=utc)
    assert intervals.step(datetime(2024, 1, 1, tzinfo=utc), "year") - datetime(2024, 1, 1, tzinfo=utc) == timedelta(days=366)
    assert intervals.step(datetime(2023, 1, 1, tzinfo=utc), "year") - datetime(2023, 1, 1, tzinfo=utc) == timedelta(days=365)
    assert intervals.floor(feb29, "quarter", utc) == datetime(2024, 1, 1, tzinfo=utc)


def test_dst_days_are_23_and_25_hours_long():
    berlin = intervals.zone("Europe/Berlin")
    spring = intervals.floor(datetime(2026, 3, 29, 12, tzinfo=timezone.utc), "day", berlin)
    utc = timezone.utc
    assert intervals.step(spring, "day").astimezone(utc) - spring.astimezone(utc) == timedelta(hours=23)
    autumn = intervals.floor(datetime(2026, 10, 25, 12, tzinfo=timezone.utc), "day", berlin)
    assert intervals.step(autumn, "day").astimezone(utc) - autumn.astimezone(utc) == timedelta(hours=25)
    # 23:30 UTC on Dec 31 is already next year in Berlin
    assert intervals.floor(datetime(2025, 12, 31, 23, 30, tzinfo=timezone.utc), "year", berlin).year == 2026


@pytest.fixture
def pg(conn):
    return conn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=moments(), zone_name=st.sampled_from(ZONES), interval=st.sampled_from(INTERVALS))
def test_bounds_match_postgresql_date_trunc(pg, t, zone_name, interval):
    tz = intervals.zone(zone_name)
    ours = intervals.floor(t, interval, tz)
    theirs = pg.execute("SELECT date_trunc(%s, %s::timestamptz, %s)", (interval, t, zone_name)).fetchone()[0]
    after = intervals.step(theirs.astimezone(tz), interval)
    if t.timestamp() >= after.timestamp():
        # the repeated hour before a second midnight (fall-back across midnight): date_trunc gives
        # the previous day, whose range ends at the first midnight; the row goes to the next range
        theirs = after
    assert ours.timestamp() == theirs.timestamp()  # not ==: PEP 495 makes gap times unequal to everything
    # and the literal partman writes into DDL means the same instant to PostgreSQL
    back = pg.execute("SELECT %s::timestamptz", (intervals.literal(ours, "timestamptz"),)).fetchone()[0]
    assert back.timestamp() == ours.timestamp()


def test_the_repeated_hour_before_a_second_midnight_goes_where_postgresql_routes_it(pg):
    """St. John's fell back at 00:01 (to 23:01) until 2011: Oct 27, 1996 began twice. 02:31 UTC
    reads 23:01 Oct 26 (the second time), but the Oct 26 range ends at the first midnight."""
    tz = intervals.zone("America/St_Johns")
    t = datetime(1996, 10, 27, 2, 31, tzinfo=timezone.utc)
    lo = intervals.floor(t, "day", tz)
    hi = intervals.step(lo, "day")
    assert lo.timestamp() <= t.timestamp() < hi.timestamp()
    assert lo.date().isoformat() == "1996-10-27"
    pg.execute("CREATE TABLE days (ts timestamptz) PARTITION BY RANGE (ts)")
    for day in (lo, intervals.step(lo, "day", -1)):
        pg.execute(f"CREATE TABLE days_{day:%d} PARTITION OF days FOR VALUES FROM "
                   f"('{intervals.literal(day, 'timestamptz')}') TO ('{intervals.literal(intervals.step(day, 'day'), 'timestamptz')}')")
    pg.execute("INSERT INTO days VALUES (%s)", (t,))
    assert pg.execute("SELECT tableoid::regclass::text FROM days").fetchone()[0] == f"days_{lo:%d}"


@pytest.mark.parametrize("zone_name, day", [
    ("America/Sao_Paulo", "2016-10-16"),  # clocks jumped from 00:00 to 01:00
    ("America/Havana", "2020-03-08"),
    ("Asia/Beirut", "2023-03-26"),
])
def test_midnight_inside_a_dst_gap_agrees_with_postgresql(pg, zone_name, day):
    tz = intervals.zone(zone_name)
    t = datetime.fromisoformat(day + "T12:00:00").replace(tzinfo=tz)
    for interval in ("day", "week", "month"):
        ours = intervals.floor(t, interval, tz)
        theirs = pg.execute("SELECT date_trunc(%s, %s::timestamptz, %s)", (interval, t, zone_name)).fetchone()[0]
        assert ours.timestamp() == theirs.timestamp(), interval  # == on a gap time is always False (PEP 495)
        assert ours <= t < intervals.step(ours, interval)
    lo = intervals.floor(t, "day", tz)
    # the day starts at 01:00 local (the first instant that exists), 23 hours long
    assert lo.astimezone(timezone.utc).astimezone(tz).hour == 1
    assert intervals.step(lo, "day").astimezone(timezone.utc) - lo.astimezone(timezone.utc) == timedelta(hours=23)
