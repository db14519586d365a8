"""Runs last: no output any test captured from partman (stdout, stderr, logs, HTTP bodies that tests
append to `pg_server.outputs`) may contain the planted database password or AWS secret."""

import os
import subprocess

import pytest

from conftest import PLANTED_AWS_SECRET, PLANTED_PASSWORD
from helpers import partman_command

URI = f"postgresql://postgres:{PLANTED_PASSWORD}@127.0.0.1:5432/postgres"
KV = f"host=127.0.0.1 password='{PLANTED_PASSWORD}' dbname=postgres"


@pytest.mark.parametrize("argv, env", [
    (["--dsn", URI, "status"], {}),  # a flag before the command: the DSN is taken for the command
    (["maintain", "--dns", URI], {}),  # a misspelt flag: "unrecognized arguments"
    (["maintain", "--dns", KV], {}),
    (["convert", "t", "--column", "c", "--interval", URI], {}),  # invalid choice
    (["convert", "t", "--column", "c", "--interval", KV], {}),
    (["convert", "t", "--column", "c", "--batch-size", PLANTED_PASSWORD, "--dsn", KV], {}),  # the bare password
    (["convert", "t", "--column", "c", "--interval", PLANTED_PASSWORD, f"--dsn={URI}"], {}),
    (["status", "t", PLANTED_PASSWORD], {"PARTMAN_DATABASE_URL": KV}),
    (["convert", "t", "--column", "c", "--sleep", PLANTED_PASSWORD], {"PGPASSWORD": PLANTED_PASSWORD}),
])
def test_a_usage_error_never_prints_a_password(argv, env):
    p = subprocess.run([partman_command(), *argv], env={**os.environ, **env}, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "partman: error:" in p.stderr and "***" in p.stderr and "Traceback" not in p.stderr
    assert PLANTED_PASSWORD not in p.stdout + p.stderr, p.stderr


@pytest.mark.parametrize("dsn, pieces", [
    ("postgresql://app:Leak Pw-uu@127.0.0.1:5432/care", ["Leak", "Pw-uu"]),  # libpq: unexpected spaces in "..."
    ("postgresql://app:Leak@Part-zz@127.0.0.1:5432/care", ["Leak", "Part-zz"]),  # libpq would resolve "Part-zz@127..."
    ("host=127.0.0.1 user=app password=Kvxy Pw-ss dbname=care", ["Kvxy", "Pw-ss"]),  # missing "=" after "Pw-ss"
], ids=["uri-blank", "uri-second-at", "key-value-blank"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_password_libpq_would_misread_is_refused_without_printing_it(dsn, pieces, how):
    """A blank or a second '@' in the password: libpq quotes a piece of it in its error, or takes
    the rest for the host name and prints that. partman refuses such a DSN before connecting,
    says how to write it, and prints no piece of the password."""
    argv, env = (["status", "--dsn", dsn], {}) if how == "flag" else (["run"], {"PARTMAN_DATABASE_URL": dsn})
    p = subprocess.run([partman_command(), *argv], env={**os.environ, **env}, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "connection string" in p.stderr and "%40" in p.stderr and "Traceback" not in p.stderr, p.stderr
    for piece in pieces:
        assert piece not in p.stdout + p.stderr, p.stderr


def test_no_planted_secret_in_any_output(pg_server):
    if not pg_server.outputs:
        pytest.skip("no partman output was captured in this run (run with the rest of the suite)")
    assert pg_server.password == PLANTED_PASSWORD or pg_server.password is None
    leaks = [o for o in pg_server.outputs if PLANTED_PASSWORD in o or PLANTED_AWS_SECRET in o]
    assert not leaks, leaks[0][:2000]
    print(f"checked {len(pg_server.outputs)} captured outputs, {sum(map(len, pg_server.outputs)):,} characters")
