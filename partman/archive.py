"""Archive a partition to S3, verified before anything is dropped.

`COPY (SELECT cols FROM partition ORDER BY key, id) TO STDOUT (FORMAT csv, HEADER)` is streamed
through gzip and sha256 into a boto3 multipart upload: memory stays bounded by one part
(`archive_part_size_mb`, at least 5 MiB) whatever the partition's size. The gzip is ISA-L's
deflate (`isal`): one standard gzip member that any gzip reads, about as small as zlib's level 6
and 8x faster on ledger rows (13x on the benchmark's), so compression no longer sets the pace
(it did: one core at ~45-60 MiB/s while the REPEATABLE READ snapshot stayed open). The stored
object is then re-read (its size and sha256 against those computed while uploading), and only then
`<partition>.manifest.json` is written beside it. Progress is recorded in the catalog's
`archive` table so a rerun resumes without writing a second object. Endpoint, region and
credentials come from boto3's standard settings (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, ...)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import queue
import threading
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from isal import isal_zlib
from psycopg import sql
from psycopg.rows import dict_row

from . import __version__, catalog, failpoints, log
from .catalog import ManagedTable
from .errors import PartmanError
from .partitions import Partition
from .settings import Settings

MIB = 1024 * 1024
MIN_PART = 5 * MIB


class ArchiveError(PartmanError):
    """An archive step failed; the partition stays."""


@dataclass
class ArchiveResult:
    uri: str
    key: str
    manifest_key: str
    sha256: str
    bytes: int
    row_count: int
    manifest: dict[str, Any]


# ---------------------------------------------------------------- S3 plumbing

def client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        request_checksum_calculation=settings.archive_checksum_mode,
        response_checksum_validation=settings.archive_checksum_mode,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", config=cfg)


def sse_args(settings: Settings) -> dict[str, str]:
    out: dict[str, str] = {}
    if settings.archive_sse:
        out["ServerSideEncryption"] = settings.archive_sse
        if settings.archive_kms_key_id:
            out["SSEKMSKeyId"] = settings.archive_kms_key_id
    return out


def object_key(settings: Settings, schema: str, table: str, partition: str) -> str:
    return f"{settings.archive_prefix}{schema}.{table}/{partition}.csv.gz"


def manifest_key(settings: Settings, schema: str, table: str, partition: str) -> str:
    return f"{settings.archive_prefix}{schema}.{table}/{partition}.manifest.json"


def parse_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise PartmanError(f"{uri!r} is not an s3:// URI.")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _require_bucket(settings: Settings) -> str:
    if not settings.archive_bucket:
        raise ArchiveError(
            "Retention action is archive but no bucket is configured: set PARTMAN_ARCHIVE_BUCKET "
            "(and the AWS_* settings boto3 reads). Nothing was removed."
        )
    return settings.archive_bucket


def _s3_error(step: str, uri: str, exc: Exception) -> ArchiveError:
    text = " ".join(str(exc).split()).rstrip(".")
    return ArchiveError(f"Archive {step} of {uri} failed: {type(exc).__name__}: {text}. The partition was kept; "
                        "the next maintenance pass tries again.")


class MultipartWriter:
    """A file-like sink: gzip output in, S3 parts out; holds at most one part in memory."""

    def __init__(self, s3: Any, bucket: str, key: str, part_size: int, extra: dict[str, str]) -> None:
        self.s3, self.bucket, self.key, self.part_size = s3, bucket, key, max(part_size, MIN_PART)
        self.buf = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.sha = hashlib.sha256()
        self.size = 0
        self.peak_buffer = 0
        self.upload_id = s3.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType="application/gzip", **extra
        )["UploadId"]

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.sha.update(data)
        self.size += len(data)
        self.buf += data
        self.peak_buffer = max(self.peak_buffer, len(self.buf))
        while len(self.buf) >= self.part_size:
            chunk = bytes(self.buf[: self.part_size])
            del self.buf[: self.part_size]
            self._upload(chunk)

    def _upload(self, chunk: bytes) -> None:
        failpoints.hit("archive.upload")
        n = len(self.parts) + 1
        r = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=chunk)
        self.parts.append({"PartNumber": n, "ETag": r["ETag"]})

    def close(self) -> None:
        if self.buf or not self.parts:
            self._upload(bytes(self.buf))
            self.buf = bytearray()
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    def abort(self) -> None:
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: BLE001 - best effort; a lifecycle rule cleans up the rest
            pass


class _HashingReader(io.RawIOBase):
    """Wraps a streaming body: counts and hashes the raw bytes read through it."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.body.read(len(b))
        if not data:
            return 0
        self.sha.update(data)
        self.size += len(data)
        b[: len(data)] = data
        return len(data)


def read_and_check(s3: Any, bucket: str, key: str, *, count_records: bool = True) -> tuple[str, int, int | None]:
    """Stream an archived object: (sha256 of its bytes, its size, CSV records excluding the
    header). Raises when it is not a readable gzip of CSV. Without `count_records` only the
    bytes are read and hashed (records: None): when the sha256 matches the one computed while
    uploading, the object is exactly what COPY produced, whose row count is known."""
    import gzip

    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    raw = _HashingReader(body)
    if not count_records:
        while raw.read(1 * MIB):
            pass
        return raw.sha.hexdigest(), raw.size, None
    records = -1
    with gzip.GzipFile(fileobj=io.BufferedReader(raw, 1 * MIB)) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        for _ in csv.reader(text):
            records += 1
    # drain anything after the gzip member (there should be nothing)
    while raw.read(1 * MIB):
        pass
    return raw.sha.hexdigest(), raw.size, max(records, 0)


# ---------------------------------------------------------------- catalog progress

def _progress(conn: psycopg.Connection, settings: Settings, schema: str, partition: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL("SELECT * FROM {} WHERE schema_name = %s AND partition_name = %s").format(
                catalog.ident(settings, "archive")),
            (schema, partition),
        ).fetchone()


def _record(conn: psycopg.Connection, settings: Settings, schema: str, partition: str, table: str, uri: str,
            state: str, sha: str | None = None, size: int | None = None, rows: int | None = None) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (schema_name, partition_name, table_name, uri, sha256, bytes, row_count, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (schema_name, partition_name) DO UPDATE SET "
            "table_name = EXCLUDED.table_name, uri = EXCLUDED.uri, sha256 = coalesce(EXCLUDED.sha256, {t}.sha256), "
            "bytes = coalesce(EXCLUDED.bytes, {t}.bytes), row_count = coalesce(EXCLUDED.row_count, {t}.row_count), "
            "state = EXCLUDED.state, updated_at = now()"
        ).format(catalog.ident(settings, "archive"), t=sql.Identifier("archive")),
        (schema, partition, table, uri, sha, size, rows, state),
    )


def upload_again(conn: psycopg.Connection, settings: Settings, schema: str, partition: str) -> None:
    """The partition's object must be uploaded again (its verification failed, or rows were written
    to the partition after it): the next attempt uploads it under the same key, overwriting it,
    rather than leaving it behind under a new name."""
    conn.execute(sql.SQL("UPDATE {} SET state = 'uploading', updated_at = now() WHERE schema_name = %s "
                         "AND partition_name = %s AND state <> 'removed'").format(catalog.ident(settings, "archive")),
                 (schema, partition))


def forget(conn: psycopg.Connection, settings: Settings, schema: str, partition: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE schema_name = %s AND partition_name = %s").format(
        catalog.ident(settings, "archive")), (schema, partition))


def mark_removed(conn: psycopg.Connection, settings: Settings, schema: str, partition: str) -> None:
    conn.execute(sql.SQL("UPDATE {} SET state = 'removed', updated_at = now() WHERE schema_name = %s AND partition_name = %s").format(
        catalog.ident(settings, "archive")), (schema, partition))


# ---------------------------------------------------------------- describing a partition

def _jsonable(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    return v


def describe(conn: psycopg.Connection, mt: ManagedTable, part: Partition) -> dict[str, Any]:
    """Columns, DDL, counts, first/last key and id, the last row (chain anchor). Run inside the
    snapshot the COPY uses so every figure describes the same rows."""
    from .lifecycle import columns, id_column

    qn = part.qualified
    cols = columns(conn, qn)
    idc = id_column(cols)
    key = sql.Identifier(mt.column_name)
    order_cols = [key] + ([sql.Identifier(idc)] if idc else [])
    order = sql.SQL(", ").join(order_cols)
    order_desc = sql.SQL(", ").join(sql.SQL("{} DESC").format(c) for c in order_cols)
    sel = sql.SQL("{}, {}").format(key, sql.Identifier(idc) if idc else sql.SQL("NULL"))
    n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qn.ident())).fetchone()[0]
    first = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(sel, qn.ident(), order)).fetchone()
    last = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(sel, qn.ident(), order_desc)).fetchone()
    anchor_order = sql.SQL("{} DESC").format(sql.Identifier(idc)) if idc else order_desc
    last_row = conn.execute(
        sql.SQL("SELECT to_jsonb(t) FROM {} t ORDER BY {} LIMIT 1").format(qn.ident(), anchor_order)
    ).fetchone()
    min_max = (None, None)
    if idc:
        min_max = conn.execute(sql.SQL("SELECT min({c})::text, max({c})::text FROM {t}").format(
            c=sql.Identifier(idc), t=qn.ident())).fetchone()
    bound = conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s", (part.oid,)).fetchone()[0]
    col_ddl = ",\n    ".join(
        f"{psycopg.sql.Identifier(c['name']).as_string(conn)} {c['type']}{' NOT NULL' if c['not_null'] else ''}" for c in cols
    )
    parent_ident = sql.Identifier(mt.schema_name, mt.table_name).as_string(conn)
    ddl = (f"CREATE TABLE {qn.ident().as_string(conn)} PARTITION OF {parent_ident} {bound};\n"
           f"-- columns:\nCREATE TABLE {qn.ident().as_string(conn)} (\n    {col_ddl}\n);")
    return {
        "row_count": int(n),
        "columns": [{"name": c["name"], "type": c["type"], "not_null": c["not_null"]} for c in cols],
        "id_column": idc,
        "key_column": mt.column_name,
        "ddl": ddl,
        "partition_bound": bound,
        "first": {"key": _jsonable(first[0]), "id": _jsonable(first[1])} if first else None,
        "last": {"key": _jsonable(last[0]), "id": _jsonable(last[1])} if last else None,
        "min_id": min_max[0],
        "max_id": min_max[1],
        "last_row": last_row[0] if last_row else None,
    }


# ---------------------------------------------------------------- the archive

class _Compressor:
    """Compresses and uploads on its own thread while COPY keeps streaming (isal, hashlib and
    the network release the GIL), through a queue of a few MiB: memory stays bounded."""

    def __init__(self, gz: Any, writer: MultipartWriter, depth: int = 4) -> None:
        self.gz, self.writer = gz, writer
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="partman-archive", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.errors:
                continue  # drain after a failure
            try:
                self.writer.write(self.gz.compress(data))
            except BaseException as exc:  # noqa: BLE001 - handed to the COPY thread
                self.errors.append(exc)

    def put(self, data: bytes) -> None:
        while True:
            if self.errors:
                raise self.errors[0]
            try:
                self.queue.put(data, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait for the thread to write what it was given; re-raise its failure."""
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def _upload(conn: psycopg.Connection, settings: Settings, s3: Any, bucket: str, key: str, mt: ManagedTable,
            part: Partition) -> tuple[str, int, dict[str, Any], int]:
    """Stream COPY -> gzip -> sha256 -> multipart upload inside one REPEATABLE READ snapshot."""
    from .lifecycle import columns

    qn = part.qualified
    writer: MultipartWriter | None = None
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        info = describe(conn, mt, part)
        cols = [c["name"] for c in columns(conn, qn)]
        order = [mt.column_name] + ([info["id_column"]] if info["id_column"] else [])
        copy_sql = sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT (FORMAT csv, HEADER)").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), qn.ident(), sql.SQL(", ").join(map(sql.Identifier, order)))
        gz = isal_zlib.compressobj(isal_zlib.ISAL_DEFAULT_COMPRESSION, isal_zlib.DEFLATED, 31)  # gzip
        try:
            writer = MultipartWriter(s3, bucket, key, settings.archive_part_size_mb * MIB, sse_args(settings))
            sink = _Compressor(gz, writer)  # gzip, sha256 and upload on a second thread
            try:
                with conn.cursor() as cur:
                    with cur.copy(copy_sql) as copy:
                        buf = bytearray()  # COPY hands out a row at a time: compress a MiB at a time
                        for chunk in copy:
                            buf += chunk
                            if len(buf) >= MIB:
                                sink.put(bytes(buf))
                                buf.clear()
                        sink.put(bytes(buf))
                    if cur.rowcount >= 0 and cur.rowcount != info["row_count"]:
                        raise ArchiveError(f"COPY of {qn} wrote {cur.rowcount} rows, but the partition has {info['row_count']}.")
            finally:
                sink.finish()
            writer.write(gz.flush())
            writer.close()
        except Exception:
            if writer is not None:
                writer.abort()
            raise
    return writer.sha.hexdigest(), writer.size, info, writer.peak_buffer


def _recorded_elsewhere(conn: psycopg.Connection, settings: Settings, uri: str) -> bool:
    """Is this object the archive of an earlier, completed removal?"""
    return conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE archive_uri = %s)").format(catalog.ident(settings, "removal")), (uri,)
    ).fetchone()[0]


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:  # botocore ClientError 404
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _abort_unfinished_uploads(s3: Any, bucket: str, key: str) -> None:
    """A pass killed mid-upload leaves an unfinished multipart upload of this key behind (stored
    and billed, invisible in listings). Called once this key's object is complete and verified,
    so no live upload of it remains (one process at a time archives a table). Best effort."""
    try:
        for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if u["Key"] == key:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=u["UploadId"])
    except Exception:  # noqa: BLE001 - a lifecycle rule (AbortIncompleteMultipartUpload) is the backstop
        pass


def _free_key(conn: psycopg.Connection, settings: Settings, s3: Any, bucket: str, schema: str, table: str,
              name: str) -> str:
    """The object key of a new archive of partition `name`: `<name>.csv.gz`, unless an earlier
    removal's archive has it (a range removed, filled again by late rows, removed again): then
    `<name>.<UTC time>.csv.gz`, numbered `-2`, `-3`, ... when a removal within the same second has
    that one. Never the archive of an earlier removal."""
    key = object_key(settings, schema, table, name)
    if not (_recorded_elsewhere(conn, settings, f"s3://{bucket}/{key}") and _exists(s3, bucket, key)):
        return key
    stamp = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS')").fetchone()[0]
    key, n = object_key(settings, schema, table, f"{name}.{stamp}"), 1
    while _recorded_elsewhere(conn, settings, f"s3://{bucket}/{key}"):
        n += 1
        key = object_key(settings, schema, table, f"{name}.{stamp}-{n}")
    return key


def archive_partition(conn: psycopg.Connection, settings: Settings, mt: ManagedTable, part: Partition) -> ArchiveResult:
    """Upload, verify and describe one partition (the caller detaches and drops it afterwards,
    after checking the row count under lock). Idempotent: a rerun resumes from the catalog."""
    bucket = _require_bucket(settings)
    schema, table, name = mt.schema_name, mt.table_name, part.name
    folder = f"s3://{bucket}/{settings.archive_prefix}{schema}.{table}/"
    s3 = client(settings)
    logger = log.get()
    prog = _progress(conn, settings, part.schema, name)
    if prog is not None and (not prog["uri"].startswith(folder) or prog["state"] == "removed"):
        # another bucket/prefix, or a partition of the same name archived before (restored, or
        # re-created for late rows): start afresh
        forget(conn, settings, part.schema, name)
        prog = None
    if prog is not None:
        key = parse_uri(prog["uri"])[1]  # an attempt's own key, also when it uploads again
    else:
        key = _free_key(conn, settings, s3, bucket, schema, table, name)
        # recorded before the upload: a retry overwrites this object instead of leaving it behind
        _record(conn, settings, part.schema, name, table, f"s3://{bucket}/{key}", "uploading")
    mkey = key[: -len(".csv.gz")] + ".manifest.json"
    uri = f"s3://{bucket}/{key}"
    info: dict[str, Any] | None = None
    if prog is None or prog["state"] == "uploading":
        try:
            sha, size, info, peak = _upload(conn, settings, s3, bucket, key, mt, part)
        except failpoints.FailpointError:
            raise
        except Exception as exc:
            raise _s3_error("upload", uri, exc) from exc
        _record(conn, settings, part.schema, name, table, uri, "uploaded", sha, size, info["row_count"])
        logger.info("archive_uploaded", partition=name, uri=uri, bytes=size, rows=info["row_count"], peak_buffer=peak)
        failpoints.hit("archive.after_upload")
        prog = _progress(conn, settings, part.schema, name)
    assert prog is not None
    if prog["state"] == "uploaded":
        failpoints.hit("archive.verify")
        try:
            # the bytes, re-read: equal sha256 and size mean the very object COPY produced
            sha, size, _records = read_and_check(s3, bucket, key, count_records=False)
        except Exception as exc:
            upload_again(conn, settings, part.schema, name)  # the next pass uploads it again (same key)
            raise _s3_error("verification", uri, exc) from exc
        if sha != prog["sha256"] or size != prog["bytes"]:
            upload_again(conn, settings, part.schema, name)
            raise ArchiveError(
                f"Archive verification of {uri} failed: the stored object has sha256 {sha}, {size} bytes; "
                f"expected {prog['sha256']}, {prog['bytes']} bytes ({prog['row_count']} rows). "
                "The partition was kept; the next pass uploads it again."
            )
        _record(conn, settings, part.schema, name, table, uri, "verified")
        _abort_unfinished_uploads(s3, bucket, key)
        prog = _progress(conn, settings, part.schema, name)
    if info is None:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            info = describe(conn, mt, part)
    if info["row_count"] != prog["row_count"]:
        upload_again(conn, settings, part.schema, name)
        raise ArchiveError(
            f"{part.qualified} now has {info['row_count']} rows but its archive {uri} has {prog['row_count']}: "
            "rows were written to it after the upload. The partition was kept; the next pass archives it again."
        )
    manifest = {
        "format": "csv+gzip",
        "partman_version": __version__,
        "schema": schema,
        "table": table,
        "partition": name,
        "uri": uri,
        "row_count": int(prog["row_count"]),
        "sha256": prog["sha256"],
        "bytes": int(prog["bytes"]),
        "bounds": {"lower": _jsonable(part.lower), "upper": _jsonable(part.upper)},
        "key_type": mt.key_type,
        "interval": mt.interval,
        "timezone": mt.timezone,
        **{k: info[k] for k in ("columns", "key_column", "id_column", "ddl", "partition_bound", "first", "last",
                                  "min_id", "max_id", "last_row")},
    }
    if prog["state"] == "verified":
        failpoints.hit("archive.manifest")
        try:
            s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest, indent=2, default=str).encode(),
                          ContentType="application/json", **sse_args(settings))
        except Exception as exc:
            raise _s3_error("manifest write", f"s3://{bucket}/{mkey}", exc) from exc
        _record(conn, settings, part.schema, name, table, uri, "manifest")
        logger.info("archive_verified", partition=name, uri=uri, sha256=prog["sha256"])
    return ArchiveResult(uri, key, mkey, prog["sha256"], int(prog["bytes"]), int(prog["row_count"]), manifest)


def fetch_manifest(settings: Settings, bucket: str, key: str) -> dict[str, Any]:
    s3 = client(settings)
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:
        raise PartmanError(f"Could not read the archive manifest s3://{bucket}/{key}: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}. Check the bucket, prefix and credentials.") from None
