"""TableModel + options -> ConversionPlan: the shadow's DDL, partitions, indexes (with the
widened keys), what is recreated in the swap, estimates and warnings. Pure: no connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import sql

from .. import intervals, naming
from ..db import QualifiedName, quote_ident
from ..lifecycle.notice import Due
from ..partitions import create_default_sql, create_partition_sql
from . import ddl, suitability
from .capture import KeyColumn

# A conservative copy rate for the estimate shown by --dry-run (rows/s, 2 cores, ~300 B rows),
# into partitions without indexes; each index the copy keeps up to date (paced mode: indexes
# first) divides it: measured ~12-16k rows/s with a primary key and 3 indexes.
ESTIMATED_ROWS_PER_SECOND = 80_000
# Throttled, a batch aims at copy.GENTLE_BATCH_MS (25 ms): measured ~1,200 rows into unindexed
# partitions, 230-340 with 4 indexes; the pause between batches grows up to MAX_PAUSE while the
# application's inserts are slow (throttle.py).
GENTLE_BATCH_ROWS = 1_200
MAX_PAUSE = 2.0
# The verification after the swap compares ~500k rows/s on one connection (ledger rows, 2 cores);
# estimated at half that. Throttled, it goes in ranges of about GENTLE_VERIFY_ROWS rows (their
# size then follows their duration: verify.RangeRows), paused like the copy's batches.
ESTIMATED_VERIFY_ROWS_PER_SECOND = 250_000
GENTLE_VERIFY_ROWS = 2_000
MAX_PARTITIONS = 2000  # one conversion's partitions: planning time, catalog size and the plan's length


@dataclass
class Options:
    column: str
    interval: str = "year"
    batch_size: int = 10_000
    sleep: float = 0.1
    premake: int = 3
    retention: str | None = None
    retention_action: str | None = None
    lock_timeout_ms: int = 500
    timezone: str = "UTC"
    drop_old_after: str | None = None
    throttle: bool = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PartitionSpec:
    name: str
    lower: datetime
    upper: datetime


@dataclass
class KeyStats:
    """What the server said about the key column (read before planning)."""

    min_key: date | datetime | None
    max_key: date | datetime | None
    null_keys: int
    now: datetime
    infinite_keys: int = 0  # rows at -infinity/infinity: no bounded partition holds them
    retention_cutoff: datetime | None = None  # the server's now() - retention (None: no retention)


@dataclass
class ConversionPlan:
    table: QualifiedName
    options: Options
    key_type: str
    work_schema: str
    shadow: QualifiedName
    old: QualifiedName
    default: str
    partitions: list[PartitionSpec]
    copy_key: list[KeyColumn]
    columns: list[str]
    overriding: bool
    shadow_ddl: list[sql.Composable]
    index_ddl: list[Any]  # ddl.IndexDDL
    decorate_ddl: list[sql.Composable]
    foreign_keys: list[Any]  # ddl.ConstraintStep
    # what the swap runs on each partition before it locks the table (ddl.after_load), for the dry-run
    # of a conversion at --sleep 0 (a paced one leaves autovacuum alone); the swap runs it on the
    # partitions the shadow has whose autovacuum is not the original's (swap.loaded_without_autovacuum)
    after_load_ddl: list[sql.Composable]
    recreated: dict[str, list[str]]
    widened: list[str]
    warnings: list[str]
    refusals: list[str]
    rows_estimate: int
    bytes_estimate: int
    stats: KeyStats
    # planned partitions already past the retention: the first maintenance pass after the swap
    # removes them (their rows are counted by the caller, which has the connection)
    past_retention: list[Due] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def partition_key(self) -> KeyColumn | None:
        """The partition column as the change log records it."""
        return KeyColumn(self.options.column, self.key_type) if self.key_type else None

    @property
    def throttled(self) -> bool:
        return self.options.sleep > 0 and self.options.throttle

    @property
    def indexes_first(self) -> bool:
        """Paced (--sleep > 0): the indexes are created on the empty partitions before the copy,
        which then keeps them up to date batch by batch. An index build after the copy is one
        statement per partition index that writes the whole index (and its WAL) at once: in the
        benchmark those builds, paced 2 s apart, were a fifth to a half of the conversion's time
        and the phase where the application's inserts suffered most, and at 44M rows each is a
        burst of seconds no pause can split. At full speed the builds after the copy are faster
        in total, so --sleep 0 keeps them there."""
        return self.options.sleep > 0

    def _index_cost(self) -> int:
        """How many times a copied row costs its plain insert: 1 + the indexes the copy maintains."""
        return 1 + (len(self.index_ddl) if self.indexes_first else 0)

    def _copy_rate(self) -> float:
        return ESTIMATED_ROWS_PER_SECOND / self._index_cost()

    def _batches(self) -> int:
        if self.throttled:
            rows = min(self.options.batch_size, GENTLE_BATCH_ROWS // self._index_cost())
        else:
            rows = self.options.batch_size
        return max(1, self.rows_estimate // max(1, rows))

    def _pauses(self) -> int:
        """Pauses at the chosen pace: one after each copy batch, and (throttled) after each of
        the verification's ranges."""
        ranges = self.rows_estimate // GENTLE_VERIFY_ROWS if self.throttled else 0
        return self._batches() + ranges

    def _work_seconds(self) -> float:
        return self.rows_estimate / self._copy_rate() + self.rows_estimate / ESTIMATED_VERIFY_ROWS_PER_SECOND

    @property
    def expected_seconds(self) -> float:
        """The copy and the verification at the chosen pace, when the application does not slow
        down (the throttle idle)."""
        return self._work_seconds() + self._pauses() * self.options.sleep

    @property
    def expected_seconds_max(self) -> float:
        """When the throttle holds every pause at its longest (the application suffers throughout)."""
        if not self.throttled:
            return self.expected_seconds
        return self._work_seconds() + self._pauses() * max(self.options.sleep, MAX_PAUSE)

    def statements(self) -> list[tuple[str, sql.Composable]]:
        """(phase, statement) in execution order, for the dry-run."""
        out: list[tuple[str, sql.Composable]] = [("shadow", s) for s in self.shadow_ddl]
        out += [("indexes", i.statement) for i in self.index_ddl]
        for step in self.foreign_keys:
            out += [("foreign keys", s) for s in (step.add, step.validate, step.comment) if s is not None]
        out += [("decorate", s) for s in self.decorate_ddl]
        out += [("swap", s) for s in self.after_load_ddl]
        return out


def work_schema_for(catalog_schema: str, table_oid: int) -> str:
    return naming.derived(catalog_schema, f"_w{table_oid}")


def build(model: Any, options: Options, stats: KeyStats, catalog_schema: str, key: list[KeyColumn]) -> ConversionPlan:
    """Plan a conversion. `model` is partman.introspect.TableModel."""
    table: QualifiedName = model.table
    refusals = list(suitability.refusals(model, options.column))
    warnings = list(suitability.warnings(model, options.column))
    key_type = _key_type(model, options.column)
    if not key:
        refusals.append(
            f"{table} has no primary key or unique index over NOT NULL columns: the online copy walks such a key and "
            "the change capture records it. Add a primary key first."
        )
    if stats.null_keys:
        refusals.append(
            f"{stats.null_keys} row(s) of {table} have a NULL {options.column}: they would land in the default "
            f"partition, where retention and coverage cannot see them. Give those rows a value "
            f"(UPDATE {table.literal} SET {quote_ident(options.column)} = ... WHERE {quote_ident(options.column)} IS NULL) "
            f"and make the column NOT NULL (ALTER TABLE {table.literal} ALTER COLUMN {quote_ident(options.column)} "
            "SET NOT NULL), then run again."
        )
    if stats.infinite_keys:
        warnings.append(
            f"{stats.infinite_keys} row(s) of {table} have {options.column} = -infinity or infinity: no partition of "
            f"one {options.interval} can hold them, so they go to the default partition "
            f"{naming.default_name(table.name)} (reported by status and /health)."
        )
    try:
        tz = intervals.zone(options.timezone)
    except ValueError as exc:
        refusals.append(f"{exc}: pass an IANA time zone name such as UTC or Europe/Berlin to --timezone.")
        tz = intervals.zone("UTC")
    work = work_schema_for(catalog_schema, model.oid)
    shadow = QualifiedName(work, naming.shadow_name(table.name))
    everything = [p.name for p in getattr(model, "publications", []) if p.scope == "all"]
    if everything:
        warnings.append(
            f"{', '.join(everything)} {'publishes' if len(everything) == 1 else 'publish'} all tables, so while the "
            f"conversion runs partman's work tables are published too (schema {work}: the shadow table "
            f"{shadow.name}, its partitions and the change log), as partman's catalog is (schema {catalog_schema}): "
            "a subscriber without tables of those names stops "
            "replicating (\"logical replication target relation ... does not exist\") until it has them."
        )
    ranges = (
        intervals.ranges(stats.min_key, stats.max_key, stats.now, options.interval, tz, options.premake)
        if key_type
        else []
    )
    if len(ranges) > MAX_PARTITIONS:
        refusals.append(
            f"{len(ranges)} partitions of one {options.interval} would be needed to cover {stats.min_key} .. "
            f"{stats.max_key} and --premake {options.premake} ahead (at most {MAX_PARTITIONS}): choose a longer "
            "--interval or a smaller --premake."
        )
        ranges = []  # a plan that lists them all would be unreadable, and is refused anyway
    parts = [PartitionSpec(naming.partition_name(table.name, lo), lo, hi) for lo, hi in ranges]
    past = ([Due(p.name, p.lower, p.upper) for p in parts
             if intervals.past_retention(p.upper, stats.retention_cutoff, stats.now, options.interval, tz)]
            if options.retention and stats.retention_cutoff is not None else [])
    default = naming.default_name(table.name)
    shadow_ddl: list[sql.Composable] = []
    index_ddl: list[Any] = []
    decorate_ddl: list[sql.Composable] = []
    foreign_keys: list[Any] = []
    after_load_ddl: list[sql.Composable] = []
    recreated: dict[str, list[str]] = {}
    widened: list[str] = []
    if not refusals and key_type:
        shadow_ddl = list(ddl.create_shadow(model, shadow, options.column))
        # at full speed autovacuum stays off the partitions until the swap (ddl.LOADING_OFF)
        storage = ddl.partition_options(model, loading=options.sleep == 0)
        leaves = [(create_partition_sql(shadow, QualifiedName(work, p.name), p.lower, p.upper, key_type, storage),
                   QualifiedName(work, p.name)) for p in parts]
        leaves.append((create_default_sql(shadow, QualifiedName(work, default), storage), QualifiedName(work, default)))
        for stmt, leaf in leaves:
            shadow_ddl.append(stmt)
            if options.sleep == 0:  # paced, the partitions are made with the original's autovacuum settings
                after_load_ddl += ddl.after_load(model, leaf)
        shadow_ddl += ddl.column_statistics(model, shadow, [leaf for _, leaf in leaves])
        shadow_ddl += ddl.extended_statistics(model, shadow, [leaf for _, leaf in leaves])
        index_ddl = list(ddl.create_indexes(model, shadow, options.column))
        widened = [i.note for i in index_ddl if getattr(i, "widened", False)]
        leaf_names = [leaf for _, leaf in leaves]
        decorate_ddl = list(ddl.decorate(model, shadow, leaf_names)) + ddl.replica_identity(
            model, shadow, index_ddl, options.column)
        foreign_keys = ddl.foreign_keys(model, shadow, leaf_names)
        recreated = describe_recreated(model)
    return ConversionPlan(
        table=table,
        options=options,
        key_type=key_type or "",
        work_schema=work,
        shadow=shadow,
        old=QualifiedName(table.schema, naming.old_name(table.name)),
        default=default,
        partitions=parts,
        copy_key=key,
        columns=ddl.column_names(model),
        overriding=ddl.needs_overriding(model),
        shadow_ddl=shadow_ddl,
        index_ddl=index_ddl,
        decorate_ddl=decorate_ddl,
        foreign_keys=foreign_keys,
        after_load_ddl=after_load_ddl,
        recreated=recreated,
        widened=widened,
        warnings=warnings,
        refusals=refusals,
        rows_estimate=max(0, int(getattr(model, "estimated_rows", 0) or 0)),
        bytes_estimate=int(getattr(model, "total_bytes", 0) or 0),
        stats=stats,
        past_retention=past,
    )


def _key_type(model: Any, column: str) -> str | None:
    from ..introspect import key_type_of

    return key_type_of(model, column)


def describe_recreated(model: Any) -> dict[str, list[str]]:
    """What the swap carries over, by kind, for the plan."""
    out: dict[str, list[str]] = {}

    def names(attr: str, fmt: Any = lambda x: getattr(x, "name", str(x))) -> list[str]:
        return [fmt(x) for x in (getattr(model, attr, None) or [])]

    out["triggers"] = names("triggers")
    out["views"] = [str(getattr(v, "name", v)) for v in (getattr(model, "views", None) or [])]
    out["sequences"] = [str(getattr(s, "sequence", s)) for s in (getattr(model, "owned_sequences", None) or [])]
    out["policies"] = names("policies")
    out["publications"] = [str(p) for p in (getattr(model, "publications", None) or [])]
    out["statistics"] = [str(s.name) for s in (getattr(model, "statistics", None) or [])]
    identity = {"f": "FULL", "n": "NOTHING", "i": f"USING INDEX {getattr(model, 'replica_identity_index', '')}"}
    if getattr(model, "replica_identity", "d") in identity:
        out["replica identity"] = [identity[model.replica_identity] + ", on every partition too"]
    return {k: v for k, v in out.items() if v}
