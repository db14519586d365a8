"""Settings precedence, durations, names, bounds: the pure parts, no server."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from partman import intervals, naming
from partman.durations import parse_duration
from partman.errors import UsageError
from partman.settings import load_settings


def test_durations():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("7 days") == timedelta(days=7)
    assert parse_duration("1 hour 30 minutes") == timedelta(minutes=90)
    # PostgreSQL interval strings in months and years, counted as PostgreSQL counts their seconds
    assert parse_duration("1 month") == timedelta(days=30)
    assert parse_duration("1 year 2 mons") == timedelta(days=365.25 + 60)
    with pytest.raises(ValueError):
        parse_duration("soon")


POSTGRES_INTERVALS = ["PT5M", "P1D", "P1DT2H30M", "@ 1 hour", "1 day 02:00", "02:00", "1:30:15.5", "1 millennium",
                      "2 decades", "1 century", "250 ms", "1.5 hours", "3 weeks", "1 hour ago", "-1 day", "1 year 2 mons"]


def test_durations_read_postgresqls_interval_strings_as_postgresql_does(conn):
    """PARTMAN_MAINTENANCE_INTERVAL is read without a database (the daemon's schedule), yet the
    contract promises what --drop-old-after gets from PostgreSQL itself: any interval string."""
    for text in POSTGRES_INTERVALS:
        epoch = conn.execute("SELECT extract(epoch FROM %s::interval)::float8", (text,)).fetchone()[0]
        assert parse_duration(text).total_seconds() == pytest.approx(epoch), text


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "p.toml"
    cfg.write_text('premake = 5\nbatch_size = 7\nsleep = 0.5\nmaintenance_interval = "30m"\n')
    monkeypatch.setenv("PARTMAN_BATCH_SIZE", "8")
    s = load_settings({"sleep": 0.0}, str(cfg))
    assert s.premake == 5  # file over default
    assert s.batch_size == 8  # env over file
    assert s.sleep == 0.0  # flag over env and file
    assert s.maintenance_interval == timedelta(minutes=30)
    monkeypatch.setenv("PARTMAN_MAINTENANCE_INTERVAL", "7 days")
    assert load_settings({}, None).maintenance_interval == timedelta(days=7)
    monkeypatch.setenv("PARTMAN_MAINTENANCE_INTERVAL", "@ 1 day 02:00")
    assert load_settings({}, None).maintenance_interval == timedelta(hours=26)


def test_a_flags_name_as_environment_variable_keeps_the_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "p.toml"
    cfg.write_text("lock_timeout_ms = 777\n")
    monkeypatch.delenv("PARTMAN_LOCK_TIMEOUT_MS", raising=False)
    monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT", "1234")
    assert load_settings({}, str(cfg)).lock_timeout_ms == 1234  # env (the flag's name) over file
    assert load_settings({"lock_timeout_ms": 5}, str(cfg)).lock_timeout_ms == 5  # flag over env
    monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT_MS", "999")
    assert load_settings({}, str(cfg)).lock_timeout_ms == 999  # the setting's own name over the flag's
    monkeypatch.delenv("PARTMAN_LOCK_TIMEOUT_MS")
    monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="lock_timeout_ms"):
        load_settings({}, None)


def test_bad_setting_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("PARTMAN_PREMAKE", "many")
    with pytest.raises(UsageError):
        load_settings({}, None)


@pytest.mark.parametrize("name, value, words", [
    ("PARTMAN_MAINTENANCE_INTERVAL", "0", "positive"),
    ("PARTMAN_MAINTENANCE_INTERVAL", "0 seconds", "positive"),
    ("PARTMAN_TIMEZONE", "Mars/Base", "unknown time zone"),
    ("PARTMAN_TIMEZONE", "", "unknown time zone"),
    ("PARTMAN_CATALOG_SCHEMA", "pg_catalog", "cannot hold"),
    ("PARTMAN_CATALOG_SCHEMA", "", "cannot hold"),
    ("PARTMAN_LOCK_TIMEOUT_MS", "9999999999", "lock_timeout_ms"),
])
def test_settings_postgresql_would_reject_later_are_usage_errors_now(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=words):
        load_settings({}, None)


def test_a_config_file_key_the_settings_do_not_know_is_a_usage_error(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('premake = 5\nretenton = "10 years"\n')  # a typo must not pass silently
    with pytest.raises(UsageError, match="unknown setting.*retenton"):
        load_settings({}, str(cfg))
    cfg.write_text('premake = 5\nretention = "10 years"\ninterval = "month"\n')
    s = load_settings({}, str(cfg))
    assert (s.premake, s.retention, s.interval) == (5, "10 years", "month")
    cfg.write_text("premake = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_settings({}, str(cfg))


def test_names_shorten_the_table_never_the_suffix():
    long = "x" * 80
    name = naming.partition_name(long, datetime(2024, 1, 1))
    assert name.endswith("_p20240101") and len(name.encode()) == 63
    uni = "ä" * 40  # 80 bytes: must be cut on a character boundary
    d = naming.default_name(uni)
    assert d.endswith("_default") and len(d.encode()) <= 63
    d.encode().decode()


def test_year_bounds_in_a_time_zone():
    tz = intervals.zone("Europe/Berlin")
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    r = intervals.ranges(datetime(2016, 6, 1, tzinfo=timezone.utc), None, now, "year", tz, 3)
    assert r[0][0] == datetime(2016, 1, 1, tzinfo=tz)
    assert r[-1][1] == datetime(2030, 1, 1, tzinfo=tz)
    assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
    # 23:30 UTC on Dec 31 is already next year in Berlin
    assert intervals.floor(datetime(2020, 12, 31, 23, 30, tzinfo=timezone.utc), "year", tz).year == 2021


def test_readme_settings_table_matches_the_settings():
    from pathlib import Path

    from partman.settings import settings_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README's settings table: python -m partman.settings"


def test_readme_starts_with_the_two_fresh_machine_commands():
    from pathlib import Path

    head = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()[:6]
    assert any("pip install . && partman demo" in line for line in head)
    assert any("pip install -e '.[test]' && bash tests/run.sh" in line for line in head)


def test_the_readmes_relative_links_name_files_that_exist():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for readme in (root / "README.md", root / "bench" / "README.md", root / "bench" / "RESULTS.md"):
        targets = re.findall(r"\]\(([^)#:]+)\)", readme.read_text())
        assert targets or readme.name == "RESULTS.md", readme
        for target in targets:
            assert (readme.parent / target).exists(), f"{readme.relative_to(root)} links to a missing {target}"


def test_a_column_may_be_given_quoted_as_in_sql():
    from partman.db import column_arg

    assert column_arg('"Event TS"') == "Event TS"
    assert column_arg('"say ""hi"""') == 'say "hi"'
    assert column_arg("event_timestamp") == "event_timestamp"
    assert column_arg("MixedCase") == "MixedCase"  # as it is, as before: no folding


def test_index_names_as_postgresql_chooses_them():
    from partman.naming import pg_index_name, unique_column_names

    assert pg_index_name("care_p20240101", [], "pkey", set()) == "care_p20240101_pkey"
    assert pg_index_name("care_p20240101", ["ref", "at"], "key", set()) == "care_p20240101_ref_at_key"
    assert pg_index_name("t", ["at"], "idx", {"t_at_idx", "t_at_idx1"}) == "t_at_idx2"
    long = pg_index_name("p" * 60, ["c" * 30], "idx", set())  # the longer part is cut first
    assert long == "p" * 29 + "_" + "c" * 29 + "_idx" and len(long) == 63
    assert unique_column_names(["lower", "lower", "at"]) == ["lower", "lower1", "at"]


def test_the_analyze_split_gives_both_connections_about_equal_samples():
    from partman.convert.indexes import analyze_split

    cap = 30_000  # 300 x the default statistics target
    # partitions of a million rows: every sample is the cap, the parent's too: 5 | 4 and the parent
    assert analyze_split([1_000_000] * 9, cap) == 5
    # partitions of 5,000 rows: the parent's sample (30,000 rows) is six partitions' work: 8 | 2 + parent
    assert analyze_split([5_000] * 10, cap) == 8
    # tiny partitions: the parent's sample is all of their rows, as much as all of them together
    assert analyze_split([500] * 10, cap) == 10
    # empty partitions (future ones, the default) weigh nothing; one that holds rows cannot be split
    assert analyze_split([40_000, 40_000, 0, 0], cap) == 1
    assert analyze_split([0, 40_000, 0], cap) is None and analyze_split([], cap) is None


@pytest.mark.parametrize("source, column, assigns", [
    ("NEW.event_timestamp := now();", "event_timestamp", True),
    ("  new.Event_Timestamp = clock_timestamp();", "event_timestamp", True),  # PL/pgSQL folds the case
    ('NEW."event_timestamp" := now();', "event_timestamp", True),
    ("IF x THEN NEW.event_timestamp = now(); END IF;", "event_timestamp", True),
    ("BEGIN\n  NEW.at := now();\n", "at", True),
    ('NEW."EventTs" := now();', "EventTs", True),
    ("IF NEW.event_timestamp = OLD.event_timestamp THEN RETURN NEW; END IF;", "event_timestamp", False),  # compares
    ("NEW.event_timestamp_local := now();", "event_timestamp", False),
    ("renew.event_timestamp := 1;", "event_timestamp", False),
    ("NEW.eventts := now();", "EventTs", False),  # a quoted mixed-case column is another column
    ("v := NEW.at; PERFORM f(NEW.at = now());", "at", False),
    ("NEW.current_hash := digest(NEW.prev_hash || NEW.event_timestamp::text);", "event_timestamp", False),
])
def test_a_trigger_body_that_sets_the_partition_key_is_recognised(source, column, assigns):
    from partman.convert.suitability import _assigns

    assert _assigns(source, column) is assigns


def test_the_parents_statistics_are_stale_past_autovacuums_analyze_threshold():
    from partman.lifecycle.statistics import analyze_due

    assert analyze_due(-1, 10, 50, 0.1) and not analyze_due(-1, 0, 50, 0.1)  # never analyzed
    assert not analyze_due(1000, 1150, 50, 0.1) and analyze_due(1000, 1151, 50, 0.1)  # grew
    assert not analyze_due(1000, 850, 50, 0.1) and analyze_due(1000, 849, 50, 0.1)  # retention shrank it
    assert not analyze_due(0, 50, 50, 0.1) and analyze_due(0, 51, 50, 0.1)


@pytest.mark.parametrize("dsn", [
    "host=x password='se cret' dbname=y",
    "host=x password='it\\'s' dbname=y",
    "host=x password=se\\ cret dbname=y",
    "host=x password = secret dbname=y",
    "host=x password=secret",
])
def test_a_redacted_key_value_dsn_keeps_its_quoting(dsn):
    from psycopg.conninfo import conninfo_to_dict

    from partman.log import redact

    assert conninfo_to_dict(redact(dsn)) == {**conninfo_to_dict(dsn), "password": "***"}
    # quoted whole, as argparse and repr() quote a value: the closing quote stays the text's own
    for quoted in (f"invalid choice: '{dsn}' (choose from", f'dsn: "{dsn}"'):
        if dsn.count("'") == 0:
            assert redact(quoted) == quoted.replace(dsn, redact(dsn)), redact(quoted)
        assert "cret" not in redact(quoted)


@pytest.mark.parametrize("text, expected", [
    ("Connection refused\n\tIs the server running on that host?", "Connection refused. Is the server running on that host?"),
    ("relation \"x\" does not exist.", "relation \"x\" does not exist."),
    ("no stop", "no stop."),
    ("failures were:\n- one\n- two\n", "failures were: - one. - two."),
    ("", ""),
])
def test_a_message_of_several_lines_reads_as_sentences(text, expected):
    from partman.errors import sentences

    assert sentences(text) == expected


def test_status_says_rows_copied_against_the_estimate_without_a_share_past_it():
    from partman.status import _copied

    base = {"status": "running", "rows_estimate": 3382, "progress": 1.0}
    assert _copied({**base, "rows_copied": 1000, "progress": 0.2957}) == "1,000 of ~3,382 rows copied (29.6%)"
    assert _copied({**base, "rows_copied": 5411}) == "5,411 rows copied (the table was estimated at ~3,382 when it began)"
    assert _copied({**base, "rows_copied": 5411, "status": "done"}) == "5,411 rows copied"
    assert _copied({**base, "rows_copied": 7, "rows_estimate": None}) == "7 rows copied"


def test_status_says_a_running_conversions_pace_only_for_its_phase_and_while_it_runs():
    from partman.status import _pace

    now = datetime(2026, 11, 28, 15, 0, 0, tzinfo=timezone.utc)
    verifying = {"phase": "verify", "rows": 1_200_000, "total_estimate": 44_000_000, "rows_per_s": 2150,
                 "eta_s": 19_907.0, "pause_s": 1.64, "slowed_by": "replica", "replica_lag_s": 12.3}
    c = {"active": True, "phase": "verify", "pace": verifying, "updated_at": now - timedelta(seconds=3)}
    assert _pace(c, now) == ("; 1,200,000 of ~44,000,000 rows compared, 2,150 rows/s, about 5.5 h left, "
                             "pause 1.64 s (replica 12.3 s behind) (3 s ago)")
    copying = {"phase": "copy", "rows": 500, "total_estimate": 3000, "rows_per_s": 410, "eta_s": None}
    assert _pace({**c, "phase": "copy", "pace": copying}, now) == "; 410 rows/s (3 s ago)"  # full speed: no pause
    assert _pace({**c, "phase": "indexes", "pace": copying}, now) == ""  # the copy's figures, in a later phase
    assert _pace({**c, "active": False}, now) == ""  # nobody is working on it: no pace
    assert _pace({**c, "pace": None}, now) == ""


def _status_doc_with_archives(years: tuple[int, ...]) -> dict:
    now = datetime(2026, 11, 25, 19, 20, 11, tzinfo=timezone.utc)
    removals = [{"partition_name": f"audit_log_ledger_p{y}0101", "lower_bound": f"{y}-01-01 00:00:00+00",
                 "upper_bound": f"{y + 1}-01-01 00:00:00+00", "row_count": 7749, "min_id": 1 + 7749 * i,
                 "max_id": 7749 * (i + 1), "action": "archive", "archive_bytes": 1, "removed_at": now, "removed_by": "vm:1",
                 "archive_uri": f"s3://care-platform-audit-archive/partman/public.audit_log_ledger/audit_log_ledger_p{y}0101.csv.gz",
                 "archive_sha256": f"{y:04d}" + "576960ce5f95186b" * 3 + "0123456789abcdef"[: 12]}
                for i, y in enumerate(years)]
    table = {"table": "public.audit_log_ledger", "column": "event_timestamp", "key_type": "timestamptz", "interval": "year",
             "premake": 3, "timezone": "UTC", "retention": "10 years", "retention_action": "archive", "exists": True,
             "maintenance": {"last_run": now, "last_attempt": now, "last_error": None}, "old_table": None,
             "drop_old_after": None, "partitions": [], "partitions_ahead": 3, "required_ahead": 2, "covered_until": now,
             "default_rows": 0, "default_rows_unplaceable": 0, "retention_due": [], "holds": [], "conversion": None,
             "removals": removals}
    return {"now": now, "last_maintenance": None, "tables": [table], "conversions_running": []}


@pytest.mark.parametrize("terminal", [True, False])
def test_removed_partitions_read_whole_on_an_80_column_terminal(monkeypatch, terminal):
    """On an 80-column terminal the record of removed partitions is a few lines each, nothing cut
    (the table folded its archive URI and sha256 over some 15 lines); piped, one full line each."""
    import io

    from partman.status import render

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    monkeypatch.setenv("COLUMNS", "80")
    doc = _status_doc_with_archives((2014, 2015))
    out = Out()
    render(doc, file=out)
    text = out.getvalue()
    section = text[text.index("removed partitions"):].splitlines()[1:]
    for r in doc["tables"][0]["removals"]:
        lines = [line for line in section if r["partition_name"] in line or r["archive_sha256"] in line]
        assert any(r["archive_uri"] in line for line in section), text  # whole, on one line
        assert any(r["archive_sha256"] in line for line in lines), text
        assert any(f"{r['min_id']} .. {r['max_id']}" in line for line in section), text
    if terminal:
        assert len(section) <= 4 * len(doc["tables"][0]["removals"]), text
        assert all(len(line) <= 80 for line in section if "s3://" not in line), text
    else:
        assert len(section) == len(doc["tables"][0]["removals"]), text


@pytest.mark.parametrize("value, expected", [("verbose", None), ("trace", None), ("INFO", "info"), ("warning", "warning")])
def test_the_log_level_is_one_partman_knows(monkeypatch, value, expected):
    monkeypatch.setenv("PARTMAN_LOG_LEVEL", value)
    if expected is None:
        with pytest.raises(UsageError, match=f"'{value}' is not a log level: use one of debug, info, warning, error"):
            load_settings({}, None)
    else:
        assert load_settings({}, None).log_level == expected


def test_a_misspelt_partman_variable_is_warned_about_naming_the_closest(monkeypatch, capsys):
    """pydantic-settings ignores a PARTMAN_* variable it does not know (a config file's unknown key
    is refused): partman warns, naming the variable it probably meant, never its value. Every
    variable the README, the contract, the tests and the benchmarks use is known."""
    from partman import cli
    from partman.settings import ENV_ALIASES, Settings, unknown_env_variables

    known = {f"PARTMAN_{n.upper()}": "1" for n in Settings.model_fields}
    known.update({v: "1" for v in ENV_ALIASES.values()})
    known.update({"PARTMAN_CONFIG": "p.toml", "PARTMAN_FAILPOINTS": "", "PARTMAN_TEST_PG": "15",
                  "PARTMAN_TEST_DSN": "host=x", "partman_batch_size": "5", "PGHOST": "x"})
    assert unknown_env_variables(known) == []
    (warning,) = unknown_env_variables({"PARTMAN_BATCHSIZE": "5"})
    assert "PARTMAN_BATCHSIZE is not a partman setting and is ignored; did you mean PARTMAN_BATCH_SIZE?" in warning
    (warning,) = unknown_env_variables({"PARTMAN_WHATEVER": "1"})
    assert "did you mean" not in warning

    for name in list(known) + ["PARTMAN_DATABASE_URL", "PARTMAN_DSN"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARTMAN_DATABSE_URL", "postgresql://u:hunter2-not-shown@db/app")
    monkeypatch.setenv("PARTMAN_LOCK_TIMEOUT", "100")
    monkeypatch.setenv("PARTMAN_LOG_FORMAT", "json")
    capsys.readouterr()
    assert cli.main(["status", "--dsn", "host=127.0.0.1 port=1 connect_timeout=1"]) == 1  # nothing listens there
    err = capsys.readouterr().err
    warnings = [json.loads(line) for line in err.splitlines() if '"unknown_environment_variable"' in line]
    assert len(warnings) == 1 and "did you mean PARTMAN_DATABASE_URL?" in warnings[0]["message"], err
    assert "hunter2" not in err
