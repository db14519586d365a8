"""The post-swap verification finds what is missing or different, and repairs it."""

from __future__ import annotations

import psycopg
import pytest

from partman.convert.capture import KeyColumn
from partman.convert.verify import typed_columns, verify
from partman.db import QualifiedName
from partman.introspect import introspect

pytestmark = pytest.mark.conversion


def test_verify_finds_missing_and_different_rows_and_repairs_them(conn, dsn):
    conn.execute(
        """
        CREATE TABLE old_t (id int PRIMARY KEY, ts timestamptz NOT NULL, doc json, body jsonb, n numeric);
        CREATE TABLE new_t (LIKE old_t);
        CREATE TABLE changed (id int);
        INSERT INTO old_t SELECT g, now(), '{"a": 1}', '{"b": 2}', g FROM generate_series(1, 100) g;
        INSERT INTO new_t SELECT * FROM old_t WHERE id <> 7;                       -- one row missing
        UPDATE new_t SET doc = '{"a":  1}' WHERE id = 8;                          -- json differs as text only
        UPDATE new_t SET n = 10.5 WHERE id = 9;                                   -- a typed column differs
        UPDATE new_t SET body = '{"b": 3}' WHERE id = 10;                         -- changed since the swap:
        INSERT INTO changed VALUES (10);                                          --   legitimately different
        """
    )
    old, new, changed = (QualifiedName("public", n) for n in ("old_t", "new_t", "changed"))
    model = introspect(conn, old)
    typed = typed_columns(model)
    assert typed == {"id", "ts", "body", "n"}  # json has no equality of its own: compared as text
    cols = [c.name for c in model.columns]
    key = [KeyColumn("id", "integer")]
    figures = verify(conn, old, new, changed, key, cols, typed=typed, repair=False)
    assert figures["missing_or_different"] == 3 and not figures["ok"]
    pauses = []
    chunked = verify(conn, old, new, changed, key, cols, typed=typed, partition_key="ts", chunk_rows=7,
                     pause=lambda: pauses.append(1), repair=False)
    assert chunked["missing_or_different"] == 3 and len(pauses) == 100 // 7  # 15 ranges, a pause between each
    seconds = []
    two = verify(conn, old, new, changed, key, cols, typed=typed, partition_key="ts", chunk_rows=7, repair=False,
                 connect=lambda: seconds.append(psycopg.connect(dsn, autocommit=True)) or seconds[-1])
    assert two["missing_or_different"] == 3 and len(seconds) == 1 and seconds[0].closed  # ranges shared by 2 connections
    figures = verify(conn, old, new, changed, key, cols, typed=typed)
    assert figures["repaired"] == 3 and figures["ok"]
    assert conn.execute("SELECT n FROM new_t WHERE id = 9").fetchone()[0] == 9
    assert conn.execute("SELECT body->>'b' FROM new_t WHERE id = 10").fetchone()[0] == "3"


def test_verify_ranges_cover_sparse_and_non_integer_keys(conn):
    """Ranges by arithmetic (an integer key, here sparse) and by index walk (a text key) both
    cover every row: one different row at either end and one in the middle is found."""
    conn.execute(
        """
        CREATE TABLE old_s (id bigint PRIMARY KEY, v text);
        INSERT INTO old_s SELECT g * 1000, 'v' || g FROM generate_series(1, 500) g;
        ANALYZE old_s;
        CREATE TABLE new_s AS SELECT * FROM old_s;
        UPDATE new_s SET v = 'x' WHERE id IN (1000, 250000, 500000);
        CREATE TABLE old_k (k text PRIMARY KEY, v int);
        INSERT INTO old_k SELECT md5(g::text), g FROM generate_series(1, 300) g;
        CREATE TABLE new_k AS SELECT * FROM old_k;
        DELETE FROM new_k WHERE k IN ((SELECT min(k) FROM old_k), (SELECT max(k) FROM old_k), md5('150'));
        CREATE TABLE nothing (id bigint, k text);
        """
    )
    changed = QualifiedName("public", "nothing")
    sparse = verify(conn, QualifiedName("public", "old_s"), QualifiedName("public", "new_s"), changed,
                    [KeyColumn("id", "bigint")], ["id", "v"], typed={"id", "v"}, chunk_rows=40, repair=False)
    assert sparse["missing_or_different"] == 3 and sparse["old_rows"] == 500
    text = verify(conn, QualifiedName("public", "old_k"), QualifiedName("public", "new_k"), changed,
                  [KeyColumn("k", "text")], ["k", "v"], typed={"k", "v"}, chunk_rows=40, repair=False)
    assert text["missing_or_different"] == 3
