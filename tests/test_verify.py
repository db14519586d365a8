"""The post-swap verification finds what is missing or different, and repairs it."""

from __future__ import annotations

import pytest

from partman.convert.capture import KeyColumn
from partman.convert.verify import typed_columns, verify
from partman.db import QualifiedName
from partman.introspect import introspect

pytestmark = pytest.mark.conversion


def test_verify_finds_missing_and_different_rows_and_repairs_them(conn):
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
    figures = verify(conn, old, new, changed, key, cols, typed=typed)
    assert figures["repaired"] == 3 and figures["ok"]
    assert conn.execute("SELECT n FROM new_t WHERE id = 9").fetchone()[0] == 9
    assert conn.execute("SELECT body->>'b' FROM new_t WHERE id = 10").fetchone()[0] == "3"
