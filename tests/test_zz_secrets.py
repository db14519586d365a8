"""Runs last: no output any test captured from partman (stdout, stderr, logs, HTTP bodies that tests
append to `pg_server.outputs`) may contain the planted database password or AWS secret."""

import pytest

from conftest import PLANTED_AWS_SECRET, PLANTED_PASSWORD


def test_no_planted_secret_in_any_output(pg_server):
    if not pg_server.outputs:
        pytest.skip("no partman output was captured in this run (run with the rest of the suite)")
    assert pg_server.password == PLANTED_PASSWORD or pg_server.password is None
    leaks = [o for o in pg_server.outputs if PLANTED_PASSWORD in o or PLANTED_AWS_SECRET in o]
    assert not leaks, leaks[0][:2000]
    print(f"checked {len(pg_server.outputs)} captured outputs, {sum(map(len, pg_server.outputs)):,} characters")
