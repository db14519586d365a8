"""Whether a table can be converted, from its model alone: the refusals (a shape PostgreSQL cannot
partition, or that partman cannot carry: the plan stops, naming what to change first) and the
warnings (what will differ on the new table, or what the application must check). Pure: no
connection; the swap asks `publication_refusals` again under its lock."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .. import naming
from ..db import quote_ident as q
from ..introspect import Publication, TableModel, key_type_of
from .ddl import keeps_not_valid, replica_index_unusable


def _identity_gains(model: TableModel, column: str) -> list[str] | None:
    """The original's replica identity columns when the new table's identity gains `column`
    (the primary key or the identity index widened to include it), else None."""
    if model.replica_identity == "d":
        index = next((i for i in model.indexes if i.primary), None)
    elif model.replica_identity == "i":
        index = next((i for i in model.indexes if i.name == model.replica_identity_index), None)
    else:
        return None
    if index is None or column in index.columns:
        return None
    return [c for c in index.columns if c is not None]


def publication_refusals(model: TableModel, column: str | None, publications: Sequence[Publication]) -> list[str]:
    """Why the new table cannot be published as the original is (empty: it can)."""
    t = model.table
    out: list[str] = []
    identity = _identity_gains(model, column) if column is not None else None
    for p in publications:
        if p.scope != "table":
            continue
        narrowed = [what for what, value in (("a column list", p.columns), ("a row filter", p.row_filter))
                    if value is not None]
        if not p.ours:
            out.append(f"publication {p.name} publishes {t} and belongs to {p.owner}: the swap adds the new table "
                       "to it and takes the original out, which only a role with its owner's privileges may. Run the "
                       f"conversion as such a role, or give it to the table's owner first (ALTER PUBLICATION {q(p.name)} "
                       f"OWNER TO {q(model.owner)}).")
        elif narrowed and not p.via_root:
            what = " and ".join(narrowed)
            out.append(f"publication {p.name} publishes {t} with {what}, which PostgreSQL allows on a partitioned "
                       "table only when the publication publishes via its partition root (otherwise the partitions "
                       f"would be published whole). Set it first: ALTER PUBLICATION {q(p.name)} SET "
                       "(publish_via_partition_root = true), after which its subscribers receive the new table's "
                       f"changes under {t}'s name, as they do now; or take the {what.replace('a ', '', 1)} off.")
        elif (p.columns is not None and p.updates and identity is not None and column not in p.columns
              and set(identity) <= set(p.columns)):
            out.append(f"publication {p.name} publishes the columns ({', '.join(p.columns)}) of {t} and its updates "
                       f"or deletes; the new table's replica identity gets {column} (its key widened to include it), "
                       "which that column list lacks, so every UPDATE and DELETE of the table would fail after the "
                       f"swap. Add {q(column)} to {p.name}'s column list for {t} (and to its subscribers' table) first, "
                       f"or have it publish inserts only (ALTER PUBLICATION {q(p.name)} SET (publish = 'insert')).")
    return out


def _assigns(source: str, column: str) -> bool:
    """Whether a PL/pgSQL body assigns NEW.<column>: `NEW.col := ...` anywhere, `NEW.col = ...` where
    a statement starts (elsewhere `=` compares). PL/pgSQL folds unquoted names to lower case. A
    heuristic: a whole-row assignment goes unseen."""
    name = r'"' + re.escape(column.replace('"', '""')) + r'"'
    if column == column.lower():
        name = rf"(?:{name}|(?i:{re.escape(column)})\b)"
    target = rf"\b(?i:new)\s*\.\s*{name}"
    return bool(re.search(rf"{target}\s*:=", source) or re.search(
        rf"(?:^|;|\b(?i:then|else|begin|loop)\b)\s*{target}\s*=(?!=)", source, re.MULTILINE))


def refusals(model: TableModel, column: str) -> list[str]:
    """Why this table cannot be converted (empty: it can)."""
    t = model.table
    if model.is_partitioned:
        return [f"{t} is already partitioned; to have partman maintain it, use `partman register {t.arg} --column ...`."]
    if model.relkind != "r":
        return [f"{t} is not a table (relkind {model.relkind!r}); only ordinary tables can be converted."]
    out: list[str] = []
    col = model.column(column)
    if col is None:
        out.append(f"{t} has no column {column!r} (its columns: {', '.join(c.name for c in model.columns)}).")
    elif key_type_of(model, column) is None:
        out.append(f"column {column!r} of {t} is {col.type}, not a timestamptz, timestamp or date column; "
                   "pick a time column with --column.")
    elif col.generated:
        out.append(f"column {column!r} of {t} is a generated column, which PostgreSQL cannot partition by.")
    if model.foreign_keys_in:
        refs = ", ".join(f"{fk.table} ({fk.name})" for fk in model.foreign_keys_in)
        out.append(f"{t} is referenced by foreign keys from {refs}: after partitioning no unique key on the "
                   "referenced columns alone can exist, so they could not survive. Drop them (or point them "
                   "elsewhere) first.")
    for k in model.constraints:
        if k.kind == "x":
            out.append(f"exclusion constraint {k.name} cannot be carried to a partitioned table; drop it first.")
    for idx in model.indexes:
        if idx.unique and None in idx.columns:
            out.append(f"unique index {idx.name} is on an expression; a partitioned table's unique index must be on "
                       "plain columns including the partition key. Drop or rewrite it first.")
    for v in model.views:
        if v.materialized and v.dependents:
            out.append(f"materialized view {v.name} reads {t} and is read by {', '.join(v.dependents)}: partman "
                       f"rebuilds it after the swap, which those views prevent. Drop them first and create them "
                       "again after the conversion.")
    if model.inheritance:
        out.append(f"{t} takes part in table inheritance ({', '.join(model.inheritance)}), which partman does not "
                   "convert.")
    if model.rules:
        out.append(f"{t} has rules ({', '.join(model.rules)}), which partman does not carry over; drop them first.")
    for tr in model.triggers:
        if tr.row_transition:
            out.append(f"trigger {tr.name} is a FOR EACH ROW trigger with transition tables (REFERENCING ... TABLE), "
                       "which PostgreSQL does not allow on a partitioned table. Make it FOR EACH STATEMENT (the "
                       "transition tables then hold the statement's rows), or drop it, first.")
    if model.persistence == "t":
        out.append(f"{t} is a temporary table.")
    out += publication_refusals(model, column, model.publications)
    return out


def warnings(model: TableModel, column: str) -> list[str]:
    t = model.table
    out: list[str] = []
    col = model.column(column)
    if col is not None and not col.notnull and any(k.kind == "p" for k in model.constraints):
        out.append(f"column {column} of {t} is nullable, but the primary key, widened to include it, makes it NOT NULL "
                   f"on the new table: an INSERT with a NULL {column} that succeeds today will fail after the swap "
                   "(a primary key column cannot hold NULL, not even in the default partition). Check the application "
                   f"sends {column}, or give it a DEFAULT, first.")
    elif col is not None and not col.notnull:
        out.append(f"column {column} of {t} is nullable: rows with a NULL key would land in the default partition. "
                   f"Consider ALTER TABLE {t.literal} ALTER COLUMN {q(column)} SET NOT NULL.")
    for k in model.constraints:
        if k.kind == "c" and k.no_inherit:
            out.append(f"CHECK constraint {k.name} is NO INHERIT, which a partitioned table cannot have; not carried.")
        if k.kind == "f" and not k.validated and not keeps_not_valid(model, k):
            out.append(f"foreign key {k.name} of {t} is NOT VALID: the new table's is validated (a partitioned table "
                       "cannot keep one unvalidated before PostgreSQL 18), so a row that violates it stops the "
                       f"conversion before its swap, rolled back. Check first: ALTER TABLE {t.literal} VALIDATE CONSTRAINT "
                       f"{q(k.name)}.")
        if k.kind == "f" and keeps_not_valid(model, k):
            out.append(f"foreign key {k.name} is re-created on the new table after the copy NOT VALID, as the original "
                       "has it (on each partition and on the table; PostgreSQL 18): its old rows are not checked.")
        elif k.kind == "f":
            out.append(f"foreign key {k.name} is re-created on the new table after the copy: on each partition NOT VALID "
                       "and then validated, which reads the partition while writers of the referenced table go on "
                       "(they wait only for the moments each one is added).")
    if model.replica_identity == "i" and replica_index_unusable(model, column):
        out.append(f"the replica identity of {t} is index {model.replica_identity_index}, which gets {column} appended "
                   f"(a unique index of a partitioned table must include its partition key), and {column} is nullable, "
                   "so it cannot be one: the new table and its partitions keep the default (the primary key). To keep "
                   f"it, make {q(column)} NOT NULL first (ALTER TABLE {t.literal} ALTER COLUMN {q(column)} SET NOT NULL).")
    for v in model.views:
        if v.materialized:
            out.append(f"materialized view {v.name} is rebuilt after the swap, under another name while the old one "
                       "keeps answering (it reads the old table until then), then takes its place in a short "
                       "transaction: its query runs once more, writers do not wait for it.")
    for tr in model.triggers:
        if tr.before_insert_source and _assigns(tr.before_insert_source, column):
            out.append(
                f"trigger {tr.name} (BEFORE INSERT, FOR EACH ROW) sets NEW.{q(column)}. On a partitioned table a row is "
                "routed to its partition before that trigger runs, and PostgreSQL fails the INSERT (\"moving row to "
                "another partition during a BEFORE FOR EACH ROW trigger is not supported\") whenever the trigger's "
                f"value belongs to another partition than the inserted one, a NULL or missing {column} included (it "
                f"routes to the default partition). Give {q(column)} a DEFAULT that yields the trigger's value and stop "
                "setting it in the trigger, or set it in the application, before converting.")
    per_partition = [p.name for p in model.publications if not p.via_root]
    if per_partition:
        verb = "does" if len(per_partition) == 1 else "do"
        out.append(f"{t} is published by {', '.join(per_partition)}, which {verb} not publish via the partition root: "
                   f"after the swap their subscribers receive the new table's changes under its partitions' names "
                   f"({t.name}_p<YYYYMMDD>, {naming.default_name(t.name)}), "
                   "so each subscriber needs tables of those names (partitions of one table, to keep one); "
                   "ALTER PUBLICATION ... SET (publish_via_partition_root = true) keeps the table's own name.")
    if model.persistence == "u":
        out.append(f"{t} is UNLOGGED; a partitioned table cannot be, so the new table is logged.")
    if model.of_type:
        out.append(f"{t} is a typed table (OF {model.of_type}); the new table has the same columns but is not bound "
                   f"to the type: ALTER TYPE {model.of_type} no longer changes it.")
    if model.clustered_on:
        out.append(f"{t} is marked CLUSTER ON {model.clustered_on}, which a partitioned table cannot carry: a "
                   f"CLUSTER of the new table names the index (CLUSTER {t.literal} USING {q(model.clustered_on)}; before "
                   "PostgreSQL 15, one per partition).")
    for s in model.owned_sequences:
        if s.identity and s.column not in model.index_leads():
            out.append(f"IDENTITY column {s.column} of {t} has no index that leads with it: the swap reads the whole "
                       f"table under its exclusive lock to move the column's sequence past the highest value in use. "
                       f"Index it first (CREATE INDEX CONCURRENTLY ON {t.literal} ({q(s.column)})) to keep the swap short.")
    return out
