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


def test_verify_counts_both_tables_range_by_range(conn):
    """The row counts come from the ranges, not from a whole-table count: every row of new is
    still counted, those written since the swap beyond old's keys included, whether the planner
    has an estimate of old's size or not, for an integer key, a text key and an empty old table."""
    conn.execute(
        """
        CREATE TABLE old_c (id bigint PRIMARY KEY, v text);
        INSERT INTO old_c SELECT g, 'v' || g FROM generate_series(1, 300) g;
        CREATE TABLE new_c AS SELECT * FROM old_c;
        INSERT INTO new_c VALUES (-5, 'below'), (0, 'below'), (301, 'above'), (400, 'above');
        CREATE TABLE old_t (k text PRIMARY KEY, v int);
        INSERT INTO old_t SELECT md5(g::text), g FROM generate_series(1, 150) g;
        CREATE TABLE new_t AS SELECT * FROM old_t;
        INSERT INTO new_t VALUES ('', 0), ('zzzz', 0);
        CREATE TABLE old_e (id bigint PRIMARY KEY, v text);
        CREATE TABLE new_e (id bigint, v text);
        INSERT INTO new_e VALUES (1, 'a'), (2, 'b');
        CREATE TABLE nothing (id bigint, k text);
        """
    )
    q = lambda n: QualifiedName("public", n)  # noqa: E731
    big, text = [KeyColumn("id", "bigint")], [KeyColumn("k", "text")]
    for analyzed in (False, True):  # no estimate (reltuples -1): a count sets the ranges' width
        if analyzed:
            conn.execute("ANALYZE old_c")
        got = verify(conn, q("old_c"), q("new_c"), q("nothing"), big, ["id", "v"], typed={"id", "v"}, chunk_rows=40)
        assert (got["old_rows"], got["new_rows"], got["missing_or_different"], got["ok"]) == (300, 304, 0, True)
    got = verify(conn, q("old_t"), q("new_t"), q("nothing"), text, ["k", "v"], typed={"k", "v"}, chunk_rows=40)
    assert (got["old_rows"], got["new_rows"], got["missing_or_different"]) == (150, 152, 0)
    got = verify(conn, q("old_e"), q("new_e"), q("nothing"), big, ["id", "v"], typed={"id", "v"})
    assert (got["old_rows"], got["new_rows"], got["ok"]) == (0, 2, True)


def test_each_range_statement_bounds_both_tables(conn):
    """The statement for a range reads only that range of old and of new."""
    from partman.convert.verify import _range_counts

    text = _range_counts(QualifiedName("public", "o_tab"), QualifiedName("public", "n_tab"), QualifiedName("w", "log"),
                         [KeyColumn("id", "bigint")], ["id", "v"], {"id"}, "ts", (["10"], ["20"])).as_string(conn)
    for alias in ("o", "n"):
        assert f'("{alias}"."id") > (\'10\'::bigint)' in text and f'("{alias}"."id") <= (\'20\'::bigint)' in text
    assert 'FROM "public"."o_tab" "o" WHERE' in text and 'FROM "public"."n_tab" "n" WHERE' in text


def test_ranges_follow_a_table_grown_since_its_last_analyze(conn):
    """The ranges' width comes from the table's density times its current size, as the planner
    estimates rows: a table that grew tenfold since its last ANALYZE still gets ranges of about
    `chunk_rows` rows (not a tenth as many ranges, ten times as large, whose hash could spill)."""
    conn.execute(
        """
        CREATE TABLE old_g (id bigint PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
        INSERT INTO old_g SELECT g, 'v' || g FROM generate_series(1, 300) g;
        ANALYZE old_g;
        INSERT INTO old_g SELECT g, 'v' || g FROM generate_series(301, 3000) g;
        CREATE TABLE new_g AS SELECT * FROM old_g;
        CREATE TABLE nothing (id bigint);
        """
    )
    pauses: list[int] = []
    got = verify(conn, QualifiedName("public", "old_g"), QualifiedName("public", "new_g"), QualifiedName("public", "nothing"),
                 [KeyColumn("id", "bigint")], ["id", "v"], typed={"id", "v"}, chunk_rows=100,
                 pause=lambda: pauses.append(1))
    assert got["ok"] and got["old_rows"] == 3000
    assert len(pauses) + 1 >= 25  # ~30 ranges of ~100 rows


@pytest.mark.parametrize("keytype", ["bigint", "text"])
def test_paced_ranges_follow_their_statements_duration(conn, keytype):
    """With a target duration (default settings), each range's time sizes the next, as the copy
    sizes its batches: ranges that finish well inside the target double, ranges over it shrink
    (to 100 rows at least); every row is still compared once, whatever the sizes."""
    conn.execute(
        f"""
        CREATE TABLE old_p (k {keytype} PRIMARY KEY, v text);
        INSERT INTO old_p SELECT lpad(g::text, 6, '0')::{keytype}, 'v' || g FROM generate_series(1, 3000) g;
        ANALYZE old_p;
        CREATE TABLE new_p AS SELECT * FROM old_p;
        UPDATE new_p SET v = 'x' WHERE k IN ('002999'::{keytype}, '000003'::{keytype});
        CREATE TABLE nothing (k {keytype});
        """
    )

    def paced(first: int, target_ms: float) -> tuple[dict, int]:
        pauses: list[int] = []
        got = verify(conn, QualifiedName("public", "old_p"), QualifiedName("public", "new_p"),
                     QualifiedName("public", "nothing"), [KeyColumn("k", keytype)], ["k", "v"], typed={"k", "v"},
                     chunk_rows=first, target_ms=target_ms, pause=lambda: pauses.append(1), repair=False)
        return got, len(pauses) + 1

    fast, ranges = paced(100, 1e9)  # every range far inside the target: 100, 200, 400, 800, 1600 rows
    assert (fast["old_rows"], fast["new_rows"], fast["missing_or_different"]) == (3000, 3000, 2)
    assert ranges == 5  # (a walk's fifth is open-ended: the rows after the 1,500th)
    slow, ranges = paced(1000, 1e-6)  # every range over the target: 1000 rows, then 100 at a time
    assert (slow["old_rows"], slow["new_rows"], slow["missing_or_different"]) == (3000, 3000, 2)
    assert ranges == 21 + (keytype == "text")  # a walk ending on the last row takes one more, empty
