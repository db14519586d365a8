"""Runs last: no output any test captured from partman (stdout, stderr, HTTP bodies that tests
append to `pg_server.outputs`) may contain the planted database password or AWS secret."""

from conftest import PLANTED_AWS_SECRET, PLANTED_PASSWORD


def test_no_planted_secret_in_any_output(pg_server):
    leaks = [o for o in pg_server.outputs if PLANTED_PASSWORD in o or PLANTED_AWS_SECRET in o]
    assert not leaks, leaks[0][:2000]
