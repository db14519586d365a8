"""The shadow's indexes, built after the copy, on several connections at once, overlapping the
shadow's ANALYZE.

Locks decide what can overlap. On the partitioned shadow, `CREATE INDEX` takes SHARE on it and
every partition, `ADD CONSTRAINT ... PRIMARY KEY` ACCESS EXCLUSIVE, and ANALYZE SHARE UPDATE
EXCLUSIVE, which conflicts with SHARE: built through the parent, nothing but plain index builds
could overlap, and the ANALYZE (as long as all the index builds together) would run after them.
So at full speed (`workers` > 1) the ANALYZE of the whole shadow comes first, its work shared
by two connections (_analyze_split), and then each index is built partition by partition (the
same definition on each partition, under the name PostgreSQL would give it:
partition_index_names; a constraint as that partition's own constraint), which locks one
partition at a time, on `workers` connections. Then the parent's own statement runs:
PostgreSQL finds the matching index (and constraint) on every partition and attaches it instead
of building it, which takes milliseconds. A partition index that did not get attached (a
definition that did not match) is dropped, so nothing is left twice.

Paced (--sleep > 0) the indexes were created on the empty partitions before the copy
(plan.ConversionPlan.indexes_first), so only the ANALYZE is left here; should some be missing
(a conversion prepared by an older build), gentle mode (one worker, the throttle on) builds them
partition by partition, one after another on one connection, without parallel maintenance
workers (a core stays free for the application), the ANALYZE first (with autovacuum's
cost-based delay), and the throttle's pause after each unit. The failpoint
convert.indexes.after_index follows each unit (the ANALYZE, a partition's build) and each
parent statement.

Without a shadow to split, or with the throttle off at --sleep > 0, the parent statements run
as before (constraints alone, plain indexes on up to `workers` connections).

Resumable: the caller passes only the indexes that do not exist yet; each build commits on its
own, so a killed run keeps the finished ones."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import psycopg

from psycopg import sql

from .. import db, failpoints, naming
from ..db import QualifiedName
from ..settings import Settings


def worker_count(settings: Settings, sleep: float) -> int:
    """PARTMAN_CONVERT_WORKERS, or 2 at full speed (--sleep 0) and 1 when gentle."""
    if settings.convert_workers:
        return settings.convert_workers
    return 2 if sleep == 0 else 1


def build(
    conn: psycopg.Connection,
    settings: Settings,
    todo: Sequence[Any],
    *,
    workers: int,
    gentle: bool = False,
    pause: Callable[[], Any] | None = None,
    shadow: QualifiedName | None = None,
    analyze: bool = False,
    every: Sequence[Any] | None = None,
) -> bool:
    """Run every IndexDDL in `todo`. At full speed with a `shadow`, per partition on `workers`
    connections alongside its ANALYZE (when `analyze`); returns whether the ANALYZE was done.
    Otherwise constraints alone first, then plain indexes on up to `workers` connections.
    `conn` is one of the connections; extra ones are opened here. `every`: all the shadow's
    indexes, `todo` and those built already, which the partitions' index names depend on."""
    if shadow is not None and (workers > 1 or gentle):
        return _per_partition(conn, settings, todo, every or todo, workers, shadow, analyze, pause if gentle else None)
    _build_plain(conn, settings, todo, workers=workers, gentle=gentle, pause=pause)
    return False


def _build_plain(
    conn: psycopg.Connection, settings: Settings, todo: Sequence[Any], *, workers: int, gentle: bool,
    pause: Callable[[], Any] | None,
) -> None:
    constraints = [i for i in todo if i.constraint]
    plain = [i for i in todo if not i.constraint]
    if gentle:
        conn.execute("SET max_parallel_maintenance_workers = 0")
    try:
        for idx in constraints:
            _one(conn, idx)
            failpoints.hit("convert.indexes.after_index")
            if pause and (plain or idx is not constraints[-1]):
                pause()
        n = min(max(1, workers), len(plain))
        if n <= 1:
            for idx in plain:
                _one(conn, idx)
                failpoints.hit("convert.indexes.after_index")
                if pause and idx is not plain[-1]:
                    pause()
            return
        _on_connections(conn, settings, n, [_statement(idx.statement) for idx in plain],
                        after_each=lambda: failpoints.hit("convert.indexes.after_index"))
    finally:
        if gentle and not (conn.closed or conn.broken):
            conn.execute("RESET max_parallel_maintenance_workers")


def _one(conn: psycopg.Connection, idx: Any) -> None:
    with conn.transaction():
        conn.execute(idx.statement)


def _on_connections(
    conn: psycopg.Connection, settings: Settings, n: int, jobs: Sequence[Callable[[psycopg.Connection], None]],
    *, prepare: Callable[[psycopg.Connection], None] | None = None, after_each: Callable[[], Any] | None = None,
) -> None:
    """Run `jobs` (each given a connection) on `conn` and n-1 extra connections opened here, in
    order when n is 1. The first failure stops new jobs from starting and is raised."""
    extra = [db.connect(settings, "partman convert worker") for _ in range(max(1, n) - 1)]
    pool: queue.Queue[psycopg.Connection] = queue.Queue()
    for c in [conn, *extra]:
        if prepare is not None:
            prepare(c)
        pool.put(c)
    failed = threading.Event()

    def run(job: Callable[[psycopg.Connection], None]) -> None:
        if failed.is_set():
            return  # an earlier job failed: do not start more
        c = pool.get()
        try:
            job(c)
        except BaseException:
            failed.set()
            raise
        finally:
            pool.put(c)

    try:
        if not extra:
            for job in jobs:
                run(job)
                if after_each is not None:
                    after_each()
            return
        with ThreadPoolExecutor(max_workers=len(extra) + 1, thread_name_prefix="partman-index") as ex:
            pending: set[Future[None]] = {ex.submit(run, job) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # raises the first failure (the others finish or stop first)
                    if after_each is not None:
                        after_each()
    finally:
        for c in extra:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


def _statement(statement: Any) -> Callable[[psycopg.Connection], None]:
    def job(c: psycopg.Connection) -> None:
        with c.transaction():
            c.execute(statement)
    return job


GENTLE_ANALYZE_DELAY = "2ms"  # autovacuum's own vacuum_cost_delay


def analyze(c: psycopg.Connection, shadow: QualifiedName, *, gentle: bool) -> None:
    """ANALYZE of the whole shadow. Gentle, it reads with autovacuum's cost-based delay: the one
    statement of a paced conversion the throttle cannot split (seconds per partition for the
    44M-row ledger) pauses as it goes. In a transaction block the setting ends with it (also on
    failure); outside one it is reset after the statement."""
    if gentle:
        c.execute(sql.SQL("SET vacuum_cost_delay = {}").format(sql.Literal(GENTLE_ANALYZE_DELAY)))
    c.execute(sql.SQL("ANALYZE {}").format(shadow.ident()))
    if gentle:
        c.execute("RESET vacuum_cost_delay")


def _analyze(shadow: QualifiedName, *, gentle: bool) -> Callable[[psycopg.Connection], None]:
    """ANALYZE as a job outside a transaction block: it commits after each relation (the parent's
    sample, then each partition), so it holds a partition only while it reads it."""
    return lambda c: analyze(c, shadow, gentle=gentle)


def analyze_split(rows: Sequence[int], cap: int) -> int | None:
    """How many of the partitions (`rows`: each one's rows, in the order ANALYZE visits them) the
    first of two ANALYZE jobs takes so that both do about equal work; the second takes the rest and
    the partitioned table's own sample. None when fewer than two hold rows.

    An ANALYZE's work is its sample: up to `cap` (300 x default_statistics_target) rows, read from
    as many pages, then sorted column by column. A partition's sample is min(its rows, cap); the
    partitioned table's own is min(all the partitions' rows, cap), drawn from every partition. So
    the parent's sample weighs as much as the largest partition's while partitions hold `cap` rows
    or more, and as much as several partitions' when they hold fewer (at 5,000 rows a partition,
    six of them)."""
    if sum(1 for r in rows if r > 0) < 2:
        return None
    work = [min(max(r, 0), cap) for r in rows]
    total = sum(work) + min(sum(max(r, 0) for r in rows), cap)
    best, gap, first = 1, float("inf"), 0
    for taken, w in enumerate(work, 1):
        first += w
        if abs(total - 2 * first) < gap:
            best, gap = taken, abs(total - 2 * first)
    return best


def analyze_halves(conn: psycopg.Connection, shadow: QualifiedName) -> tuple[list[QualifiedName], list[QualifiedName]] | None:
    """The shadow's partitions in two halves of about equal ANALYZE work (analyze_split), the
    first in OID order (the order ANALYZE visits them); None when fewer than two hold rows. The
    rows are the activity statistics' live rows, which the copy's sessions handed over before
    (db.flush_statistics). When those show none (after a crash, which resets them; PostgreSQL 14's
    collector may not have them yet), each partition's pages stand in for its rows and the parent's
    sample weighs like the largest partition's: right while partitions hold `cap` rows or more."""
    found = conn.execute(
        "SELECT n.nspname, c.relname, pg_stat_get_live_tuples(c.oid), "
        "pg_relation_size(c.oid) / current_setting('block_size')::int, "
        "300 * current_setting('default_statistics_target')::int FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = %s::regclass ORDER BY c.oid", (shadow.literal,)).fetchall()
    if not found:
        return None
    live, pages, cap = [r[2] for r in found], [r[3] for r in found], found[0][4]
    taken = analyze_split(live, cap) if any(live) else analyze_split(pages, min(cap, max(pages)))
    if taken is None:
        return None
    parts = [QualifiedName(r[0], r[1]) for r in found]
    return parts[:taken], parts[taken:]


STARTED_WITHIN = 60.0  # _analyze_split: how long the first job waits for the second to start


def _analyze_split(shadow: QualifiedName, first: list[QualifiedName],
                   second: list[QualifiedName]) -> list[Callable[[psycopg.Connection], None]]:
    """The shadow's ANALYZE as two jobs of about equal work, for two connections (both cores)
    instead of one. A partitioned table's ANALYZE analyzes every partition too (short of
    PostgreSQL 18's ANALYZE ONLY), so: the first job locks its partitions (SHARE UPDATE
    EXCLUSIVE, ANALYZE's own lock) and analyzes them in one transaction; the second, once they
    are locked, locks the parent and the other partitions and runs the parent's ANALYZE with
    SKIP_LOCKED, which takes the parent's sample of all partitions and analyzes those it holds,
    passing over the first job's (silently: PostgreSQL reports a skipped partition only when it
    was named). Each job holds its partitions until the parent's ANALYZE is over: no index build
    slips in and makes it pass over one of the second job's, and it cannot analyze the first
    job's again. The two must run at the same time (the first submitted first, on two
    connections); should the second not start within STARTED_WITHIN seconds, the first commits
    and the second analyzes those partitions again: slower, never wrong."""
    locked, started, done = threading.Event(), threading.Event(), threading.Event()

    def own(c: psycopg.Connection) -> None:
        try:
            with c.transaction():
                c.execute(sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(p.ident() for p in first)))
                locked.set()
                for p in first:
                    c.execute(sql.SQL("ANALYZE {}").format(p.ident()))
                if started.wait(STARTED_WITHIN):
                    done.wait()
        finally:
            locked.set()  # failed: the other job then analyzes them all

    def parent(c: psycopg.Connection) -> None:
        started.set()
        try:
            locked.wait()
            with c.transaction():
                c.execute(sql.SQL("LOCK TABLE ONLY {} IN SHARE UPDATE EXCLUSIVE MODE").format(
                    sql.SQL(", ").join([shadow.ident(), *(p.ident() for p in second)])))
                c.execute(sql.SQL("ANALYZE (SKIP_LOCKED) {}").format(shadow.ident()))
        finally:
            done.set()

    return [own, parent]


def _partition_statement(idx: Any, part: QualifiedName, name: str) -> sql.Composable | None:
    """The parent's index (or constraint) for one partition, under the partition's own name."""
    build = getattr(idx, "build", None)
    return build(part, name) if build is not None else None


def partition_index_names(indexes: Sequence[Any], parts: Sequence[QualifiedName],
                          taken: set[str]) -> dict[tuple[str, str], str]:
    """{(index, partition): name}: the names PostgreSQL gives the partitions' indexes when the
    parent's index is created over them (the conversion's paced path, and `maintain`'s new
    partitions), chosen in its order: index by index, partitions in bound order, the default
    last (`parts` in creation order, as the plan made them). `taken`: the other names in the
    schema. Independent of which builds exist already, so a resumed run finds its own."""
    taken = set(taken) | {p.name for p in parts} | {i.temp_name for i in indexes}
    out: dict[tuple[str, str], str] = {}
    for idx in indexes:
        for part in parts:
            name = naming.pg_index_name(part.name, idx.columns, idx.label, taken)
            taken.add(name)
            out[(idx.temp_name, part.name)] = name
    return out


def build_order(todo: Sequence[Any], parts: Sequence[QualifiedName]) -> list[tuple[Any, QualifiedName]]:
    """(index, partition) in the order the connections take them: the constraints first, each
    over every partition, then each partition's plain indexes. A constraint locks its partition
    exclusively: queued partition by partition, the other connection's next build (on the same
    partition) waited for it (`relation` lock waits in every partition at 2M rows, the index
    phase 3-4% longer); one after another the constraints are on different partitions, and plain
    builds (SHARE) never wait for each other."""
    constraints = [i for i in todo if i.constraint]
    plain = [i for i in todo if not i.constraint]
    return [(idx, part) for idx in constraints for part in parts] + [(idx, part) for part in parts for idx in plain]


def _per_partition(conn: psycopg.Connection, settings: Settings, todo: Sequence[Any], every: Sequence[Any], workers: int,
                   shadow: QualifiedName, analyze: bool, pause: Callable[[], Any] | None = None) -> bool:
    """Gentle (`pause` given): one connection, the throttle's pause between the ANALYZE and the
    partition builds, so the application gets its share between units of a few hundred ms."""
    from .swap import relation_exists

    # partitions in descending OID order: a single ANALYZE beside the builds (not the split one,
    # which finishes before any build starts) visits them in ascending order (after the parent's
    # own sample, which only needs ACCESS SHARE), so it and the builds, which cannot work on one
    # partition at the same time, meet once per pass of build_order (the constraints, then the
    # plain indexes) instead of queueing behind each other
    parts = [QualifiedName(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = %s::regclass ORDER BY c.oid DESC",
        (shadow.literal,))]
    names = partition_index_names(every, parts[::-1], _other_names(conn, shadow))
    jobs: list[Callable[[psycopg.Connection], None]] = []
    halves = analyze_halves(conn, shadow) if analyze and pause is None and workers > 1 else None
    if halves is not None:  # both connections analyze first, and release all the partitions at once
        jobs = _analyze_split(shadow, *halves)
    elif analyze:
        jobs = [_analyze(shadow, gentle=pause is not None)]
    # (statement, parent IndexDDL, partition, partition index name), in build_order
    items: list[tuple[Any, Any, QualifiedName, str]] = []
    for idx, part in build_order(todo, parts):
        name = names[(idx.temp_name, part.name)]
        st = _partition_statement(idx, part, name)
        if st is not None and not relation_exists(conn, QualifiedName(part.schema, name)):
            items.append((st, idx, part, name))
    # (an index of a shape not known here has no items: its parent statement builds it whole)
    if pause is not None:
        workers = 1
    jobs += [_statement(st) for st, *_ in items]
    # one process per build: the connections already keep the cores busy, and a partition's
    # build with parallel workers on top of them only adds their start-up and merge cost
    def after_each() -> None:
        failpoints.hit("convert.indexes.after_index")
        if pause is not None:
            pause()

    _on_connections(conn, settings, workers, jobs,
                    prepare=lambda c: c.execute("SET max_parallel_maintenance_workers = 0"), after_each=after_each)
    conn.execute("RESET max_parallel_maintenance_workers")
    # the parents: attach what was built (a whole-parent build for shapes not known here)
    for idx in todo:
        _one(conn, idx)
        _drop_unattached(conn, idx, parts, names)
        failpoints.hit("convert.indexes.after_index")
    return analyze


def _other_names(conn: psycopg.Connection, shadow: QualifiedName) -> set[str]:
    """The relations in the shadow's schema other than its partitions' indexes."""
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND NOT EXISTS "
        "(SELECT 1 FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid "
        " WHERE x.indexrelid = c.oid AND i.inhparent = %s::regclass)",
        (shadow.schema, shadow.literal))}


def _drop_unattached(conn: psycopg.Connection, idx: Any, parts: list[QualifiedName],
                     names: dict[tuple[str, str], str]) -> None:
    """A partition index of ours that the parent did not adopt would be a duplicate: drop it."""
    for part in parts:
        name = names[(idx.temp_name, part.name)]
        row = conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid), "
            "(SELECT conname FROM pg_constraint WHERE conindid = c.oid AND conrelid = c2.oid) "
            "FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class c2 ON c2.oid = i.indrelid "
            "WHERE c.oid = to_regclass(%s)",
            (QualifiedName(part.schema, name).literal,),
        ).fetchone()
        if row is None or not row[0]:
            continue
        with conn.transaction():
            if row[1]:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(part.ident(), sql.Identifier(row[1])))
            else:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(part.schema, name)))
