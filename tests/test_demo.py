"""`partman demo` needs nothing but partman: it starts its own server from a wheel."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys


def test_demo_runs_end_to_end_and_cleans_up(pg_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARTMAN_", "PG"))}
    r = subprocess.run([sys.executable, "-m", "partman.cli", "demo", "--rows", "20000"], env=env,
                       capture_output=True, text=True, timeout=300)
    pg_server.outputs.extend([r.stdout, r.stderr])
    assert r.returncode == 0, r.stderr[-2000:]
    for words in ("converted public.audit_log_ledger: done", "0 errors", "partman maintain", "removed partitions",
                  "-> VALID"):
        assert words in r.stdout, words
    port = int(re.search(r"on 127\.0\.0\.1:(\d+)", r.stdout).group(1))
    with socket.socket() as s:  # the throwaway server is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_the_stop_command_demo_keep_prints_stops_the_server(pg_server):
    """`demo --keep` leaves the server running and prints how to stop it; as root the server runs
    as its own user and pg_ctl refuses root, so the command must say runuser."""
    import pytest

    from partman.pgtemp import TempServer

    if pg_server.temp is None:
        pytest.skip("needs the throwaway server binaries")
    server = TempServer(version=os.environ.get("PARTMAN_TEST_PG", "18"))
    server.init()
    server.start()
    try:
        r = subprocess.run(server.stop_command(), shell=True, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", server.port)) != 0
    finally:
        server.cleanup()
