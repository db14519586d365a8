"""S3 faults on the real HTTP path: boto3 -> a fault-injecting proxy (tests/s3_proxy.py) -> the
moto server. Throttling (503 SlowDown, brief and persistent), a connection dropped mid multipart
upload, a wrong checksum (bytes altered on the way in and on the way back), a missing bucket,
expired credentials (403 ExpiredToken). Each: the partition is never dropped, `partman
maintain` exits 1 with a one-paragraph message and no traceback, `partman status --json` shows
the error, and a rerun after the fault clears archives and removes it with one object each."""

from __future__ import annotations

import csv
import gzip
import io
import hashlib
import json
import uuid

import psycopg
import pytest

from s3_proxy import FaultProxy, any_request, complete_upload, get_object, upload_part

PREFIX = "partman/public.ev/"
OLD = ["ev_p20100101", "ev_p20110101"]


@pytest.fixture
def proxy(s3, env, monkeypatch, pg_server):
    p = FaultProxy(s3["endpoint"]).start()
    p.outputs = pg_server.outputs  # type: ignore[attr-defined]  # what we capture is grepped for secrets later
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(k, p.url)
        env[k] = p.url
    try:
        yield p
    finally:
        p.stop()


def make_ev(conn: psycopg.Connection, partman, big: bool = False) -> dict[str, int]:
    """Two partitions older than the retention (2010, 2011), this year's, a default; archive
    retention. `big`: 2010 holds > 5 MiB of gzip, so its upload takes two multipart parts."""
    conn.execute("CREATE TABLE ev (id bigserial, ts timestamptz NOT NULL, blob text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)")
    y = conn.execute("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int").fetchone()[0]
    for yy in (2010, 2011, y):
        conn.execute(f"CREATE TABLE ev_p{yy}0101 PARTITION OF ev FOR VALUES FROM ('{yy}-01-01 00:00+00') TO ('{yy + 1}-01-01 00:00+00')")
    conn.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
    conn.execute("INSERT INTO ev (ts, blob) SELECT '2010-03-01'::timestamptz + g * interval '1 hour', md5(g::text) FROM generate_series(1, 150) g")
    conn.execute("INSERT INTO ev (ts, blob) SELECT '2011-03-01'::timestamptz + g * interval '1 hour', md5(g::text) FROM generate_series(1, 120) g")
    if big:  # base64 of hashes of random numbers: barely compressible, ~5.5 MiB of gzip
        conn.execute("INSERT INTO ev (ts, blob) SELECT '2010-06-01'::timestamptz + g * interval '1 second', "
                     "encode(sha512(random()::text::bytea) || sha512(random()::text::bytea) || sha512(random()::text::bytea), 'base64') "
                     "FROM generate_series(1, 28000) g")
    conn.execute("INSERT INTO ev (ts) VALUES (now())")
    r = partman("register", "ev", "--column", "ts", "--interval", "year", "--retention", "10 years",
                "--retention-action", "archive", "--premake", "1")
    assert r.code == 0, r.err
    counts = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM ev GROUP BY 1").fetchall())
    return {p: counts[p] for p in OLD}


def partitions(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ev'::regclass")}


def one_paragraph_error(err: str) -> str:
    """stderr holds JSON log lines and exactly one `partman: ...` line: the message."""
    assert "Traceback" not in err, err[-2000:]
    msgs = [line for line in err.splitlines() if line.startswith("partman: ")]
    assert len(msgs) == 1, err[-2000:]
    for line in err.splitlines():
        if line and not line.startswith("partman: "):
            json.loads(line)  # everything else is a structured log line
    return msgs[0]


def last_error_in_status(partman_proc) -> str:
    r = partman_proc("status", "--json")
    assert r.code == 0, r.err[-1000:]
    doc = json.loads(r.out)
    [t] = [t for t in doc["tables"] if t["table"] == "public.ev"]
    assert t["maintenance"]["last_error"], t["maintenance"]
    assert doc["last_maintenance"] and not doc["last_maintenance"].get("ok", False)
    return t["maintenance"]["last_error"]


def health_and_metrics(dsn: str) -> tuple[dict, str]:
    """What the daemon's /health and /metrics would answer now (same code, read from the catalog)."""
    from partman import log
    from partman.health import judge
    from partman.metrics import Metrics
    from partman.settings import load_settings

    log.configure("json", "warning")
    settings = load_settings({"database_url": dsn})
    with psycopg.connect(dsn, autocommit=True) as c:
        health = judge(c, settings, leader=True)

        def probe(fn):
            return fn(c), None

        metrics = Metrics(settings, probe, lambda: True).render().decode()
    return health, metrics


def assert_kept(conn: psycopg.Connection, counts: dict[str, int], kept: list[str]) -> None:
    assert set(kept) <= partitions(conn)
    for p in kept:
        assert conn.execute(f"SELECT count(*) FROM {p}").fetchone()[0] == counts[p]
    removed = [r[0] for r in conn.execute("SELECT partition_name FROM partman_catalog.removal")]
    assert not set(removed) & set(kept)


def assert_archived_once(conn: psycopg.Connection, s3: dict, counts: dict[str, int]) -> None:
    """After the clean rerun: both partitions gone, exactly one verified object (+ manifest) each."""
    c, b = s3["client"], s3["bucket"]
    assert not set(OLD) & partitions(conn)
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=b).get("Contents", [])}
    assert keys == {f"{PREFIX}{p}.csv.gz" for p in OLD} | {f"{PREFIX}{p}.manifest.json" for p in OLD}, sorted(keys)
    recs = conn.execute("SELECT partition_name, row_count, archive_uri, archive_sha256 FROM partman_catalog.removal ORDER BY id").fetchall()
    assert sorted(r[0] for r in recs) == OLD  # one removal record each
    for name, rows, uri, sha in recs:
        body = c.get_object(Bucket=b, Key=f"{PREFIX}{name}.csv.gz")["Body"].read()
        manifest = json.loads(c.get_object(Bucket=b, Key=f"{PREFIX}{name}.manifest.json")["Body"].read())
        assert uri == f"s3://{b}/{PREFIX}{name}.csv.gz"
        assert hashlib.sha256(body).hexdigest() == sha == manifest["sha256"]
        assert rows == counts[name] == manifest["row_count"] == len(list(csv.reader(io.StringIO(gzip.decompress(body).decode())))) - 1
    assert conn.execute("SELECT maintenance_last_error FROM partman_catalog.managed_table").fetchone()[0] is None


def unfinished_uploads(s3: dict) -> list[str]:
    return [u["Key"] for u in s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", [])]


def fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy, arm, expect: tuple[str, ...], big: bool = False,
                       extra_env: dict | None = None, clear=None, kept: list[str] = OLD) -> tuple[str, str]:
    counts = make_ev(conn, partman, big)
    arm()
    r = partman_proc("maintain", extra_env=extra_env)
    assert r.code == 1, (r.code, r.err[-2000:])
    msg = one_paragraph_error(r.err)
    assert "ev_p2010" in msg and any(e in msg for e in expect), msg
    assert "The partition was kept" in msg or "Nothing was removed" in msg, msg
    assert_kept(conn, counts, kept)
    status_err = last_error_in_status(partman_proc)
    assert any(e in status_err for e in expect), status_err
    health, metrics = health_and_metrics(dsn)
    proxy.outputs.extend([json.dumps(health, default=str), metrics])
    assert health["status"] != "ok" and any(any(e in r for e in expect) for r in health["reasons"]), health
    assert 'partman_table_maintenance_failed{table="public.ev"} 1.0' in metrics
    print(f"\n  maintain: {msg}\n  status last_error: {status_err}\n  health reasons: {health['reasons']}")
    # the fault clears: the next pass archives and removes both, one object each
    proxy.clear()
    if clear is not None:
        clear()
    r = partman_proc("maintain", "--json", extra_env=extra_env)
    assert r.code == 0, r.err[-2000:]
    assert [x["partition"] for x in json.loads(r.out)["tables"]["public.ev"]["retention"]["removed"]] == kept
    assert_archived_once(conn, s3, counts)
    health, metrics = health_and_metrics(dsn)
    proxy.outputs.extend([json.dumps(health, default=str), metrics])
    assert health["status"] == "ok", health
    assert 'partman_table_maintenance_failed{table="public.ev"} 0.0' in metrics
    assert f'partman_archive_objects_total{{table="public.ev"}} {float(len(OLD))}' in metrics, metrics
    return msg, status_err


# ---------------------------------------------------------------- throttling

def test_brief_throttling_is_absorbed_by_boto3_retries(conn, dsn, partman, partman_proc, s3, proxy):
    counts = make_ev(conn, partman)
    proxy.add("slowdown", any_request, times=2)  # the first call gets 503 twice, its third attempt passes
    proxy.add("slowdown", upload_part, times=1)
    proxy.add("slowdown", get_object, times=1)
    r = partman_proc("maintain", "--json")
    assert r.code == 0, r.err[-2000:]
    assert proxy.faults("slowdown") == 4
    assert_archived_once(conn, s3, counts)
    assert unfinished_uploads(s3) == []


def test_persistent_throttling_fails_the_pass_and_keeps_the_partitions(conn, dsn, partman, partman_proc, s3, proxy):
    msg, _ = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                lambda: proxy.add("slowdown", any_request), ("SlowDown",))
    assert "Archive upload" in msg
    assert unfinished_uploads(s3) == []


# ---------------------------------------------------------------- connection dropped mid multipart upload

def test_connection_dropped_mid_multipart_upload(conn, dsn, partman, partman_proc, s3, proxy):
    """2010 is two parts: part 1 goes through, every attempt at part 2 loses its connection
    half-way through the body."""
    part2 = lambda m, p: upload_part(m, p) and "partNumber=2" in p  # noqa: E731
    msg, _ = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                lambda: proxy.add("drop", part2), ("Connection", "connection", "closed"), big=True,
                                extra_env={"PARTMAN_ARCHIVE_PART_SIZE_MB": "5"}, kept=["ev_p20100101"])
    assert "Archive upload" in msg
    assert proxy.faults("drop") >= 1
    parts = [p for m, p, st in proxy.log if upload_part(m, p) and "ev_p20100101" in p and st == "200"]
    assert any("partNumber=2" in p for p in parts)  # the rerun uploaded it in (at least) two parts
    assert unfinished_uploads(s3) == []  # the failed upload was aborted


def test_one_dropped_connection_is_retried(conn, dsn, partman, partman_proc, s3, proxy):
    counts = make_ev(conn, partman)
    proxy.add("drop", upload_part, times=1)
    r = partman_proc("maintain")
    assert r.code == 0, r.err[-2000:]
    assert proxy.faults("drop") == 1
    assert_archived_once(conn, s3, counts)


def test_lost_answer_to_complete_multipart_upload(conn, dsn, partman, partman_proc, s3, proxy):
    """The CompleteMultipartUpload takes effect but its answer is lost (every attempt): the client
    cannot know the object exists. Nothing is dropped; the rerun writes the same key again (no
    second object) and verifies it."""
    msg, _ = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                lambda: proxy.add("lose_answer", lambda m, p: complete_upload(m, p) and "ev_p20100101" in p),
                                ("Connection", "connection", "closed", "NoSuchUpload"), kept=["ev_p20100101"])
    assert "Archive upload" in msg
    assert unfinished_uploads(s3) == []


# ---------------------------------------------------------------- wrong checksum

def test_object_altered_on_the_way_back_fails_verification(conn, dsn, partman, partman_proc, s3, proxy):
    """The stored object reads back with a flipped byte: the sha256 / gzip check fails, nothing is
    dropped, and the next pass uploads it again under the same key."""
    msg, _ = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                lambda: proxy.add("corrupt_response", get_object), ("verification",))
    assert "Archive verification" in msg


def test_bytes_altered_on_the_way_in_are_never_accepted(conn, dsn, partman, partman_proc, s3, proxy):
    """The upload body is altered in flight: either S3 refuses it (request checksum) or the
    verification read finds a different sha256; either way nothing is dropped."""
    msg, _ = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                lambda: proxy.add("corrupt_request", upload_part),
                                ("verification", "BadDigest", "Checksum", "checksum", "InvalidRequest", "sha256"))
    assert "Archive upload" in msg or "Archive verification" in msg


# ---------------------------------------------------------------- missing bucket, expired credentials

def test_missing_bucket(conn, dsn, partman, partman_proc, s3, proxy):
    bucket = "partman-missing-" + uuid.uuid4().hex[:8]

    def create() -> None:
        s3["client"].create_bucket(Bucket=bucket)
        s3["bucket"] = bucket

    fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy, lambda: None, ("NoSuchBucket",),
                       extra_env={"PARTMAN_ARCHIVE_BUCKET": bucket}, clear=create)


def test_expired_credentials(conn, dsn, partman, partman_proc, s3, proxy):
    msg, status_err = fault_then_recover(conn, dsn, partman, partman_proc, s3, proxy,
                                         lambda: proxy.add("expired", any_request), ("ExpiredToken",))
    assert proxy.faults("expired") >= 1
