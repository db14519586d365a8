"""`partman restore TABLE PARTITION [--attach]`: bring an archived partition back from S3 as a
plain table named `<partition>` in the parent's schema (made as the default move makes a
partition: partitions.standalone_partition_sql), after checking the object's sha256 (against the
manifest and the removal record) and its row count; `--attach` re-attaches it. A partition that
retention detached or dropped rather than archived is refused first, saying where its rows are
(removals.py): a restore never advises dropping the only copy of a partition's rows."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zlib
from typing import Any

import psycopg
from psycopg import sql

from .. import archive, catalog, log
from ..db import QualifiedName, connect, resolve_table, split_name, with_lock_retry
from ..errors import LockTimeoutGaveUp, PartmanError, UsageError, sentences
from ..partitions import key_column, list_partitions, newest_partition, replica_identity_sql, standalone_partition_sql
from ..settings import Settings
from ..catalog import ManagedTable
from ..intervals import zone
from . import aware, columns, default_rows, notice, parent_of, relation_kind, removals

CHUNK = 1024 * 1024
RESTORED = "partman:restored"  # the comment on a restored table not attached yet: its archive


def _not_archived(conn: psycopg.Connection, settings: Settings, parent: QualifiedName, target: QualifiedName,
                  rec: dict[str, Any]) -> str:
    mt = catalog.get_managed(conn, settings, parent.schema, parent.name)
    moved_to = (mt.retention_schema if mt else None) or settings.retention_schema or None
    schemas = [parent.schema, *([moved_to] if moved_to else [])]
    tables = removals.detached_tables(conn, target.name, schemas) if rec["action"] == "detach" else []
    where = tables[0] if tables else QualifiedName(moved_to or parent.schema, target.name)
    attach = removals.attach_advice(conn, parent, where, rec)
    return removals.not_archived(rec, parent, target, tables, attach, mt.retention if mt else None, schemas)


def _in_the_way(target: QualifiedName, parent: QualifiedName, rec: dict[str, Any] | None) -> str:
    rename = f"`ALTER TABLE {target.literal} RENAME TO ...`"
    if rec is None:
        return (f"{target} already exists as a table, and partman's catalog records no removal of it from {parent}: "
                f"rename it ({rename}) and run the restore again. Nothing was changed.")
    return (f"{target} already exists as a table, so the archived copy cannot be restored under that name: rename it "
            f"({rename}) and run the restore again. Drop it instead only if it holds nothing you need (an earlier "
            f"restore of this archive, say): the verified archive {rec['archive_uri']} keeps the {rec['row_count']} "
            "rows partman removed. Nothing was changed.")


def _copy_in(conn: psycopg.Connection, table: QualifiedName, cols: list[str], gzipped: Any) -> None:
    """Stream the gzipped CSV archive into table, a MiB at a time."""
    gz = zlib.decompressobj(31)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER)").format(
        table.ident(), sql.SQL(", ").join(map(sql.Identifier, cols)))
    with conn.cursor() as cur, cur.copy(copy_sql) as cp:
        while True:
            data = gzipped.read(CHUNK)
            if not data:
                break
            cp.write(gz.decompress(data))
        cp.write(gz.flush())


def _restored_copy(conn: psycopg.Connection, target: QualifiedName) -> dict[str, Any] | None:
    """What a restore recorded on the plain table it made (a verified copy of an archive, not yet
    attached), or None for any other table."""
    comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (target.literal,)).fetchone()[0]
    if not comment or not comment.startswith(RESTORED + " "):
        return None
    try:
        copy = json.loads(comment[len(RESTORED) + 1:])
    except ValueError:
        return None
    wanted = ("uri", "sha256", "rows", "lower", "upper")
    return copy if isinstance(copy, dict) and all(k in copy for k in wanted) else None


def _copy_of_another(copy: dict[str, Any], parent: QualifiedName, target: QualifiedName,
                     rec: dict[str, Any] | None) -> str | None:
    """Why a restored copy is not this table's to attach (it was restored from another table's
    archive), or None when it is: the comment names the table the archive came from (a comment
    without it: the archive must be the one this table's removal record names)."""
    named = copy.get("table")
    if isinstance(named, list) and len(named) == 2 and all(isinstance(n, str) for n in named):
        if tuple(named) == (parent.schema, parent.name):
            return None
        source = QualifiedName(*named)
        return (f"{target} is a restored copy of an archive of {source} ({copy['uri']}), not of {parent}: partman "
                f"attaches it only to the table it was removed from (`partman restore {source.arg} {target.name} "
                f"--attach`). Nothing was changed.")
    if rec is not None and rec["archive_uri"] == copy["uri"]:
        return None
    return (f"{target} was restored from {copy['uri']}, which partman's catalog does not record as the archive of "
            f"{parent}'s partition {target.name}, so partman does not attach it to {parent}. Nothing was changed.")


def _attach(conn: psycopg.Connection, settings: Settings, parent: QualifiedName, target: QualifiedName,
            lower: str | None, upper: str | None, n: int, result: dict[str, Any]) -> None:
    """Attach the restored table for its archived bounds. Rows written for the range since its
    removal wait in the default partition, where they would fail the attach: they move into the
    restored table in the attach's transaction, as the default move moves rows into a partition it
    makes. Fills `result` (attached, rows_from_default, warning)."""
    stmt = sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
        parent.ident(), target.ident(), removals.bounds_sql(lower, upper))
    by = key_column(conn, parent)
    like = newest_partition(list_partitions(conn, parent, by[1]) if by else [])
    mt = catalog.get_managed(conn, settings, parent.schema, parent.name)
    d = default_rows.default_partition(conn, mt) if mt is not None and None not in (lower, upper) else None
    from_default = [0]
    if d is not None:  # the attach then trusts this constraint instead of reading the table under its locks
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS partman_range").format(target.ident()))
        default_rows.add_range_check(conn, mt, target, lower, upper)

    def attach_it(c: psycopg.Connection) -> None:
        if d is not None and default_rows.rows_in_range(c, mt, d, lower, upper):
            cols = [col["name"] for col in columns(c, parent) if not col["generated"]]
            from_default[0] = default_rows.attach_with_default_rows(
                c, mt, d, target, cols, lower, upper, default_rows.is_published(c, d))
        else:
            c.execute(stmt)
            for identity in replica_identity_sql(c, like.oid, target) if like is not None else []:
                c.execute(identity)  # as the newest partition's, on the indexes the attach made
        if d is not None:
            default_rows.drop_range_check(c, target)
        c.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(target.ident()))  # a partition now

    try:
        with_lock_retry(conn, settings, f"attaching {target} to {parent}", attach_it,
                        tables=[target], partitions_of=[parent])
    except (psycopg.Error, LockTimeoutGaveUp) as exc:
        raise PartmanError(
            f"{target} was restored ({n} rows, sha256 verified) as a plain table, but attaching it to {parent} "
            f"failed: {sentences(str(exc))} Once the cause is fixed, run `partman restore {parent.arg} "
            f"{target.name} --attach` again: it attaches this restored copy."
        ) from None
    result["attached"] = True
    result["rows_from_default"] = from_default[0]
    if from_default[0]:
        log.get().info("default_rows_moved", table=str(parent), partition=target.name, rows=from_default[0])
    warning = _retention_warning(conn, settings, mt, target) if mt is not None and mt.retention else None
    if warning:
        result["warning"] = warning


def restore(conn: psycopg.Connection, settings: Settings, table: str, partition: str, attach: bool = False) -> dict[str, Any]:
    parent = resolve_table(conn, table)
    parts = split_name(partition)
    if parts is None or not parts[1]:
        raise UsageError(f"{partition!r} is not a partition name; give it as schema.partition or partition.")
    if parts[0] is not None and parts[0] != parent.schema:
        raise UsageError(f"Partition {partition!r} is not in {parent}'s schema {parent.schema!r}; partitions are restored beside their table.")
    target = QualifiedName(parent.schema, parts[1])
    exists = relation_kind(conn, target) is not None
    if exists and conn.execute("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = %s::regclass "
                               "AND inhparent = %s::regclass)", (target.literal, parent.literal)).fetchone()[0]:
        raise PartmanError(f"{target} is a live partition of {parent}, not a removed one: there is nothing to "
                           "restore. `partman status` lists the removed partitions and their archives.")
    rec = removals.last_removal(conn, settings, parent, target.name)
    if rec is not None and rec["action"] != "archive":
        raise PartmanError(_not_archived(conn, settings, parent, target, rec))
    if exists:
        copy = _restored_copy(conn, target)
        if copy is None:
            raise PartmanError(_in_the_way(target, parent, rec))
        other = _copy_of_another(copy, parent, target, rec)
        if other:
            raise PartmanError(other)
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.ident())).fetchone()[0]
        if n != copy["rows"]:
            raise PartmanError(
                f"{target} was restored from {copy['uri']} with {copy['rows']} rows but holds {n} now: it was changed "
                "since, so partman does not " + ("attach it" if attach else "take it")
                + " as the archive's copy. Attach it by hand, or drop it and restore again. Nothing was changed.")
        result = {"table": str(parent), "partition": str(target), "rows": n, "sha256": copy["sha256"],
                  "bytes": copy.get("bytes"), "uri": copy["uri"], "attached": False, "resumed": True}
        if attach:
            _attach(conn, settings, parent, target, copy["lower"], copy["upper"], n, result)
        else:  # the same command again: what it asked for is there
            result["already"] = True
        return result
    if rec is not None:
        bucket, key = archive.parse_uri(rec["archive_uri"])
    else:
        if not settings.archive_bucket:
            raise PartmanError(
                f"No archive of {target} is recorded in partman's catalog and PARTMAN_ARCHIVE_BUCKET is not set, "
                "so there is nowhere to look for it."
            )
        bucket, key = settings.archive_bucket, archive.object_key(settings, parent.schema, parent.name, target.name)
    if not key.endswith(".csv.gz"):
        raise PartmanError(f"The recorded archive s3://{bucket}/{key} is not a partman .csv.gz archive.")
    manifest = archive.fetch_manifest(settings, bucket, key[: -len(".csv.gz")] + ".manifest.json")
    uri = f"s3://{bucket}/{key}"
    if rec is not None and rec["archive_sha256"] and rec["archive_sha256"] != manifest.get("sha256"):
        raise PartmanError(
            f"The manifest of {uri} says sha256 {manifest.get('sha256')} but partman recorded "
            f"{rec['archive_sha256']} when it removed {target}: the manifest was changed. Nothing was restored."
        )
    s3 = archive.client(settings)
    with tempfile.TemporaryFile(prefix="partman-restore-") as tmp:
        sha = hashlib.sha256()
        size = 0
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            while True:
                data = body.read(CHUNK)
                if not data:
                    break
                sha.update(data)
                size += len(data)
                tmp.write(data)
        except Exception as exc:
            raise PartmanError(f"Could not download {uri}: {type(exc).__name__}: {' '.join(str(exc).split())}.") from None
        digest = sha.hexdigest()
        if digest != manifest.get("sha256"):
            raise PartmanError(
                f"{uri} has sha256 {digest} but its manifest says {manifest.get('sha256')}: the object is corrupt or was "
                "replaced. Nothing was restored."
            )
        tmp.seek(0)
        cols = [c["name"] for c in manifest["columns"]]
        by = key_column(conn, parent)
        parts = list_partitions(conn, parent, by[1]) if by else []
        with conn.transaction():  # made as the default move makes a partition it attaches
            for stmt in standalone_partition_sql(conn, parent, parts, target):
                conn.execute(stmt)
            have = dict(conn.execute(
                "SELECT attname, attgenerated <> '' FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped", (target.literal,)).fetchall())
            missing = [c for c in cols if c not in have]
            if missing:
                raise PartmanError(
                    f"{parent} no longer has the archived columns {', '.join(missing)}; restore by hand from {uri} "
                    "using the DDL in its manifest."
                )
            generated = [c for c in cols if have[c]]
            # a generated column cannot be written: the archive is loaded into a temporary table
            # with plain columns, the rest copied over, and the values PostgreSQL computes checked
            # against the archived ones (an expression changed since would give other values)
            load = QualifiedName("pg_temp", "partman_restore") if generated else target
            if generated:
                conn.execute(sql.SQL("CREATE TEMP TABLE partman_restore (LIKE {}) ON COMMIT DROP").format(parent.ident()))
            _copy_in(conn, load, cols, tmp)
            if generated:
                plain = sql.SQL(", ").join(sql.Identifier(c) for c in cols if not have[c])
                conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM pg_temp.partman_restore").format(
                    target.ident(), plain, plain))
                every = sql.SQL(", ").join(map(sql.Identifier, cols))
                other = conn.execute(sql.SQL(
                    "SELECT count(*) FROM (SELECT ROW({c})::text FROM pg_temp.partman_restore "
                    "EXCEPT ALL SELECT ROW({c})::text FROM {t}) x").format(c=every, t=target.ident())).fetchone()[0]
                if other:
                    raise PartmanError(
                        f"{other} archived row(s) of {uri} differ from what {parent}'s generated column(s) "
                        f"{', '.join(generated)} compute now: their expressions changed since the archive. "
                        "Nothing was restored; restore by hand using the DDL in its manifest."
                    )
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.ident())).fetchone()[0]
            if n != manifest["row_count"]:
                raise PartmanError(
                    f"{uri} holds {n} rows but its manifest says {manifest['row_count']}. Nothing was restored."
                )
            # a verified copy of the archive: a rerun with --attach (killed before the attach, or the
            # attach blocked) attaches it instead of refusing a table in the way
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(target.ident(), sql.Literal(RESTORED + " " + json.dumps({
                "table": [parent.schema, parent.name], "uri": uri, "sha256": digest, "bytes": size, "rows": n,
                "lower": manifest["bounds"]["lower"], "upper": manifest["bounds"]["upper"]}))))
    result = {"table": str(parent), "partition": str(target), "rows": n, "sha256": digest, "bytes": size,
              "uri": uri, "attached": False, "manifest": manifest}
    earlier = removals.earlier_archives(conn, settings, rec) if rec is not None else []
    if earlier:
        result["earlier_archives"] = [r["archive_uri"] for r in earlier]
        result["note"] = removals.earlier_archives_note(target, uri, earlier)
    log.get().info("partition_restored", table=str(parent), partition=str(target), rows=n, uri=uri)
    if attach:
        _attach(conn, settings, parent, target, manifest["bounds"]["lower"], manifest["bounds"]["upper"], n, result)
    return result


def _retention_warning(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, target: QualifiedName) -> str | None:
    """What retention will do to a partition just attached again: remove it at the next pass when it
    is past the retention now, or at the first pass after the moment it will be (its range only
    gets older), unless it is held."""
    from .retention import due, holds

    if target.name in holds(conn, settings, mt.schema_name):
        return None
    again = f"{notice.again(mt.retention_action)} unless you hold it (`partman hold {target.arg} --reason ...`)"
    if any(d["partition"] == target.name for d in due(conn, settings, mt)):
        return (f"{target} is older than the retention of {mt.qualified} ({mt.retention}): the next maintenance "
                f"pass {again}.")
    part = next((p for p in list_partitions(conn, parent_of(mt), mt.key_type) if p.name == target.name), None)
    if part is None or part.upper is None:
        return None
    upper = aware(part.upper, zone(mt.timezone))
    when = conn.execute("SELECT %s::timestamptz + %s::interval", (upper, mt.retention)).fetchone()[0]
    return (f"{target} will be older than the retention of {mt.qualified} ({mt.retention}) from "
            f"{when.replace(microsecond=0).isoformat(sep=' ')} (its range ends at {upper.isoformat(sep=' ')}): the "
            f"first maintenance pass after that {again}.")


def cli_restore(settings: Settings, args: argparse.Namespace) -> int:
    with connect(settings) as conn:
        r = restore(conn, settings, args.table, args.partition, attach=args.attach)
    if r.get("already"):
        print(f"{r['partition']} was restored already, as a plain table ({r['rows']} rows from {r['uri']}, unchanged "
              f"since): nothing to do. `partman restore {args.table} {args.partition} --attach` attaches it.")
        return 0
    if r.get("resumed"):
        print(f"attached {r['partition']} to {r['table']}: the copy of {r['uri']} restored earlier ({r['rows']} rows)"
              + (f", with {r['rows_from_default']} rows written for its range since, moved in from the default partition"
                 if r.get("rows_from_default") else ""))
        if r.get("warning"):
            sys.stderr.write("partman: warning: " + r["warning"] + "\n")
        return 0
    how = f"attached to {r['table']}" if r["attached"] else "as a plain table"
    if r.get("rows_from_default"):
        how += f", with {r['rows_from_default']} rows written for its range since, moved in from the default partition"
    print(f"restored {r['partition']} {how}: {r['rows']} rows from {r['uri']}; sha256 {r['sha256']} and row count "
          "match the manifest")
    for what in ("note", "warning"):
        if r.get(what):
            sys.stderr.write(f"partman: {what}: " + r[what] + "\n")
    return 0
