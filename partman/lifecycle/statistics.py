"""The partitioned parent's statistics. Autovacuum analyzes each partition as its rows change but
never the partitioned parent, whose statistics the planner uses for the table as a whole (join
estimates, GROUP BY over all partitions). `maintain` analyzes the parent after it changed the
partitions, and also when they grew or shrank past autovacuum's own analyze threshold since the
parent was last analyzed (the server's `autovacuum_analyze_threshold` +
`autovacuum_analyze_scale_factor` x the parent's rows then): an append-only ledger's parent
otherwise keeps a year-old picture until the next yearly partition is made."""

from __future__ import annotations

import psycopg

from ..db import QualifiedName

# the parent's rows at its last ANALYZE (-1: never analyzed, PostgreSQL 14+), the leaf partitions'
# rows as their own last VACUUM or ANALYZE (autovacuum's) counted them, and autovacuum's threshold
_ROWS = """
SELECT p.reltuples, coalesce(sum(greatest(c.reltuples, 0)), 0),
       current_setting('autovacuum_analyze_threshold')::float8,
       current_setting('autovacuum_analyze_scale_factor')::float8
FROM pg_class p
LEFT JOIN LATERAL pg_partition_tree(p.oid) t ON t.isleaf
LEFT JOIN pg_class c ON c.oid = t.relid
WHERE p.oid = %s::regclass
GROUP BY p.reltuples
"""


def analyze_due(parent_rows: float, leaf_rows: float, threshold: float, scale: float) -> bool:
    """Whether the parent's statistics are stale: never gathered while its partitions hold rows,
    or their rows moved away from the count the parent's last ANALYZE saw by more than
    autovacuum's analyze threshold for a table of that size. Pure."""
    if parent_rows < 0:
        return leaf_rows > 0
    return abs(leaf_rows - parent_rows) > threshold + scale * parent_rows


def parent_stale(conn: psycopg.Connection, parent: QualifiedName) -> bool:
    row = conn.execute(_ROWS, (parent.literal,)).fetchone()
    return row is not None and analyze_due(*row)
