"""partman's own catalog schema (default `partman_catalog`; never `partman`, where pg_partman
lives): migrations, the registry of managed tables, conversion state, maintenance runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import log
from .settings import Settings

_MIGRATION_LOCK = "partman:catalog-migration"


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("partman's sql/ directory is missing from the installation")


def migrations() -> list[tuple[int, Path]]:
    out = []
    for p in sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql")):
        out.append((int(p.name[:3]), p))
    return out


def ident(settings: Settings, name: str) -> sql.Identifier:
    """A catalog object's qualified identifier."""
    return sql.Identifier(settings.catalog_schema, name)


def exists(conn: psycopg.Connection, settings: Settings) -> bool:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, 'managed_table')) IS NOT NULL",
        (settings.catalog_schema,),
    ).fetchone()
    return bool(row and row[0])


def ensure(conn: psycopg.Connection, settings: Settings) -> None:
    """Create or migrate the catalog. Safe to call from several processes at once."""
    schema = sql.Identifier(settings.catalog_schema)
    current = _version(conn, settings)
    pending = [(v, p) for v, p in migrations() if v > current]
    if not pending:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_MIGRATION_LOCK,))
        # a DBA may pre-create the schema for a role without CREATE on the database
        if not conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)",
                            (settings.catalog_schema,)).fetchone()[0]:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_version "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema)
        )
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
        done = {r[0] for r in conn.execute("SELECT version FROM schema_version")}
        for version, path in pending:
            if version in done:
                continue
            conn.execute(path.read_text())  # type: ignore[arg-type]  # our own file, no parameters
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    if current == 0:
        _warn_if_published(conn, settings)


def _warn_if_published(conn: psycopg.Connection, settings: Settings) -> None:
    """A publication of all tables publishes the catalog just made: each subscriber stops
    replicating at partman's first write unless it has the catalog's tables too."""
    names = [r[0] for r in conn.execute("SELECT pubname FROM pg_publication WHERE puballtables ORDER BY 1")]
    if names:
        log.get().warning(
            "catalog_published", catalog=settings.catalog_schema, publications=names,
            warning=f"{', '.join(names)} publish all tables, so partman's catalog ({settings.catalog_schema}) too: a "
                    "subscriber stops replicating at partman's first write unless it has the same tables; create "
                    f"them there (pg_dump --schema-only --schema {settings.catalog_schema} | psql <subscriber>)")


def _version(conn: psycopg.Connection, settings: Settings) -> int:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.schema_version', %s::text)) IS NOT NULL", (settings.catalog_schema,)
    ).fetchone()
    if not row[0]:
        return 0
    return conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(ident(settings, "schema_version"))
    ).fetchone()[0]


# ---------------------------------------------------------------- registry

@dataclass
class ManagedTable:
    schema_name: str
    table_name: str
    column_name: str
    key_type: str
    interval: str
    premake: int
    timezone: str
    retention: str | None
    retention_action: str
    retention_schema: str | None
    old_table_name: str | None
    drop_old_after: str | None
    swapped_at: Any
    verified_at: Any
    registered_at: Any
    registered_by: str
    maintenance_last_run: Any
    maintenance_last_attempt: Any
    maintenance_last_error: str | None

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.table_name}"


_MT_COLUMNS = [f for f in ManagedTable.__dataclass_fields__]


def _mt_select(settings: Settings) -> sql.Composed:
    cols = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) if c in ("retention", "drop_old_after") else sql.Identifier(c)
        for c in _MT_COLUMNS
    )
    return sql.SQL("SELECT {} FROM {}").format(cols, ident(settings, "managed_table"))


def list_managed(conn: psycopg.Connection, settings: Settings) -> list[ManagedTable]:
    if not exists(conn, settings):
        return []
    q = _mt_select(settings) + sql.SQL(" ORDER BY schema_name, table_name")
    with conn.cursor(row_factory=dict_row) as cur:
        return [ManagedTable(**r) for r in cur.execute(q).fetchall()]


def get_managed(conn: psycopg.Connection, settings: Settings, schema: str, table: str) -> ManagedTable | None:
    if not exists(conn, settings):
        return None
    q = _mt_select(settings) + sql.SQL(" WHERE schema_name = %s AND table_name = %s")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q, (schema, table)).fetchone()
    return ManagedTable(**row) if row else None


def upsert_managed(conn: psycopg.Connection, settings: Settings, **values: Any) -> None:
    """Insert or update a registry row; `values` are managed_table columns."""
    cols = list(values)
    q = sql.SQL(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (schema_name, table_name) DO UPDATE SET {}"
    ).format(
        ident(settings, "managed_table"),
        sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in cols
            if c not in ("schema_name", "table_name")
        ),
    )
    conn.execute(q, [values[c] for c in cols])


def delete_managed(conn: psycopg.Connection, settings: Settings, schema: str, table: str) -> bool:
    q = sql.SQL("DELETE FROM {} WHERE schema_name = %s AND table_name = %s").format(
        ident(settings, "managed_table")
    )
    return conn.execute(q, (schema, table)).rowcount > 0


def update_managed(conn: psycopg.Connection, settings: Settings, schema: str, table: str, **values: Any) -> None:
    q = sql.SQL("UPDATE {} SET {} WHERE schema_name = %s AND table_name = %s").format(
        ident(settings, "managed_table"),
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values),
    )
    conn.execute(q, [*values.values(), schema, table])


# ---------------------------------------------------------------- conversions

def running_conversion(conn: psycopg.Connection, settings: Settings, schema: str, table: str) -> dict[str, Any] | None:
    q = sql.SQL("SELECT * FROM {} WHERE schema_name = %s AND table_name = %s AND status = 'running'").format(
        ident(settings, "conversion")
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q, (schema, table)).fetchone()


def latest_conversion(conn: psycopg.Connection, settings: Settings, schema: str, table: str) -> dict[str, Any] | None:
    if not exists(conn, settings):
        return None
    q = sql.SQL(
        "SELECT * FROM {} WHERE schema_name = %s AND table_name = %s ORDER BY id DESC LIMIT 1"
    ).format(ident(settings, "conversion"))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q, (schema, table)).fetchone()


def start_conversion(
    conn: psycopg.Connection, settings: Settings, schema: str, table: str, column: str, options: dict[str, Any],
    rows_estimate: int | None,
) -> int:
    q = sql.SQL(
        "INSERT INTO {} (schema_name, table_name, column_name, options, phase, rows_estimate, exact_cursor) "
        "VALUES (%s, %s, %s, %s, 'prepare', %s, true) RETURNING id"
    ).format(ident(settings, "conversion"))
    return conn.execute(q, (schema, table, column, json.dumps(options), rows_estimate)).fetchone()[0]


def update_conversion(conn: psycopg.Connection, settings: Settings, conversion_id: int, **values: Any) -> None:
    values = {k: (json.dumps(v) if k == "verify" and v is not None else v) for k, v in values.items()}
    q = sql.SQL("UPDATE {} SET {}, updated_at = now() WHERE id = %s").format(
        ident(settings, "conversion"),
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values),
    )
    conn.execute(q, [*values.values(), conversion_id])


def merge_options(conn: psycopg.Connection, settings: Settings, conversion_id: int, values: dict[str, Any]) -> None:
    """Set keys of a conversion's options (what later phases and revert read back)."""
    conn.execute(sql.SQL("UPDATE {} SET options = options || %s::jsonb WHERE id = %s").format(
        ident(settings, "conversion")), (json.dumps(values), conversion_id))


def add_copied(conn: psycopg.Connection, settings: Settings, conversion_id: int, rows: int, **values: Any) -> None:
    """A copy batch's bookkeeping, in its transaction: `rows` more copied (an increment, so two
    workers' batches add up exactly whatever order they commit in), and `values` set."""
    q = sql.SQL("UPDATE {} SET rows_copied = rows_copied + %s, {}updated_at = now() WHERE id = %s").format(
        ident(settings, "conversion"),
        sql.SQL("").join(sql.SQL("{} = %s, ").format(sql.Identifier(c)) for c in values),
    )
    conn.execute(q, [rows, *values.values(), conversion_id])


def add_caught_up(conn: psycopg.Connection, settings: Settings, conversion_id: int, rows: int) -> None:
    """A catch-up round's (or the swap's final replay's) rows, in its transaction: an increment,
    so the figure counts every round, also across a resumed run."""
    conn.execute(sql.SQL("UPDATE {} SET rows_caught_up = coalesce(rows_caught_up, 0) + %s, updated_at = now() "
                         "WHERE id = %s").format(ident(settings, "conversion")), (rows, conversion_id))


# ---------------------------------------------------------------- maintenance runs

def start_run(conn: psycopg.Connection, settings: Settings) -> int:
    q = sql.SQL("INSERT INTO {} (instance) VALUES (%s) RETURNING id").format(ident(settings, "maintenance_run"))
    return conn.execute(q, (settings.instance_name,)).fetchone()[0]


def finish_run(conn: psycopg.Connection, settings: Settings, run_id: int, ok: bool, error: str | None, summary: Any) -> None:
    q = sql.SQL("UPDATE {} SET finished_at = clock_timestamp(), ok = %s, error = %s, summary = %s WHERE id = %s").format(
        ident(settings, "maintenance_run")
    )
    conn.execute(q, (ok, error, json.dumps(summary, default=str), run_id))


def last_runs(conn: psycopg.Connection, settings: Settings) -> dict[str, Any]:
    """The last finished run, and the last successful one (for health and metrics)."""
    if not exists(conn, settings):
        return {"last": None, "last_ok": None}
    with conn.cursor(row_factory=dict_row) as cur:
        last = cur.execute(
            sql.SQL("SELECT * FROM {} WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1").format(
                ident(settings, "maintenance_run")
            )
        ).fetchone()
        last_ok = cur.execute(
            sql.SQL("SELECT * FROM {} WHERE ok ORDER BY id DESC LIMIT 1").format(ident(settings, "maintenance_run"))
        ).fetchone()
    return {"last": last, "last_ok": last_ok}
