"""The swap: one short transaction that fences writers (ACCESS EXCLUSIVE under a short
lock_timeout, retried with backoff and jitter), replays the last captured changes, and puts the
partitioned table in the original's place with everything it carries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .. import catalog, db, failpoints, log, naming
from ..naming import CONVERT_TRIGGER, REVERT_TRIGGER
from ..db import QualifiedName, lock_private_first, with_lock_retry
from ..errors import PartmanError
from ..introspect import publications
from ..partitions import statistics_names
from ..settings import Settings
from . import capture, ddl, matviews, suitability
from .capture import KeyColumn

AFTER_SWAP = ("verify", "analyze", "done")  # a conversion's phases once the partitioned table is live


def drop_work_schema(schema: str) -> sql.Composed:
    """A conversion's work schema and everything in it (shadow, change logs, capture functions)."""
    return sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))


@dataclass
class WorkNames:
    """partman's objects for one conversion, all in its work schema."""

    schema: str

    @property
    def convert_log(self) -> QualifiedName:
        return QualifiedName(self.schema, "convert_log")

    @property
    def convert_fn(self) -> QualifiedName:
        return QualifiedName(self.schema, "convert_capture")

    @property
    def revert_log(self) -> QualifiedName:
        return QualifiedName(self.schema, "revert_log")

    @property
    def revert_fn(self) -> QualifiedName:
        return QualifiedName(self.schema, "revert_capture")


def relation_exists(conn: psycopg.Connection, qn: QualifiedName) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qn.literal,)).fetchone()[0]


def identity_sequence(conn: psycopg.Connection, table: QualifiedName, column: str) -> QualifiedName | None:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
        (table.literal, column),
    ).fetchone()
    return QualifiedName(row[0], row[1]) if row else None


def hand_over_identity_names(conn: psycopg.Connection, model: Any, giver: QualifiedName, taker: QualifiedName,
                             suffix: str, undoing: str | None = None) -> None:
    """Inside a swap, after both tables have their new names: the IDENTITY sequence of `giver`
    (the table that was live) becomes `<its name><suffix>` and `taker`'s takes its name, so the
    live table's sequence keeps the name the application and its DBA know. `undoing` (revert):
    only when taker's sequence is named `<giver's><undoing>`, as the convert left it. Cosmetic:
    skipped (with a warning) when a name is taken, never a reason to fail a swap."""
    for s in model.owned_sequences:
        if not s.identity:
            continue
        given = identity_sequence(conn, giver, s.column)
        taken = identity_sequence(conn, taker, s.column)
        if given is None or taken is None or taken.name == given.name:
            continue
        if undoing is not None and taken.name != naming.derived(given.name, undoing):
            continue  # converted by a partman that left the names as they were
        spare = QualifiedName(given.schema, naming.derived(given.name, suffix))
        if relation_exists(conn, spare) or given.schema != taken.schema:
            log.get().warning("identity_sequence_name_kept", table=str(taker), column=s.column, sequence=str(taken),
                              reason=f"{spare} exists" if given.schema == taken.schema else "another schema")
            continue
        conn.execute(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(given.ident(), sql.Identifier(spare.name)))
        conn.execute(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(taken.ident(), sql.Identifier(given.name)))


def free_name(name: str, suffix: str, taken: Callable[[str], bool]) -> str:
    """`<name><suffix>`, or numbered (`<name><suffix>1`, ...) past the names `taken` answers for: a
    rename in the swap must not fail on a name somebody happens to use."""
    n = 0
    while True:
        candidate = naming.derived(name, suffix + (str(n) if n else ""))
        if not taken(candidate):
            return candidate
        n += 1


def existing_relations(conn: psycopg.Connection, schema: str, names: Iterable[str]) -> set[str]:
    """Which of `names` a relation of `schema` bears (relation_exists for many, one query)."""
    return {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) "
        "AND relname = ANY(%s)", (schema, list(names)))}


def spare_names(conn: psycopg.Connection, schema: str, names: list[str], suffix: str,
                reserved: set[str]) -> dict[str, str]:
    """free_name(name, suffix) in `schema` for each of `names`, with one catalog read for the usual
    case (`<name><suffix>` free) instead of one per name: inside the swap's lock every round trip
    is time the application waits (~1 ms each to a server in another availability zone). The
    `reserved` names (a relation about to be renamed to it) and those handed out here count as
    taken."""
    first = {naming.derived(n, suffix) for n in names}
    existing = existing_relations(conn, schema, first)
    given = set(reserved)

    def taken(candidate: str) -> bool:
        if candidate in given:
            return True
        if candidate in first:
            return candidate in existing
        return relation_exists(conn, QualifiedName(schema, candidate))

    out: dict[str, str] = {}
    for name in names:
        out[name] = free_name(name, suffix, taken)
        given.add(out[name])
    return out


def statistics_exists(conn: psycopg.Connection, qn: QualifiedName) -> bool:
    return qn.name in statistics_names(conn, qn.schema)


def rename_statistics(conn: psycopg.Connection, qn: QualifiedName, name: str) -> None:
    conn.execute(sql.SQL("ALTER STATISTICS {} RENAME TO {}").format(qn.ident(), sql.Identifier(name)))


def hand_over_statistics(conn: psycopg.Connection, model: Any, work_schema: str) -> list[list[str]]:
    """Inside the swap: each of the original's extended statistics objects becomes `<name>_old`,
    and the shadow's copy (ddl.extended_statistics) moves from the work schema into its place.
    Returns [[schema, old name, name]] for revert. A shadow prepared by a partman that did not
    copy them has none to move; an original dropped meanwhile has none to rename."""
    done: list[list[str]] = []
    for stat, work_name in ddl.shadow_statistics(model):
        if statistics_exists(conn, stat.name):
            spare = free_name(stat.name.name, "_old", lambda n: statistics_exists(conn, QualifiedName(stat.name.schema, n)))
            rename_statistics(conn, stat.name, spare)
            done.append([stat.name.schema, spare, stat.name.name])
        copy = QualifiedName(work_schema, work_name)
        if statistics_exists(conn, copy):
            conn.execute(sql.SQL("ALTER STATISTICS {} SET SCHEMA {}").format(
                copy.ident(), sql.Identifier(stat.name.schema)))
            if work_name != stat.name.name:
                rename_statistics(conn, QualifiedName(stat.name.schema, work_name), stat.name.name)
    return done


def index_names(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass ORDER BY c.relname",
            (table.literal,),
        )
    ]


def child_tables(conn: psycopg.Connection, parent: QualifiedName) -> list[QualifiedName]:
    return [
        QualifiedName(r[0], r[1])
        for r in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = %s::regclass ORDER BY c.relname",
            (parent.literal,),
        )
    ]


def loaded_without_autovacuum(conn: psycopg.Connection, parent: QualifiedName, model: Any) -> list[QualifiedName]:
    """The partitions of `parent` whose autovacuum settings (ddl.LOADING_OFF) are not the original's:
    those a copy at --sleep 0 filled with autovacuum off (ddl.partition_options), a resumed paced
    conversion's included. A paced conversion made its partitions with the original's: none, and
    autovacuum is left alone."""
    want = ddl.loading_options(model.reloptions)
    rows = conn.execute(
        "SELECT n.nspname, c.relname, coalesce(c.reloptions, '{}') || "
        "coalesce((SELECT array_agg('toast.' || o) FROM unnest(t.reloptions) o), '{}') "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE i.inhparent = %s::regclass ORDER BY c.relname",
        (parent.literal,))
    return [QualifiedName(schema, name) for schema, name, options in rows if ddl.loading_options(list(options)) != want]


def install_revert_capture(conn: psycopg.Connection, work: WorkNames, table: QualifiedName, key: list[KeyColumn]) -> None:
    for stmt in capture.create_log(work.revert_log, key):
        conn.execute(stmt)
    conn.execute(capture.create_function(work.revert_fn, work.revert_log, key))
    conn.execute(capture.create_trigger(REVERT_TRIGGER, table, work.revert_fn))
    conn.execute(capture.fire_always(REVERT_TRIGGER, table))  # and on every partition, those to come too


def swap(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    conversion_id: int,
    source: QualifiedName,
    old: QualifiedName,
    shadow: QualifiedName,
    work: WorkNames,
    model: Any,
    index_ddl: list[Any],
    key: list[KeyColumn],
    columns: list[str],
    overriding: bool,
    part: KeyColumn | None = None,
    registration: dict[str, Any],
    lock_timeout_ms: int,
    check: Any = None,
) -> dict[str, float]:
    """Returns {"lock_ms": time the exclusive lock was held, of which "replay_ms" the final replay
    and "commit_ms" the commit, "caught_up": rows, "attempts": n}."""
    stats: dict[str, float] = {"attempts": 0}

    def replay_all(c: psycopg.Connection, consume: bool = True) -> int:
        return capture.replay(c, work.convert_log, source, shadow, key, columns, overriding=overriding, limit=None,
                              part=part, consume=consume)

    def attempt(c: psycopg.Connection) -> None:
        stats["attempts"] += 1
        lock_private_first(c, [shadow], lock_timeout_ms)  # the shadow and its partitions
        # what was written while that lock was awaited, replayed before writers are fenced
        replay_all(c)
        for child in loaded_without_autovacuum(c, shadow, model):  # as on the original (ddl.after_load), before the lock
            for stmt in ddl.after_load(model, child):
                c.execute(stmt)
        failpoints.hit("convert.swap.before_lock")
        # read before the application's table is locked: the transaction's start, and the shadow's
        # partitions (partman's own, locked above)
        swapped_at = c.execute("SELECT now()").fetchone()[0]
        children = child_tables(c, shadow)
        c.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(source.ident()))
        locked_at = time.perf_counter()
        failpoints.hit("convert.swap.locked")
        if check is not None:
            check(c)  # the table is fenced: nobody can alter it between this check and the commit
        # read now, not at the plan: a paced conversion runs for hours, and ALTER PUBLICATION waits for this lock
        published = publications(c, model.oid)
        refused = suitability.publication_refusals(model, part.name if part is not None else None, published)
        if refused:
            raise PartmanError(f"The publications of {source} changed while it was being converted, and the new table "
                               f"cannot be published as it is: {' '.join(refused)} Nothing was swapped; run the same "
                               "command again afterwards to finish.")
        t_replay = time.perf_counter()
        caught = replay_all(c, consume=False)  # the log goes with the work schema
        stats["replay_ms"] = (time.perf_counter() - t_replay) * 1000
        # The rest goes out in pipelines (db.pipeline): the application waits one round trip per
        # block instead of one per statement (14 round trips under the lock instead of ~70; ~1 ms
        # each to a server in another availability zone). The reads come first, outside them.
        index_names_old = index_names(c, source)  # the original's, renamed below with _old
        spares = spare_names(c, source.schema, index_names_old, "_old", reserved={old.name})
        statistics_renames = hand_over_statistics(c, model, work.schema)  # (none on most tables: no statement)
        with db.pipeline(c):
            c.execute(capture.drop_trigger(CONVERT_TRIGGER, source))
            # the original keeps its data and triggers under <table>_old; its index names get _old
            c.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(source.ident(), sql.Identifier(old.name)))
            for name in index_names_old:
                c.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(old.schema, name), sql.Identifier(spares[name])))
            catalog.merge_options(c, settings, conversion_id, {
                "index_renames": {spare: name for name, spare in spares.items()},
                "statistics_renames": statistics_renames, "matviews": matviews.pending(c, model, work.schema)})
            # the shadow and its partitions move into the table's schema under their final names
            for child in children:
                c.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(child.ident(), sql.Identifier(source.schema)))
            c.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(shadow.ident(), sql.Identifier(source.name)))
            moved = QualifiedName(shadow.schema, source.name)
            c.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(moved.ident(), sql.Identifier(source.schema)))
            for idx in index_ddl:
                if idx.temp_name != idx.final_name:
                    c.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(source.schema, idx.temp_name), sql.Identifier(idx.final_name)
                        )
                    )
            for stmt in [
                *ddl.swap_triggers(model, source),
                *ddl.swap_sequences(model, source),
                *ddl.swap_views(model, materialized=False),  # materialized ones after the swap (matviews.py)
                *ddl.swap_publications(published, source, old),
            ]:
                c.execute(stmt)
        # after swap_sequences, which reads the old sequence by its name
        hand_over_identity_names(c, model, old, source, "_old")
        with db.pipeline(c):
            install_revert_capture(c, work, source, key)
            catalog.upsert_managed(c, settings, **registration, swapped_at=swapped_at)
            catalog.update_conversion(c, settings, conversion_id, phase="verify", swap_attempts=int(stats["attempts"]))
            catalog.add_caught_up(c, settings, conversion_id, caught)
        failpoints.hit("convert.swap.before_commit")
        stats["caught_up"] = caught
        stats["locked_at"] = locked_at
        stats["committing_at"] = time.perf_counter()

    with_lock_retry(conn, settings, f"the swap of {source}", attempt, lock_timeout_ms=lock_timeout_ms,
                    tables=[source])
    done = time.perf_counter()
    stats["lock_ms"] = (done - stats.pop("locked_at")) * 1000
    stats["commit_ms"] = (done - stats.pop("committing_at")) * 1000
    with conn.transaction():
        catalog.update_conversion(conn, settings, conversion_id, swap_lock_ms=stats["lock_ms"])
    failpoints.hit("convert.swap.after_commit")
    return stats
