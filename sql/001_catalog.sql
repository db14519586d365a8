-- partman's catalog. Run with search_path set to the catalog schema (default partman_catalog);
-- object names here are unqualified on purpose.

CREATE TABLE managed_table (
    schema_name              text        NOT NULL,
    table_name               text        NOT NULL,
    column_name              text        NOT NULL,
    key_type                 text        NOT NULL CHECK (key_type IN ('timestamptz', 'timestamp', 'date')),
    "interval"               text        NOT NULL CHECK ("interval" IN ('year', 'quarter', 'month', 'week', 'day')),
    premake                  integer     NOT NULL DEFAULT 3 CHECK (premake >= 0),
    timezone                 text        NOT NULL DEFAULT 'UTC',
    retention                interval,
    retention_action         text        NOT NULL DEFAULT 'drop' CHECK (retention_action IN ('drop', 'detach', 'archive')),
    retention_schema         text,
    old_table_name           text,          -- <table>_old kept after a conversion, until dropped
    drop_old_after           interval,      -- daemon drops old_table_name this long after verified_at
    swapped_at               timestamptz,
    verified_at              timestamptz,
    registered_at            timestamptz NOT NULL DEFAULT now(),
    registered_by            text        NOT NULL DEFAULT current_user,
    maintenance_last_run     timestamptz,   -- last pass that succeeded for this table (only written on success)
    maintenance_last_attempt timestamptz,
    maintenance_last_error   text,
    PRIMARY KEY (schema_name, table_name)
);

-- One row per `partman convert` attempt; the running one is the resume state.
CREATE TABLE conversion (
    id               bigserial   PRIMARY KEY,
    schema_name      text        NOT NULL,
    table_name       text        NOT NULL,
    column_name      text        NOT NULL,
    options          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed', 'reverted')),
    phase            text        NOT NULL,
    last_key         text[],        -- keyset cursor of the copy (primary key values, as text)
    rows_estimate    bigint,
    rows_copied      bigint      NOT NULL DEFAULT 0,
    rows_caught_up   bigint      NOT NULL DEFAULT 0,
    longest_batch_ms double precision,
    swap_lock_ms     double precision,
    swap_attempts    integer     NOT NULL DEFAULT 0,
    verify           jsonb,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE UNIQUE INDEX conversion_one_running ON conversion (schema_name, table_name) WHERE status = 'running';

CREATE TABLE maintenance_run (
    id          bigserial   PRIMARY KEY,
    instance    text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    ok          boolean,
    error       text,
    summary     jsonb
);

-- Every partition retention removed: append-only. For a hash-chained ledger, last_row is the
-- anchor from which the remaining chain verifies.
CREATE TABLE removal (
    id             bigserial   PRIMARY KEY,
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    partition_name text        NOT NULL,
    lower_bound    text,
    upper_bound    text,
    row_count      bigint      NOT NULL,
    min_id         text,
    max_id         text,
    last_row       jsonb,
    action         text        NOT NULL CHECK (action IN ('drop', 'detach', 'archive')),
    archive_uri    text,
    archive_sha256 text,
    archive_bytes  bigint,
    removed_at     timestamptz NOT NULL DEFAULT now(),
    removed_by     text        NOT NULL
);

CREATE FUNCTION removal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'partman removal records are append-only';
END $$;
CREATE TRIGGER removal_append_only BEFORE UPDATE OR DELETE ON removal
    FOR EACH ROW EXECUTE FUNCTION removal_is_append_only();

-- Legal holds: retention never removes a held partition.
CREATE TABLE hold (
    schema_name    text        NOT NULL,
    partition_name text        NOT NULL,
    reason         text        NOT NULL,
    held_by        text        NOT NULL,
    held_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, partition_name)
);

CREATE TABLE hold_event (
    id             bigserial   PRIMARY KEY,
    schema_name    text        NOT NULL,
    partition_name text        NOT NULL,
    event          text        NOT NULL CHECK (event IN ('hold', 'release')),
    reason         text,
    actor          text        NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);

-- Progress of an archive, so a rerun resumes without a duplicate object.
CREATE TABLE archive (
    schema_name    text        NOT NULL,
    partition_name text        NOT NULL,
    table_name     text        NOT NULL,
    uri            text        NOT NULL,
    sha256         text,
    bytes          bigint,
    row_count      bigint,
    state          text        NOT NULL CHECK (state IN ('uploaded', 'verified', 'manifest', 'removed')),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, partition_name)
);
