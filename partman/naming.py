"""Names partman derives from a table name. Pure.

`<table>_p<YYYYMMDD>` for partitions, `<table>_default`, `<table>_old`, `<table>_partitioned`:
the table part is shortened (on a UTF-8 character boundary) so the whole fits PostgreSQL's
63-byte identifier limit; the suffix is never shortened (pg_partman's rule)."""

from __future__ import annotations

from datetime import date, datetime

MAX_IDENTIFIER_BYTES = 63

# the change-capture triggers a conversion (and a revert) puts on the live table: partman's own,
# never part of a table's model or of what the swap compares
CONVERT_TRIGGER = "partman_capture"
REVERT_TRIGGER = "partman_revert_capture"
PARTMAN_TRIGGERS = (CONVERT_TRIGGER, REVERT_TRIGGER)


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


# ---------------------------------------------------------------- PostgreSQL's own index names
# The names PostgreSQL gives the index a partition gets from its parent's (ChooseIndexName and
# makeObjectName in its source): partman's full-speed builds use them too, so a partition's
# indexes are named the same whether the conversion was paced, at full speed, or the partition
# came later from `maintain`.

def _clip(text: str, nbytes: int) -> str:
    """The longest prefix of whole characters within `nbytes` bytes (pg_mbcliplen)."""
    return text.encode()[:max(nbytes, 0)].decode("utf-8", errors="ignore")


def pg_object_name(name1: str, name2: str | None, label: str) -> str:
    """`name1_name2_label`, the longer of name1 and name2 shortened until it fits 63 bytes."""
    n1 = len(name1.encode())
    n2 = len(name2.encode()) if name2 is not None else 0
    avail = MAX_IDENTIFIER_BYTES - (1 if name2 is not None else 0) - len(label.encode()) - 1
    while n1 + n2 > avail:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    out = _clip(name1, n1)
    if name2 is not None:
        out += "_" + _clip(name2, n2)
    return out + "_" + label


def index_name_addition(columns: list[str]) -> str:
    """The index's column names joined by `_`, stopping once past 63 bytes (ChooseIndexNameAddition)."""
    out = ""
    for name in columns:
        if out:
            out += "_"
        out += _clip(name, MAX_IDENTIFIER_BYTES)
        if len(out.encode()) > MAX_IDENTIFIER_BYTES:
            break
    return out


def unique_column_names(names: list[str]) -> list[str]:
    """An index's column names, a repeated one numbered (ChooseIndexColumnNames)."""
    out: list[str] = []
    for original in names:
        name, n = original, 0
        while name in out:
            n += 1
            name = _clip(original, MAX_IDENTIFIER_BYTES - len(str(n))) + str(n)
        out.append(name)
    return out


def pg_index_name(table: str, columns: list[str], label: str, taken: set[str]) -> str:
    """The name PostgreSQL chooses for an index of `table`: `<table>_pkey`, `<table>_<columns>_key`
    (a unique constraint) or `<table>_<columns>_idx`, the label numbered past the names in `taken`."""
    addition = None if label == "pkey" else index_name_addition(columns)
    n = 0
    while True:
        name = pg_object_name(table, addition, label if n == 0 else f"{label}{n}")
        if name not in taken:
            return name
        n += 1
