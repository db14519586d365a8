"""The sample audit ledger of `partman demo`, the tests and the benchmarks: an append-only,
hash-chained table like the first user's `audit_log_ledger`.

Each row's `current_hash` is sha256 over the previous row's hash and the row's content; a
BEFORE INSERT trigger chains new rows (serialised by an advisory lock, re-numbering the id
under it so chain order is id order) and a BEFORE UPDATE/DELETE trigger refuses changes."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .db import QualifiedName

GENESIS = "0" * 64

# {t}: the table, {seqlit}: its id sequence (a literal), {fn_*}: function names, {hash}: the hash function
_DDL = """
CREATE TABLE {t} (
    id              bigserial PRIMARY KEY,
    event_timestamp timestamptz NOT NULL DEFAULT now(),
    actor           text        NOT NULL,
    action          text        NOT NULL CHECK (action <> ''),
    payload         jsonb       NOT NULL DEFAULT '{{}}',
    prev_hash       text        NOT NULL,
    current_hash    text        NOT NULL
);
CREATE INDEX ON {t} (event_timestamp);
CREATE INDEX ON {t} (actor, event_timestamp);
CREATE FUNCTION {hash}(prev text, id bigint, ts timestamptz, actor text, action text, payload jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(concat_ws('|', prev, id::text,
        to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), actor, action, payload::text), 'UTF8')), 'hex')
$$;
"""

# the application's triggers, also for a table made otherwise (Ledger.add_triggers)
_TRIGGERS = """
CREATE FUNCTION {fn_chain}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE prev text;
BEGIN
    -- on a partitioned table the trigger fires on the partition: chain over the whole table,
    -- named statically (plan cached; after a swap the name is looked up again and finds the
    -- partitioned table)
    PERFORM pg_advisory_xact_lock(hashtext(TG_TABLE_SCHEMA || '.' || {lockname}));
    NEW.id := nextval({seqlit});
    SELECT current_hash INTO prev FROM {t} ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(prev, {genesis});
    NEW.current_hash := {hash}(NEW.prev_hash, NEW.id, NEW.event_timestamp, NEW.actor, NEW.action, NEW.payload);
    RETURN NEW;
END $$;
CREATE FUNCTION {fn_append_only}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit ledger is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER ledger_chain BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {fn_chain}();
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {fn_append_only}();
"""


_SEED_FN = """
CREATE OR REPLACE FUNCTION pg_temp.partman_seed(n integer, t0 timestamptz, t1 timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[] := '{{}}'; tss timestamptz[] := '{{}}'; actors text[] := '{{}}'; actions text[] := '{{}}';
    payloads jsonb[] := '{{}}'; prevs text[] := '{{}}'; hashes text[] := '{{}}';
    base bigint; prev text; step interval := (t1 - t0) / greatest(n, 1);
    i integer; r_ts timestamptz; r_actor text; r_action text; r_payload jsonb; h text;
BEGIN
    SELECT coalesce(max(id), 0) INTO base FROM {t};
    SELECT current_hash INTO prev FROM {t} ORDER BY id DESC LIMIT 1;
    prev := coalesce(prev, {genesis});
    FOR i IN 1..n LOOP
        r_ts := t0 + (i - 1) * step;
        r_actor := 'user' || (i % 97);
        r_action := (ARRAY['read', 'write', 'sign', 'export'])[1 + i % 4];
        r_payload := jsonb_build_object('resident', i % 5000, 'note', md5(i::text), 'v', 1);
        h := {hash}(prev, base + i, r_ts, r_actor, r_action, r_payload);
        ids := ids || (base + i); tss := tss || r_ts; actors := actors || r_actor; actions := actions || r_action;
        payloads := payloads || r_payload; prevs := prevs || prev; hashes := hashes || h;
        prev := h;
    END LOOP;
    INSERT INTO {t} (id, event_timestamp, actor, action, payload, prev_hash, current_hash)
    SELECT * FROM unnest(ids, tss, actors, actions, payloads, prevs, hashes);
END $$;
"""


@dataclass(frozen=True)
class Ledger:
    table: QualifiedName

    def _names(self) -> dict[str, sql.Composable]:
        s, t = self.table.schema, self.table.name
        return {
            "t": self.table.ident(),
            "hash": sql.Identifier(s, "ledger_row_hash"),
            "fn_chain": sql.Identifier(s, f"{t}_chain"[:63]),
            "fn_append_only": sql.Identifier(s, f"{t}_append_only"[:63]),
            "seqlit": sql.Literal(f"{self.table.literal}_id_seq"),
            "lockname": sql.Literal(t),
            "genesis": sql.Literal(GENESIS),
        }

    def create(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL(_DDL + _TRIGGERS).format(**self._names()))

    def add_triggers(self, conn: psycopg.Connection, sequence: str) -> None:
        """The chain and append-only triggers on an existing table with the ledger's columns (its
        ids drawn from `sequence`), the hash function already made by another Ledger's create()."""
        conn.execute(sql.SQL(_TRIGGERS).format(**{**self._names(), "seqlit": sql.Literal(sequence)}))

    def seed(self, conn: psycopg.Connection, rows: int, start: str, end: str) -> None:
        """Insert `rows` chained rows with timestamps spread evenly over [start, end), computed
        in the server (hashes in a loop, rows in one INSERT), bypassing the row trigger."""
        n = self._names()
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # seeding only: triggers off
            conn.execute(sql.SQL(_SEED_FN).format(**n))
            conn.execute(
                "SELECT pg_temp.partman_seed(%s, %s::timestamptz, %s::timestamptz)", (rows, start, end)
            )
            conn.execute(sql.SQL("SELECT setval({}, (SELECT max(id) FROM {}))").format(n["seqlit"], n["t"]))

    def insert(self, conn: psycopg.Connection, actor: str = "app", action: str = "write", ts: str | None = None) -> None:
        """One application insert (the chain trigger fills id and hashes)."""
        if ts is None:
            conn.execute(
                sql.SQL("INSERT INTO {} (actor, action, payload, prev_hash, current_hash) VALUES (%s, %s, '{{}}', '', '')").format(
                    self.table.ident()
                ),
                (actor, action),
            )
        else:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (event_timestamp, actor, action, payload, prev_hash, current_hash) VALUES (%s, %s, %s, '{{}}', '', '')"
                ).format(self.table.ident()),
                (ts, actor, action),
            )


def verify_chain(conn: psycopg.Connection, table: QualifiedName, anchor: str | None = None) -> dict:
    """Recompute every row's hash in id order. Returns {"rows", "broken", "first_broken_id", "ok"}.
    `anchor`: the hash the first remaining row must chain onto (after retention removed older
    partitions); default: the first row's own prev_hash if it is the genesis, else it must be given."""
    row = conn.execute(
        sql.SQL(
            """
        WITH c AS (
            SELECT id, prev_hash, current_hash,
                   lag(current_hash) OVER (ORDER BY id) AS lag_hash,
                   row_number() OVER (ORDER BY id) AS rn,
                   {hash}(prev_hash, id, event_timestamp, actor, action, payload) AS recomputed
            FROM {t}
        )
        SELECT count(*),
               count(*) FILTER (WHERE recomputed <> current_hash
                                 OR (rn > 1 AND lag_hash <> prev_hash)
                                 OR (rn = 1 AND prev_hash <> coalesce(%s, {genesis}))),
               min(id) FILTER (WHERE recomputed <> current_hash
                                 OR (rn > 1 AND lag_hash <> prev_hash)
                                 OR (rn = 1 AND prev_hash <> coalesce(%s, {genesis})))
        FROM c
        """
        ).format(t=table.ident(), hash=sql.Identifier(table.schema, "ledger_row_hash"), genesis=sql.Literal(GENESIS)),
        (anchor, anchor),
    ).fetchone()
    return {"rows": row[0], "broken": row[1], "first_broken_id": row[2], "ok": row[1] == 0}
