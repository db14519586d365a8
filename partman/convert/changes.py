"""The original table changed while it was being converted. What changes what a conversion
carries over (a column, an index, a trigger, an extended statistics object) is noticed and the
conversion refused (rolled back); what only decorates it (grants, comments, storage options,
column statistics settings, replica identity) is set again on the new table under the swap's
lock. And a conversion whose capture trigger is gone cannot resume: its change log is short."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .. import catalog, db, log, partitions
from ..db import QualifiedName
from ..errors import PartmanError
from ..settings import Settings
from . import capture, ddl, plan as planning
from .swap import CONVERT_TRIGGER, child_tables


def check_capturing(conn: psycopg.Connection, qn: QualifiedName) -> None:
    """Before a conversion resumes ahead of its swap: its capture trigger must be on the table."""
    if not capture.trigger_exists(conn, CONVERT_TRIGGER, qn):
        raise PartmanError(
            f"partman's change-capture trigger {CONVERT_TRIGGER} is missing from {qn} (dropped by hand, or by an "
            "interrupted rollback of an older partman): changes made since then were not recorded, so this "
            "conversion cannot resume.")


def check_unchanged(conn: psycopg.Connection, qn: QualifiedName, oid: int,
                    expected: tuple[str | None, str | None]) -> None:
    """Refuse to go on when the table was altered during the conversion: the new table would
    silently lack the change (a column, an index, a trigger, an extended statistics object).
    `expected`: the digests recorded when it started (a conversion started by an earlier
    partman has no statistics digest, and that part is not checked)."""
    from ..digests import fingerprints

    definition, statistics = expected
    if not definition and not statistics:
        return
    now = fingerprints(conn, oid)
    if definition and now[0] != definition:
        changed = "a column, index, constraint, trigger or policy was added, dropped or altered"
    elif statistics and now[1] != statistics:
        changed = "an extended statistics object (CREATE STATISTICS) was created, dropped or altered"
    else:
        return
    raise PartmanError(f"The definition of {qn} changed while it was being converted ({changed}), so the "
                       "partitioned table would not match it.")


def partitions_replica_identity(conn: psycopg.Connection, shadow: QualifiedName, shadow_oid: int) -> None:
    """Each partition's replica identity from the table's (PostgreSQL hands it to none of them)."""
    for child in child_tables(conn, shadow):
        for stmt in partitions.replica_identity_sql(conn, shadow_oid, child):
            conn.execute(stmt)


def redecorate_if_changed(c: psycopg.Connection, settings: Settings, p: planning.ConversionPlan, oid: int,
                          cid: int) -> None:
    """Under the swap's lock: when the original's owner, grants, comments, row-level security
    switches, replica identity, storage options or column statistics settings changed since the
    new table was decorated from it (a GRANT, or autovacuum tuned, during a conversion of hours),
    set them again from the original as it is now, rather than put a table in its place that
    refuses the new reader or still admits the revoked one. A conversion decorated by an earlier
    partman has no digest to compare with: left as it is."""
    from ..digests import decorations, settings_in_place
    from ..introspect import grantees, introspect

    row = c.execute(sql.SQL("SELECT options->>'decorations' FROM {} WHERE id = %s").format(
        catalog.ident(settings, "conversion")), (cid,)).fetchone()
    if row is None or row[0] is None or decorations(c, oid) == row[0]:
        return
    now = introspect(c, p.table)
    shadow_oid = db.oid_of(c, p.shadow)
    leaves = child_tables(c, p.shadow)
    columns, options = settings_in_place(c, shadow_oid, [db.oid_of(c, leaf) for leaf in leaves])
    for stmt in [*ddl.redecorate(now, p.shadow, leaves, grantees(c, shadow_oid), p.index_ddl, p.options.column),
                 *ddl.resettle(now, p.shadow, leaves, columns=columns, options=options)]:
        c.execute(stmt)
    partitions_replica_identity(c, p.shadow, shadow_oid)
    catalog.merge_options(c, settings, cid, {"decorations": now.decorations})
    log.get().warning("decorations_reapplied", table=str(p.table), reason="the original's owner, grants, comments, "
                      "row-level security, replica identity, storage options or column statistics settings changed "
                      "during the conversion")
