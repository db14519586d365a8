"""Command line: parse, build settings, hand over to the command; map errors to exit codes
(0 success, 1 failure, 2 usage). Nothing else lives here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any

import psycopg

from . import __version__, db, entry, log
from .errors import PartmanError, sentences
from .intervals import INTERVALS
from .settings import load_settings, unknown_env_variables

# command -> (module, function); imported lazily so one command's dependencies never slow another
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("partman.convert.run", "cli_convert"),
    "revert": ("partman.convert.revert", "cli_revert"),
    "register": ("partman.lifecycle.registry", "cli_register"),
    "unregister": ("partman.lifecycle.registry", "cli_unregister"),
    "maintain": ("partman.lifecycle.maintain", "cli_maintain"),
    "hold": ("partman.lifecycle.holds", "cli_hold"),
    "release": ("partman.lifecycle.holds", "cli_release"),
    "restore": ("partman.lifecycle.restore", "cli_restore"),
    "run": ("partman.daemon", "cli_run"),
    "status": ("partman.status", "cli_status"),
    "demo": ("partman.demo", "cli_demo"),
}

# flag dest -> settings field
SETTING_FLAGS = {
    "dsn": "database_url",
    "lock_timeout": "lock_timeout_ms",
    "batch_size": "batch_size",
    "sleep": "sleep",
    "premake": "premake",
    "timezone": "timezone",
    "interval": "interval",
    "retention": "retention",
    "retention_action": "retention_action",
    "drop_old_after": "drop_old_after",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: exit 2, one paragraph
        # argparse quotes the offending value, which may be a --dsn (or a password) in the wrong place
        sys.stderr.write(log.redact(f"{self.format_usage()}partman: error: {message}\n"))
        raise SystemExit(2)


def _register_secrets(argv: list[str]) -> None:
    """Before parsing: every password the command line or the environment holds, so that no
    message (a usage error echoes argv) can print it."""
    log.register_env_secrets()
    for name in ("PARTMAN_DATABASE_URL", "PARTMAN_DSN"):
        log.add_dsn_secret(os.environ.get(name))
    for arg in argv:
        log.add_dsn_secret(arg)
        if arg.startswith("-") and "=" in arg:  # --dsn=...
            log.add_dsn_secret(arg.partition("=")[2])


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection and output")
    g.add_argument("--dsn", help="libpq URI or key=value string (default: PARTMAN_DATABASE_URL, then PG* variables)")
    g.add_argument("--config", help="TOML settings file (default: PARTMAN_CONFIG)")
    g.add_argument("--debug", action="store_true", default=None, help="print tracebacks on failure")


def _retention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retention", help="keep partitions this long, a PostgreSQL interval such as '10 years'")
    p.add_argument("--retention-action", choices=["drop", "detach", "archive"], help="what retention does (default drop)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="partman", description="PostgreSQL partition lifecycle manager.")
    parser.add_argument("--version", action="version", version=f"partman {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="turn a live table into range partitions, online")
    p.add_argument("table")
    p.add_argument("--column", required=True, help="partition key: a timestamptz, timestamp or date column")
    p.add_argument("--interval", choices=INTERVALS, help="partition interval (default year)")
    p.add_argument("--batch-size", type=int, help="rows per copy batch (default 10000)")
    p.add_argument("--sleep", type=float, help="seconds between copy batches (default 0.1)")
    p.add_argument("--premake", type=int, help="future partitions beyond the current one (default 3)")
    _retention(p)
    p.add_argument("--lock-timeout", type=int, metavar="MS", help="lock_timeout per swap attempt (default 500)")
    p.add_argument("--timezone", help="time zone partition bounds are aligned in (default UTC)")
    p.add_argument("--drop-old-after", help="let the daemon drop <table>_old this long after a verified swap")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print the result (or the plan) as one JSON document")
    _common(p)

    p = sub.add_parser("revert", help="swap back to <table>_old, carrying rows written since the swap")
    p.add_argument("table")
    p.add_argument("--lock-timeout", type=int, metavar="MS")
    p.add_argument("--yes", action="store_true")
    _common(p)

    p = sub.add_parser("register", help="adopt an already range-partitioned table for maintenance")
    p.add_argument("table")
    p.add_argument("--column", required=True)
    p.add_argument("--interval", choices=INTERVALS, required=True)
    p.add_argument("--premake", type=int)
    _retention(p)
    p.add_argument("--retention-schema", help="schema detached partitions are moved to")
    p.add_argument("--timezone")
    p.add_argument("--json", action="store_true", help="print the registration (and what it does at once) as one JSON document")
    _common(p)

    p = sub.add_parser("unregister", help="stop managing a table (changes no data)")
    p.add_argument("table")
    _common(p)

    p = sub.add_parser("maintain", help="one maintenance pass over every registered table")
    p.add_argument("--json", action="store_true")
    p.add_argument("--lock-timeout", type=int, metavar="MS")
    _common(p)

    p = sub.add_parser("hold", help="put a partition under legal hold")
    p.add_argument("partition")
    p.add_argument("--reason", required=True)
    _common(p)

    p = sub.add_parser("release", help="release a legal hold")
    p.add_argument("partition")
    _common(p)

    p = sub.add_parser("restore", help="bring an archived partition back from S3")
    p.add_argument("table")
    p.add_argument("partition")
    p.add_argument("--attach", action="store_true", help="re-attach it to the table")
    _common(p)

    p = sub.add_parser("run", help="the daemon: maintenance on a schedule, /health, /livez, /metrics")
    _common(p)

    p = sub.add_parser("status", help="partitions, coverage, default rows, retention, holds, removals, conversions")
    p.add_argument("table", nargs="?")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("demo", help="a self-contained demonstration on a throwaway PostgreSQL")
    p.add_argument("--keep", action="store_true", help="leave the server running and print its DSN")
    p.add_argument("--rows", type=int, default=200_000, help="rows in the seeded ledger")
    _common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    _register_secrets(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    advising = False  # whether this call set the SIGTERM handler (partman.entry), to be taken off at the end
    try:
        cli_values: dict[str, Any] = {}
        for flag, field in SETTING_FLAGS.items():
            if getattr(args, flag, None) is not None:
                cli_values[field] = getattr(args, flag)
        if debug:
            cli_values["debug"] = True
        settings = load_settings(cli_values, getattr(args, "config", None))
        debug = settings.debug
        db.check_dsn(settings.dsn)
        log.configure(settings.log_format, "debug" if debug else settings.log_level)
        for warning in unknown_env_variables():
            log.get().warning("unknown_environment_variable", message=warning)
        module, func = COMMANDS[args.command]
        command = getattr(importlib.import_module(module), func)
        if args.command != "run":  # the daemon takes a signal received while starting over itself
            advising = entry.release()  # start-up is over: such a signal acts now, as it would have (partman.entry)
        return int(command(settings, args) or 0)
    except PartmanError as exc:
        _fail(str(exc), debug)
        return exc.exit_code
    except psycopg.Error as exc:
        diag = getattr(exc, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or str(exc).strip()
        hint = f" Hint: {sentences(diag.message_hint)}" if diag is not None and diag.message_hint else ""
        _fail(f"PostgreSQL error: {sentences(primary)}{hint} Nothing further was changed; fix the cause and run the command again.", debug)
        return 1
    except KeyboardInterrupt:
        _fail(f"Interrupted. {entry.ADVICE}", debug)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        _fail(f"Unexpected error: {type(exc).__name__}: {exc}. Run again with --debug for the traceback, and report it.", debug)
        return 1
    finally:
        if advising:
            entry.done()


def _fail(message: str, debug: bool) -> None:
    if debug:
        sys.stderr.write(log.redact(traceback.format_exc()))
    sys.stderr.write("partman: " + log.redact(" ".join(message.split())) + "\n")


def confirm(question: str, assume_yes: bool, details: str = "") -> bool:
    """Ask only on a terminal; off a terminal never prompt (the caller decides). `details` (what is
    being confirmed) and the question go to stderr, never stdout: results (a --json document, a file
    stdout is redirected to) must not carry them. The answer is read from stdin."""
    if assume_yes or not sys.stdin.isatty():
        return True
    if details:
        sys.stderr.write(details.rstrip("\n") + "\n")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:  # end of input: no
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


if __name__ == "__main__":
    sys.exit(main())
