"""Hostile names and data: quotes, spaces, capitals, unicode and 63-byte names, a key column
named like a keyword, unusual column types, dropped columns, rows at the exact bounds and at
+/- infinity. Everything partman composes goes through psycopg.sql."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st
from psycopg import sql

from partman import naming
from partman.db import QualifiedName, split_name

pytestmark = pytest.mark.conversion

SCHEMA = 'My "Odd" Schema ü'
TABLE = "Événements Ärger \"x\" " + "y" * 30  # > 63 bytes once a suffix is added


def _quoted(qn: QualifiedName) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in (qn.schema, qn.name))


@given(st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s),
       st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 1, 1)))
@settings(max_examples=300, deadline=None)
def test_derived_names_fit_63_bytes_and_keep_their_suffix(table, lower):
    for name, suffix in [
        (naming.partition_name(table, lower), f"_p{lower:%Y%m%d}"),
        (naming.default_name(table), "_default"),
        (naming.old_name(table), "_old"),
    ]:
        encoded = name.encode()
        assert len(encoded) <= 63
        assert name.endswith(suffix)
        assert table.startswith(name[: -len(suffix)])  # only the table part is shortened, at a character boundary


@given(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
       st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_quoted_names_split_back_into_their_parts(schema, table):
    assert split_name(_quoted(QualifiedName(schema, table))) == (schema, table)


def test_hostile_table_converts_with_every_row_in_its_place(conn, partman):
    t = QualifiedName(SCHEMA, TABLE)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('low', 'high')").format(sql.Identifier(SCHEMA, "mood")))
    conn.execute(sql.SQL("CREATE DOMAIN {} AS numeric(12,3) CHECK (VALUE >= 0)").format(sql.Identifier(SCHEMA, "money")))
    conn.execute(
        sql.SQL(
            """CREATE TABLE {t} (
                "Id" bigserial PRIMARY KEY,
                gone int,
                "order" timestamp NOT NULL,
                "select" jsonb,
                blob bytea,
                tags text[],
                m {mood},
                price {money},
                big numeric(30,10),
                "Spaced Col" text DEFAULT 'd'
            )"""
        ).format(t=t.ident(), mood=sql.Identifier(SCHEMA, "mood"), money=sql.Identifier(SCHEMA, "money"))
    )
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN gone").format(t.ident()))  # attribute numbers now differ
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (\"order\", m)").format(sql.Identifier("ix \"odd\""), t.ident()))
    rows = [
        ("2024-01-01 00:00:00", '{"k": "v\\"q"}', b"\x00\xff", ["a", "b,c"], "low", "1.5", "12345678901234567890.0123456789"),
        ("2023-12-31 23:59:59.999999", "[]", b"", [], "high", "0", "-1"),
        ("2024-02-01 00:00:00", "null", None, None, None, None, None),
        ("infinity", "{}", None, None, None, None, None),
        ("-infinity", "{}", None, None, None, None, None),
    ]
    for ts, js, blob, tags, m, price, big in rows:
        conn.execute(
            sql.SQL('INSERT INTO {} ("order", "select", blob, tags, m, price, big) VALUES (%s, %s, %s, %s, %s, %s, %s)').format(t.ident()),
            (ts, js, blob, tags, m, price, big),
        )
    before = conn.execute(sql.SQL("SELECT array_agg(x::text ORDER BY \"Id\") FROM {} x").format(t.ident())).fetchone()[0]

    dry = partman("convert", _quoted(t), "--column", "order", "--interval", "month", "--dry-run")
    assert dry.code == 0, dry.err
    # the column quoted as in SQL, as the table is, names the same column
    assert partman("convert", _quoted(t), "--column", '"order"', "--interval", "month", "--dry-run").out == dry.out
    assert "2 row(s)" in dry.out and "= -infinity or infinity" in dry.out  # counted, and said where they go
    r = partman("convert", _quoted(t), "--column", "order", "--interval", "month", "--sleep", "0", "--yes")
    assert r.code == 0, r.err

    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (t.literal,)).fetchone()[0] == "p"
    after = conn.execute(sql.SQL("SELECT array_agg(x::text ORDER BY \"Id\") FROM {} x").format(t.ident())).fetchone()[0]
    assert after == before  # byte-identical rows, dropped column and all
    parts = dict(conn.execute(
        "SELECT c.relname, count(*) FILTER (WHERE true) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass GROUP BY c.relname", (t.literal,)).fetchall())
    for name in parts:
        assert len(name.encode()) <= 63
    jan = naming.partition_name(TABLE, datetime(2024, 1, 1))
    dec = naming.partition_name(TABLE, datetime(2023, 12, 1))
    assert jan in parts and dec in parts and jan.endswith("_p20240101")
    at_bound = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE \"order\" = '2024-01-01 00:00:00'").format(sql.Identifier(SCHEMA, jan))
    ).fetchone()[0]
    assert at_bound == 1  # a row at the exact lower bound belongs to the partition that starts there
    default = naming.default_name(TABLE)
    assert conn.execute(
        sql.SQL("SELECT array_agg(\"order\"::text ORDER BY \"order\") FROM {}").format(sql.Identifier(SCHEMA, default))
    ).fetchone()[0] == ["-infinity", "infinity"]
    # the application keeps working: the serial continues, the index came along under its odd name
    conn.execute(sql.SQL('INSERT INTO {} ("order") VALUES (\'2024-01-15\')').format(t.ident()))
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (_quoted(QualifiedName(SCHEMA, 'ix "odd"')),)).fetchone()[0]


def test_hostile_names_never_break_the_error_path(conn, partman):
    conn.execute("CREATE TABLE x (id int)")
    for name in ['"no such"."table; DROP TABLE x"', "x; DROP TABLE x", "public.x'); DROP TABLE x; --"]:
        r = partman("convert", name, "--column", "order")
        assert r.code == 1 and "Traceback" not in r.err
        assert "does not exist" in r.err or "no column" in r.err
    assert conn.execute("SELECT to_regclass('public.x') IS NOT NULL").fetchone()[0]  # nothing was injected


def test_advice_names_odd_names_as_sql_and_the_shell_take_them(conn, partman):
    """Where a message gives SQL or a command line to run, a name with spaces or capitals is quoted
    as PostgreSQL (or the shell) needs it, so the advice runs as printed."""
    import re
    import shlex

    conn.execute('CREATE TABLE public."Audit Log" (id bigserial PRIMARY KEY, "Event TS" timestamptz, "Owner" text);'
                 'INSERT INTO public."Audit Log" ("Event TS") VALUES (now()), (NULL);'
                 'CREATE PUBLICATION "Pub One" FOR TABLE public."Audit Log" (id, "Event TS", "Owner")')
    r = partman("convert", 'public."Audit Log"', "--column", "Event TS", "--dry-run")
    assert r.code == 1, r.err
    text = " ".join(r.out.split())
    update = re.search(r"\(UPDATE (.*? IS NULL)\)", text).group(1)
    assert update == 'public."Audit Log" SET "Event TS" = ... WHERE "Event TS" IS NULL', text
    conn.execute("UPDATE " + update.replace("...", "now()"))
    for advised in (re.search(r"\((ALTER TABLE .*? SET NOT NULL)\)", text).group(1),
                    re.search(r"(ALTER PUBLICATION .*? SET \(publish_via_partition_root = true\))", text).group(1)):
        conn.execute(advised)  # runs as printed
    assert conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'Pub One'").fetchone()[0] is True
    r = partman("convert", 'public."Audit Log"', "--column", "Event TS", "--dry-run", "--json")
    assert r.code == 0, r.err
    (widened,) = json.loads(r.out)["widened_keys"]
    assert 'ON CONFLICT (id) finds no key to match (name (id, "Event TS") instead)' in widened, widened

    r = partman("register", 'public."Audit Log"', "--column", "Event TS", "--interval", "year")
    assert r.code == 1
    command = re.search(r"`(partman convert .*?)`", r.err).group(1)
    assert shlex.split(command) == ["partman", "convert", 'public."Audit Log"', "--column", "Event TS", "--interval", "year"]


def test_the_load_advice_for_an_earlier_archive_runs_in_a_shell_with_odd_names():
    """Restore names the command that adds an earlier archive's rows: the object's URI and psql's
    \\copy of a table named with spaces and quotes come through a shell whole."""
    import shlex

    from partman.lifecycle.removals import earlier_archives_note

    target = QualifiedName("public", 'Audit "Log"_p20120101')
    uri = 's3://bucket/partman/public.Audit "Log"/Audit "Log"_p20120101.csv.gz'
    earlier = [{"archive_uri": uri, "row_count": 20, "min_id": 1, "max_id": 20, "removed_by": "vm:1",
                "removed_at": datetime(2026, 1, 1, 0, 0, 0).astimezone()}]
    note = earlier_archives_note(target, uri + ".2", earlier)
    argv = shlex.split(note[note.index("`aws s3 cp") + 1:note.index("`", note.index("`aws s3 cp") + 1)])
    assert argv == ["aws", "s3", "cp", uri, "-", "|", "gunzip", "|", "psql", "-c",
                    '\\copy public."Audit ""Log""_p20120101" FROM STDIN (FORMAT csv, HEADER)'], argv
