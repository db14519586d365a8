"""Names partman derives from a table name. Pure.

`<table>_p<YYYYMMDD>` for partitions, `<table>_default`, `<table>_old`, `<table>_partitioned`:
the table part is shortened (on a UTF-8 character boundary) so the whole fits PostgreSQL's
63-byte identifier limit; the suffix is never shortened (pg_partman's rule)."""

from __future__ import annotations

from datetime import date, datetime

MAX_IDENTIFIER_BYTES = 63


def derived(table: str, suffix: str) -> str:
    """`table + suffix`, with the table part cut so the result fits in 63 bytes."""
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode())
    if room <= 0:
        raise ValueError(f"suffix {suffix!r} leaves no room for the table name")
    encoded = table.encode()
    if len(encoded) > room:
        table = encoded[:room].decode("utf-8", errors="ignore")
    return table + suffix


def partition_name(table: str, lower: date | datetime) -> str:
    return derived(table, f"_p{lower:%Y%m%d}")


def default_name(table: str) -> str:
    return derived(table, "_default")


def old_name(table: str) -> str:
    return derived(table, "_old")


def partitioned_name(table: str) -> str:
    """What `revert` renames the partitioned table to."""
    return derived(table, "_partitioned")


def shadow_name(table: str) -> str:
    """The shadow partitioned table while a conversion runs (lives in partman's work schema)."""
    return derived(table, "_partman_new")
