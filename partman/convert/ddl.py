"""TableModel -> the DDL a conversion runs: the shadow table, its indexes (unique keys widened to
include the partition key), what decorates it (owner, grants, comments, RLS, policies, storage,
foreign keys), and what the swap recreates (triggers, sequence ownership, views, functions,
publications). Pure: no connection. Identifiers go through psycopg.sql; expressions and
definitions are PostgreSQL's own text (pg_get_expr, pg_get_indexdef, ...), read with a
pg_catalog-only search_path so every name in them is qualified."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from psycopg import sql

from .. import naming
from ..db import QualifiedName, quote_ident
from ..introspect import Column, Constraint, DependentView, Publication, TableModel
from ..partitions import ExtendedStatistics, column_settings_sql, partition_statistics_sql, statistics_sql

_ENABLE = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


@dataclass
class IndexDDL:
    statement: sql.Composable
    temp_name: str  # the name it is built under (in the work schema)
    final_name: str  # the name it must have after the swap
    constraint: str | None
    widened: bool
    note: str
    # the same index (or constraint) for another table under another name: a partition's own
    # index, built before the parent's statement attaches it
    build: Callable[[QualifiedName, str], sql.Composable] | None = None
    # how PostgreSQL names a partition's index of this one (naming.pg_index_name): its label
    # (pkey, key, idx) and column names
    label: str = "idx"
    columns: list[str] = field(default_factory=list)


def _raw(text: str) -> sql.SQL:
    """PostgreSQL's own definition text (an expression, a type, a view query). Never .format()ted."""
    return sql.SQL(text)


def _idents(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def column_names(model: TableModel) -> list[str]:
    """Columns a copy writes, in the table's order (stored generated columns are computed)."""
    return [c.name for c in model.columns if not c.generated]


def needs_overriding(model: TableModel) -> bool:
    return any(c.identity == "a" for c in model.columns)


def _column_def(c: Column) -> sql.Composable:
    parts: list[sql.Composable] = [sql.Identifier(c.name), _raw(c.type)]
    if c.compression is not None:  # the partitions take it from the partitioned table
        parts += [sql.SQL("COMPRESSION"), sql.Identifier(c.compression)]
    if c.collation is not None:
        parts += [sql.SQL("COLLATE"), c.collation.ident()]
    if c.generated == "s" and c.default is not None:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(_raw(c.default)))
    elif c.identity:
        kind = "ALWAYS" if c.identity == "a" else "BY DEFAULT"
        opts = sql.SQL(" ({})").format(_raw(c.identity_options)) if c.identity_options else sql.SQL("")
        parts.append(sql.SQL("GENERATED {} AS IDENTITY{}").format(sql.SQL(kind), opts))
    elif c.default is not None:
        parts += [sql.SQL("DEFAULT"), _raw(c.default)]
    if c.notnull:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def _carried_checks(model: TableModel) -> list:
    return [k for k in model.constraints if k.kind == "c" and k.validated and not k.no_inherit]


def create_shadow(model: TableModel, shadow: QualifiedName, key: str) -> list[sql.Composable]:
    """CREATE TABLE <shadow> (columns, CHECK constraints) PARTITION BY RANGE (key) [TABLESPACE
    the original's]: its partitions, and those `maintain` adds later, are created in the
    partitioned table's tablespace."""
    elements: list[sql.Composable] = [_column_def(c) for c in model.columns]
    for k in _carried_checks(model):
        elements.append(sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(k.name), _raw(k.definition)))
    stmt = sql.SQL("CREATE TABLE {} ({}) PARTITION BY RANGE ({}){}").format(
        shadow.ident(), sql.SQL(", ").join(elements), sql.Identifier(key), _tablespace(model.tablespace)
    )
    return [stmt]


def _tablespace(name: str | None, using_index: bool = False) -> sql.Composable:
    if name is None:
        return sql.SQL("")
    return sql.SQL(" USING INDEX TABLESPACE {}" if using_index else " TABLESPACE {}").format(sql.Identifier(name))


# Off on the shadow's partitions while a copy at full speed fills them (`loading`), back as the
# original table had them in the swap (after_load). Every batch commits, so autovacuum finds each
# partition being filled past its insert and analyze thresholds and vacuums and analyzes it: work
# on the two cores and the disk beside the copy and the index builds (whose per-partition builds
# wait for it), which the index phase's ANALYZE does again. In three 10M-row conversions on one
# server, against three without this: 43.0-45.3 s against 46.9-48.4 s (bench/RESULTS.md,
# "Autovacuum off while loading"). A paced conversion leaves autovacuum alone: its copy takes hours
# and autovacuum's own pace is gentle.
LOADING_OFF = ("autovacuum_enabled", "toast.autovacuum_enabled")


def _option_name(option: str) -> str:
    return option.split("=", 1)[0].strip()


def partition_options(model: TableModel, *, loading: bool = False) -> list[str]:
    """Storage options (fillfactor, autovacuum_*) belong on each partition: a partitioned
    parent cannot carry them (partitions.with_options). `loading`: autovacuum off until
    after_load()."""
    options = [o for o in model.reloptions if not (loading and _option_name(o) in LOADING_OFF)]
    return options + ([f"{name} = false" for name in LOADING_OFF] if loading else [])


def column_statistics(model: TableModel, shadow: QualifiedName, leaves: list[QualifiedName]) -> list[sql.Composable]:
    """The original's column statistics targets and options (n_distinct) on the shadow and on
    every partition: PostgreSQL passes neither from a partitioned table to its partitions. On
    the partitioned table an n_distinct also becomes its n_distinct_inherited (unless one is set),
    the figure its whole-table statistics use. Before the ANALYZE, which they steer."""
    own = [(c.name, c.stattarget, c.options) for c in model.columns if c.stattarget is not None or c.options]
    parent = []
    for name, target, options in own:
        names = {_option_name(o) for o in options}
        inherited = [o.replace("n_distinct", "n_distinct_inherited", 1) for o in options
                     if _option_name(o) == "n_distinct" and "n_distinct_inherited" not in names]
        parent.append((name, target, options + inherited))
    out = column_settings_sql(shadow, parent)
    for leaf in leaves:
        out += column_settings_sql(leaf, own)
    return out


def loading_options(options: list[str]) -> list[str]:
    """Those of `options` (reloptions, the TOAST table's as toast.<name>) that loading turns off."""
    return sorted(o for o in options if _option_name(o) in LOADING_OFF)


def after_load(model: TableModel, partition: QualifiedName) -> list[sql.Composable]:
    """A partition's autovacuum as the original table had it, whether or not the copy turned it
    off (a resumed conversion may run at another pace than the one that prepared it)."""
    out: list[sql.Composable] = [sql.SQL("ALTER TABLE {} RESET ({})").format(
        partition.ident(), sql.SQL(", ").join(_raw(name) for name in LOADING_OFF))]
    own = [o for o in model.reloptions if _option_name(o) in LOADING_OFF]
    if own:
        out.append(sql.SQL("ALTER TABLE {} SET ({})").format(partition.ident(), sql.SQL(", ").join(_raw(o) for o in own)))
    return out


def shadow_statistics(model: TableModel) -> list[tuple[ExtendedStatistics, str]]:
    """Each of the original's extended statistics objects, with the name its copy on the shadow
    has in the work schema until the swap moves it to the original's schema: the original's
    own name, numbered only when two of them (in different schemas) share one."""
    names = [s.name.name for s in model.statistics]
    return [(s, s.name.name if names.count(s.name.name) == 1 else naming.derived(s.name.name, f"_{i}"))
            for i, s in enumerate(model.statistics)]


def extended_statistics(model: TableModel, shadow: QualifiedName, leaves: list[QualifiedName]) -> list[sql.Composable]:
    """The original's extended statistics objects on the shadow (in the work schema until the
    swap) and on every partition, as PostgreSQL does not hand them down and a query that reads
    one partition uses that partition's own. A partition's goes straight into the table's schema,
    where its partition will be after the swap, under the name PostgreSQL would give it. Before
    the ANALYZE, which builds them."""
    out: list[sql.Composable] = []
    for stat, name in shadow_statistics(model):
        out += statistics_sql(stat, QualifiedName(shadow.schema, name), shadow)
    # (a partition's of an earlier, interrupted prepare went with its work schema)
    taken = {name for name, on in model.statistics_taken if on != shadow.schema}
    for leaf in leaves:
        out += partition_statistics_sql(model.statistics, leaf, taken, model.table.schema)
    return out


def create_indexes(model: TableModel, shadow: QualifiedName, key: str) -> list[IndexDDL]:
    """One statement per index of the original, built on the partitioned shadow after the copy.
    A primary key or unique index that lacks the partition key gets it appended (PostgreSQL
    requires it), and the note says so."""
    out: list[IndexDDL] = []
    constraints = {k.name: k for k in model.constraints}
    for idx in model.indexes:
        con = constraints.get(idx.constraint) if idx.constraint else None
        if con is not None and con.kind == "x":
            continue  # refused by refusals()
        cols = [c for c in idx.columns if c is not None]
        widen = idx.unique and key not in idx.columns
        new_cols = cols + [key] if widen else cols
        note = ""
        if widen:
            what = "primary key" if idx.primary else ("unique constraint" if con else "unique index")
            old, new = ", ".join(map(quote_ident, cols)), ", ".join(map(quote_ident, new_cols))  # as ON CONFLICT takes them
            note = (f"{what} {idx.name} ({old}) becomes ({new}): a unique key of a "
                    f"partitioned table must include its partition key, so ({old}) alone is no longer "
                    f"enforced unique, and an INSERT ... ON CONFLICT ({old}) finds no key to match "
                    f"(name ({new}) instead)")
        keys = len(idx.columns)  # the index's own column names: key columns (the partition key appended), INCLUDE
        names = naming.unique_column_names(idx.attnames[:keys] + ([key] if widen else []) + idx.attnames[keys:])
        include = sql.SQL(" INCLUDE ({})").format(_idents(idx.include)) if idx.include else sql.SQL("")
        nnd = sql.SQL(" NULLS NOT DISTINCT") if idx.nulls_not_distinct else sql.SQL("")
        space = idx.tablespace  # the partitions' indexes are built in the parent index's tablespace
        if con is not None and con.kind in ("p", "u"):
            kind = sql.SQL("PRIMARY KEY") if con.kind == "p" else sql.SQL("UNIQUE") + nnd

            def build(t: QualifiedName, name: str, kind=kind, cols=new_cols, include=include,
                      space=space, timing=con.timing) -> sql.Composable:
                return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} ({}){}{}{}").format(
                    t.ident(), sql.Identifier(name), kind, _idents(cols), include, _tablespace(space, True),
                    sql.SQL(timing))

            out.append(IndexDDL(build(shadow, con.name), con.name, idx.name, con.name, widen, note, build,
                                "pkey" if con.kind == "p" else "key", names))
        elif widen:
            where = sql.SQL(" WHERE {}").format(_raw(idx.predicate)) if idx.predicate else sql.SQL("")

            def build(t: QualifiedName, name: str, idx=idx, cols=new_cols, include=include, nnd=nnd,
                      where=where, space=space) -> sql.Composable:
                return sql.SQL("CREATE UNIQUE INDEX {} ON {} USING {} ({}){}{}{}{}").format(
                    sql.Identifier(name), t.ident(), sql.Identifier(idx.method), _idents(cols), include, nnd,
                    _tablespace(space), where)

            out.append(IndexDDL(build(shadow, idx.name), idx.name, idx.name, None, True, note, build, "idx", names))
        else:
            if not idx.definition.startswith(idx.prefix):
                raise ValueError(f"unexpected index definition for {idx.name}: {idx.definition}")
            tail = idx.definition[len(idx.prefix):]
            # pg_get_indexdef leaves the tablespace out; it goes before the predicate
            where_tail = f" WHERE {idx.predicate}" if idx.predicate and tail.endswith(f" WHERE {idx.predicate}") else ""
            head = tail[:len(tail) - len(where_tail)]

            def build(t: QualifiedName, name: str, unique=idx.unique, head=head, where_tail=where_tail,
                      space=space) -> sql.Composable:
                return sql.SQL("CREATE {}INDEX {} ON {} USING {}{}{}").format(
                    sql.SQL("UNIQUE ") if unique else sql.SQL(""), sql.Identifier(name), t.ident(), _raw(head),
                    _tablespace(space), _raw(where_tail))

            out.append(IndexDDL(build(shadow, idx.name), idx.name, idx.name, None, False, note, build, "idx", names))
    return out


def _grant(g, target: sql.Composable, kind: str = "TABLE") -> sql.Composable:
    grantee = sql.SQL("PUBLIC") if g.grantee == "PUBLIC" else sql.Identifier(g.grantee)
    priv = sql.SQL(g.privilege)
    if g.column:
        priv = sql.SQL("{} ({})").format(priv, sql.Identifier(g.column))
    return sql.SQL("GRANT {} ON {} {} TO {}{}").format(
        priv, sql.SQL(kind), target, grantee, sql.SQL(" WITH GRANT OPTION") if g.grantable else sql.SQL("")
    )


@dataclass
class ConstraintStep:
    """One table's foreign key (foreign_keys): `add`, then `validate` when it is added NOT VALID."""

    table: QualifiedName
    name: str
    add: sql.Composable
    validate: sql.Composable | None
    comment: sql.Composable | None = None


def foreign_keys(model: TableModel, target: QualifiedName, partitions: list[QualifiedName]) -> list[ConstraintStep]:
    """The original's foreign keys to other tables, on the shadow after the copy. Added to the
    partitioned table at once, each would be validated under a SHARE ROW EXCLUSIVE lock on the
    referenced table, which stops its writers for as long as the scan of every row takes. So each
    partition first gets it NOT VALID (that lock for a moment), then VALIDATE (SHARE UPDATE
    EXCLUSIVE on the partition, ROW SHARE on the referenced table: its writers go on); the
    partitioned table's, added last, takes the partitions' validated ones as its own without
    reading them (PostgreSQL 15 and later alike; a partitioned table cannot itself take NOT VALID
    before 18). On 18 an original NOT VALID one stays NOT VALID: on the partitions and then on
    the partitioned table, which takes theirs as its own, and no VALIDATE (its old rows may break
    it, as they may in the original)."""
    out: list[ConstraintStep] = []
    for k in model.constraints:
        if k.kind != "f":
            continue
        name = sql.Identifier(k.name)
        definition = _raw(k.definition.removesuffix(" NOT VALID"))
        unvalidated = keeps_not_valid(model, k)
        for part in partitions:
            out.append(ConstraintStep(
                part, k.name, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(part.ident(), name, definition),
                None if unvalidated else sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(part.ident(), name)))
        comment = (sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(name, target.ident(), sql.Literal(k.comment))
                   if k.comment is not None else None)
        out.append(ConstraintStep(target, k.name, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}{}").format(
            target.ident(), name, definition, sql.SQL(" NOT VALID" if unvalidated else "")), None, comment))
    return out


def keeps_not_valid(model: TableModel, k: Constraint) -> bool:
    """An original NOT VALID foreign key that stays NOT VALID: from PostgreSQL 18, whose
    partitioned tables can have one."""
    return k.kind == "f" and not k.validated and model.server_version >= 180000


def decorate(model: TableModel, target: QualifiedName, partitions: list[QualifiedName] | tuple = ()) -> list[sql.Composable]:
    """Owner, grants, comments, row-level security and policies, column storage, CHECK constraints
    the original has NOT VALID (as NOT VALID: PostgreSQL passes them to the partitions so): applied
    to the shadow after the copy, before the swap. Foreign keys: foreign_keys()."""
    t = target.ident()
    out = _owners(model, target, partitions)
    out += [_grant(g, t) for g in model.grants]
    if model.comment is not None:
        out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(t, sql.Literal(model.comment)))
    for c in model.columns:
        if c.comment is not None:
            out.append(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(t, sql.Identifier(c.name), sql.Literal(c.comment)))
        if c.storage:
            storage = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}[c.storage]
            out.append(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE {}").format(
                t, sql.Identifier(c.name), sql.SQL(storage)))
    for k in model.constraints:  # an unvalidated CHECK after the copy, whose old rows may break it
        if k.kind == "c" and not k.validated and not k.no_inherit:
            out.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(t, sql.Identifier(k.name), _raw(k.definition)))
    for k in model.constraints:
        if k.comment is not None and (k.kind in ("c", "p", "u")):  # a foreign key's: foreign_keys()
            out.append(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                sql.Identifier(k.name), t, sql.Literal(k.comment)))
    for idx in model.indexes:
        if idx.comment is not None:
            out.append(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(target.schema, idx.name), sql.Literal(idx.comment)))
    if model.row_security:
        out.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
    if model.force_row_security:
        out.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(t))
    for p in model.policies:
        roles = sql.SQL(", ").join(
            sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in p.roles
        ) if p.roles else sql.SQL("PUBLIC")
        stmt = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            sql.Identifier(p.name), t, sql.SQL("PERMISSIVE" if p.permissive else "RESTRICTIVE"), sql.SQL(p.command),
            roles,
        )
        if p.using is not None:
            stmt += sql.SQL(" USING ({})").format(_raw(p.using))
        if p.check is not None:
            stmt += sql.SQL(" WITH CHECK ({})").format(_raw(p.check))
        out.append(stmt)
    return out


def _owners(model: TableModel, target: QualifiedName, partitions: Sequence[QualifiedName]) -> list[sql.Composable]:
    return [sql.SQL("ALTER TABLE {} OWNER TO {}").format(x.ident(), sql.Identifier(model.owner))
            for x in (target, *partitions)]


def redecorate(model: TableModel, target: QualifiedName, partitions: Sequence[QualifiedName], grantees: list[str],
               indexes: list[IndexDDL], column: str) -> list[sql.Composable]:
    """What a DBA may change on the table while it is being converted without changing what it
    is (its owner, grants, comments on it and its columns, row-level security switches, replica
    identity), set again on `target` from `model` (read under the swap's lock), each to its state
    whether or not decorate() set it: first the grants `target` has (to `grantees`) revoked."""
    t = target.ident()
    out = _owners(model, target, partitions)
    out += [sql.SQL("REVOKE ALL ON TABLE {} FROM {} CASCADE").format(
        t, sql.SQL("PUBLIC") if g == "PUBLIC" else sql.Identifier(g)) for g in grantees]
    out += [_grant(g, t) for g in model.grants]
    out.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(t, sql.Literal(model.comment)))
    out += [sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(t, sql.Identifier(c.name), sql.Literal(c.comment))
            for c in model.columns]
    out.append(sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(
        t, sql.SQL("ENABLE" if model.row_security else "DISABLE")))
    out.append(sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(
        t, sql.SQL("FORCE" if model.force_row_security else "NO FORCE")))
    out += replica_identity(model, target, indexes, column) or [
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(t)]
    return out


def resettle(model: TableModel, target: QualifiedName, partitions: Sequence[QualifiedName], *,
             columns: Sequence[str], options: Sequence[str]) -> list[sql.Composable]:
    """The rest of redecorate(): the storage options (autovacuum's, fillfactor) on every
    partition, and the column statistics targets and options (n_distinct) on `target` and every
    partition, set again from `model`, whatever they were. `columns`: those that carry a target or
    options on any of them now, `options`: the storage options set on any partition
    (digests.settings_in_place): reset first. Pure."""
    out: list[sql.Composable] = []
    for x in partitions:
        if options:
            out.append(sql.SQL("ALTER TABLE {} RESET ({})").format(x.ident(), sql.SQL(", ").join(_raw(o) for o in options)))
        if model.reloptions:
            out.append(sql.SQL("ALTER TABLE {} SET ({})").format(x.ident(), sql.SQL(", ").join(_raw(o) for o in model.reloptions)))
    known = {c.name for c in model.columns}
    for x in (target, *partitions):
        for name in (c for c in columns if c in known):
            out.append(sql.SQL("ALTER TABLE ONLY {} ALTER COLUMN {} SET STATISTICS -1").format(x.ident(), sql.Identifier(name)))
            out.append(sql.SQL("ALTER TABLE ONLY {} ALTER COLUMN {} RESET (n_distinct, n_distinct_inherited)").format(
                x.ident(), sql.Identifier(name)))
    return out + column_statistics(model, target, list(partitions))


def replica_identity(model: TableModel, target: QualifiedName, indexes: list[IndexDDL], column: str) -> list[sql.Composable]:
    """The original's replica identity on the partitioned table, after its indexes are built (USING
    INDEX names the shadow's copy of the original's index). Its partitions get it from there once
    theirs exist (partitions.replica_identity_sql): PostgreSQL hands it to none of them."""
    if model.replica_identity == "f":
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(target.ident())]
    if model.replica_identity == "n":
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(target.ident())]
    idx = next((i for i in indexes if i.final_name == model.replica_identity_index), None)
    if model.replica_identity == "i" and idx is not None and not replica_index_unusable(model, column):
        return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(target.ident(), sql.Identifier(idx.temp_name))]
    return []


def replica_index_unusable(model: TableModel, column: str) -> bool:
    """The replica identity index gets the partition key appended (a unique index of a partitioned
    table must include it), and that column is nullable: such an index cannot be a replica identity."""
    idx = next((i for i in model.indexes if i.name == model.replica_identity_index), None)
    col = model.column(column)
    return idx is not None and column not in idx.columns and col is not None and not col.notnull


def swap_triggers(model: TableModel, new: QualifiedName) -> list[sql.Composable]:
    """The original's triggers on the new table, same enabled state. The definitions were read
    while the original had the name the new table now has, so they name the new table."""
    assert model.table == new, "trigger definitions name the original table"
    out: list[sql.Composable] = []
    for trg in model.triggers:
        out.append(_raw(trg.definition))
        if trg.enabled in _ENABLE:
            out.append(sql.SQL("ALTER TABLE {} {} {}").format(new.ident(), sql.SQL(_ENABLE[trg.enabled]),
                                                              sql.Identifier(trg.name)))
    return out


def swap_sequences(model: TableModel, new: QualifiedName) -> list[sql.Composable]:
    """A serial's sequence is re-owned by the new table's column (so dropping the old table
    keeps it); an IDENTITY column's own sequence is moved past the highest value in use."""
    out: list[sql.Composable] = []
    for s in model.owned_sequences:
        if s.identity:
            out.append(sql.SQL(
                "SELECT setval(pg_get_serial_sequence({tab}, {col}), "
                "greatest(coalesce((SELECT max({c}) FROM {t}), 0), (SELECT last_value FROM {seq})))"
            ).format(tab=sql.Literal(new.literal), col=sql.Literal(s.column), c=sql.Identifier(s.column),
                     t=new.ident(), seq=s.sequence.ident()))
        else:
            out.append(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
                s.sequence.ident(), new.ident(), sql.Identifier(s.column)))
    return out


def swap_views(model: TableModel, *, materialized: bool = True) -> list[sql.Composable]:
    """Views bind to the table's OID: recreate each (same definition, so it now reads the table
    that has the name) keeping its OID, owner and grants. A materialized view is rebuilt here
    only with `materialized` (revert); the conversion's swap leaves it reading `<table>_old` and
    rebuilds it after the swap (matview_rebuild)."""
    out: list[sql.Composable] = []
    for v in model.views:
        if not v.materialized:
            out.append(sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(v.name.ident(), _view_options(v), _query(v)))
        elif materialized:
            out.append(sql.SQL("DROP MATERIALIZED VIEW {}").format(v.name.ident()))
            out.append(_create_matview(v, v.name))
            out += _matview_decorations(v)
    out += [_raw(f.definition) for f in model.functions]
    return out


def matview_rebuild(v: DependentView, temp: QualifiedName) -> tuple[list[sql.Composable], list[sql.Composable]]:
    """(build, switch) for a materialized view of the converted table, run after the swap: build
    `temp` (in the work schema) from the same query, which now reads the partitioned table,
    while the old one still answers its readers; then, in a short transaction, the old one goes
    and `temp` takes its name, schema, owner, indexes, grants and comment."""
    build: list[sql.Composable] = [
        sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {}").format(temp.ident()), _create_matview(v, temp)]
    switch: list[sql.Composable] = [
        sql.SQL("DROP MATERIALIZED VIEW {}").format(v.name.ident()),
        sql.SQL("ALTER MATERIALIZED VIEW {} RENAME TO {}").format(temp.ident(), sql.Identifier(v.name.name)),
        sql.SQL("ALTER MATERIALIZED VIEW {} SET SCHEMA {}").format(
            QualifiedName(temp.schema, v.name.name).ident(), sql.Identifier(v.name.schema)),
        *_matview_decorations(v),
    ]
    return build, switch


def _query(v: DependentView) -> sql.Composable:
    return _raw(v.definition.strip().rstrip(";"))


def _view_options(v: DependentView) -> sql.Composable:
    return sql.SQL(" WITH ({})").format(sql.SQL(", ").join(_raw(o) for o in v.options)) if v.options else sql.SQL("")


def _create_matview(v: DependentView, name: QualifiedName) -> sql.Composable:
    return sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH {}").format(
        name.ident(), _view_options(v), _query(v), sql.SQL("DATA" if v.populated else "NO DATA"))


def _matview_decorations(v: DependentView) -> list[sql.Composable]:
    out: list[sql.Composable] = [
        sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(v.name.ident(), sql.Identifier(v.owner))]
    out += [_raw(i) for i in v.indexes]
    out += [_grant(g, v.name.ident()) for g in v.grants]
    if v.comment is not None:
        out.append(sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(v.name.ident(), sql.Literal(v.comment)))
    return out


def swap_publications(publications: Sequence[Publication], new: QualifiedName,
                      old: QualifiedName) -> list[sql.Composable]:
    """The new table joins each publication that names the original, with the same column list
    and row filter, and the original (`old`, by then renamed) leaves it: what revert copies into it
    later must not reach subscribers, who have those rows already and no table of its interim
    name. A publication of the schema or of all tables takes the new table in by itself."""
    out: list[sql.Composable] = []
    for p in publications:
        if p.scope == "table":
            out += [leave_publication(p, old), join_publication(p, new)]
    return out


def join_publication(p: Publication, table: QualifiedName) -> sql.Composable:
    stmt = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(p.name), table.ident())
    if p.columns is not None:
        stmt += sql.SQL(" ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in p.columns))
    if p.row_filter is not None:
        stmt += sql.SQL(" WHERE ({})").format(sql.SQL(p.row_filter))  # pg_get_expr's text
    return stmt


def leave_publication(p: Publication, table: QualifiedName) -> sql.Composable:
    return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(p.name), table.ident())
