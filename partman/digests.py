"""Digests and readings of a table that a conversion takes when it starts and again under the
swap's lock, to notice what changed on the original meanwhile (convert.changes; the table model
keeps the first `decorations`):
- `fingerprints`: what the table is (columns, indexes, constraints, triggers, policies; its
  extended statistics apart). A change there is refused.
- `decorations`: what decorates it (owner, grants, comments, storage and statistics settings).
  A change there is set again on the new table.
- `settings_in_place`: which of those settings the new table's partitions carry now.
Names, never oids or search_path-dependent text: the same digest in any session."""

from __future__ import annotations

import psycopg

from . import db
from .errors import PartmanError
from .naming import PARTMAN_TRIGGERS

_DECORATIONS = """
SELECT md5(json_build_array(
    pg_get_userbyid(c.relowner), c.relacl::text, obj_description(c.oid, 'pg_class'),
    c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
    (SELECT x.relname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
      WHERE i.indrelid = c.oid AND i.indisreplident),
    (SELECT json_agg(json_build_array(a.attname, a.attacl::text, col_description(c.oid, a.attnum),
                                      CASE WHEN a.attstattarget >= 0 THEN a.attstattarget END, a.attoptions::text)
                     ORDER BY a.attnum)
       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    c.reloptions::text, (SELECT t.reloptions::text FROM pg_class t WHERE t.oid = c.reltoastrelid))::text)
FROM pg_class c WHERE c.oid = %s
"""


def decorations(conn: psycopg.Connection, oid: int) -> str:
    """A digest of what a DBA may change on a table while it is converted without changing what
    it is (owner, grants, comments on it and its columns, row-level security switches, replica
    identity, storage options such as autovacuum's, column statistics targets and n_distinct):
    the swap compares it with the one of the table it decorated the new one from, and sets them
    again when they differ (convert.run). Names only: the same whatever search_path."""
    row = conn.execute(_DECORATIONS, (oid,)).fetchone()
    if row is None:
        raise PartmanError(f"The table with oid {oid} no longer exists.")
    return row[0]


def settings_in_place(conn: psycopg.Connection, table: int, partitions: list[int]) -> tuple[list[str], list[str]]:
    """What a partitioned table and its partitions carry now of what decorations() covers beyond
    ddl.redecorate's first part: the columns with a statistics target or options (n_distinct) on
    any of them, and the names of the storage options set on any partition (its TOAST table's as
    `toast.<name>`), for ddl.resettle to reset."""
    columns = [r[0] for r in conn.execute(
        "SELECT DISTINCT attname FROM pg_attribute WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped "
        "AND (attstattarget >= 0 OR attoptions IS NOT NULL) ORDER BY 1", ([table, *partitions],))]
    options = [r[0] for r in conn.execute(
        "SELECT DISTINCT o.name FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid, "
        "LATERAL (SELECT option_name FROM pg_options_to_table(c.reloptions) "
        "         UNION ALL SELECT 'toast.' || option_name FROM pg_options_to_table(t.reloptions)) AS o(name) "
        "WHERE c.oid = ANY(%s) ORDER BY 1", (partitions,))]
    return columns, options


_FINGERPRINT = """
SELECT md5(concat_ws(' | ',
    (SELECT string_agg(concat_ws(':', a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                                 a.attgenerated, pg_get_expr(d.adbin, d.adrelid)), ', ' ORDER BY a.attnum)
       FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    (SELECT string_agg(pg_get_indexdef(i.indexrelid), ', ' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid),
    (SELECT string_agg(concat_ws(' ', k.conname, pg_get_constraintdef(k.oid)), ', ' ORDER BY k.conname)
       FROM pg_constraint k WHERE k.conrelid = c.oid),
    (SELECT string_agg(concat_ws(' ', t.tgname, t.tgenabled, pg_get_triggerdef(t.oid)), ', ' ORDER BY t.tgname)
       FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND NOT (t.tgname = ANY(%(ours)s))),
    (SELECT string_agg(concat_ws(' ', p.polname, pg_get_expr(p.polqual, p.polrelid)), ', ' ORDER BY p.polname)
       FROM pg_policy p WHERE p.polrelid = c.oid)))
FROM pg_class c WHERE c.oid = %(oid)s
"""


# a digest of the table's extended statistics objects, apart from _FINGERPRINT's so that a
# conversion started before it was taken (which has none recorded) is not refused as changed
_STATISTICS_FINGERPRINT = """
SELECT md5(coalesce((SELECT string_agg(concat_ws(' ', pg_get_statisticsobjdef(s.oid),
                                                CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget END), ', ' ORDER BY 1)
                       FROM pg_statistic_ext s WHERE s.stxrelid = c.oid), ''))
FROM pg_class c WHERE c.oid = %(oid)s
"""


def fingerprints(conn: psycopg.Connection, oid: int) -> tuple[str, str]:
    """Two digests of what a conversion carries over, to notice a table altered while it was being
    converted: its columns, indexes, constraints, triggers and policies; its extended statistics
    objects. Works inside the caller's transaction (the swap) or on its own. The statements up to
    the digests go out in one pipeline: the swap reads them under its exclusive lock, where each
    round trip is time the application waits."""
    params = {"oid": oid, "ours": list(PARTMAN_TRIGGERS)}

    def read() -> tuple[str, str]:
        with db.pipeline(conn):
            saved = conn.execute("SELECT current_setting('search_path')")
            conn.execute("SELECT set_config('search_path', 'pg_catalog, pg_temp', true)")
            definition = conn.execute(_FINGERPRINT, params)
            statistics = conn.execute(_STATISTICS_FINGERPRINT, params)
        conn.execute("SELECT set_config('search_path', %s, true)", (saved.fetchone()[0],))
        values = definition.fetchone(), statistics.fetchone()
        if values[0] is None or values[1] is None:
            raise PartmanError(f"The table with oid {oid} no longer exists.")
        return values[0][0], values[1][0]

    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return read()
    with conn.transaction():
        return read()
