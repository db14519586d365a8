"""structlog setup: JSON lines off a terminal, readable lines on one, always on stderr;
every known secret (the DSN's password, AWS secrets) is redacted from every event."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog
from psycopg.conninfo import conninfo_to_dict

_secrets: set[str] = set()
_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]+)(@)")
# a key=value password as libpq reads it: quoted ('...' with backslash escapes; unterminated: to the
# end), or up to the next blank (backslash escapes too), leaving out trailing quotes that close the
# text around it (a message that quotes the whole DSN: 'host=x password=pw')
_KV_PASSWORD = re.compile(
    r"""(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|(?:\\.|\S)+?(?=['"]*(?:\s|$)))""", re.IGNORECASE
)


def add_secret(value: str | None) -> None:
    """Register a value that must never be printed."""
    if value and len(value) >= 3:
        _secrets.add(value)


_URI_SCHEME = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
# a key=value password as written, to the next `key=` or the end: libpq stops at a blank in an
# unquoted value and quotes the rest in its error ('missing "=" after "rest"')
_KV_PASSWORD_WRITTEN = re.compile(r"password\s*=\s*(.*?)(?=\s+\w+\s*=|\s*$)", re.IGNORECASE | re.DOTALL)
_PIECES = re.compile(r"[\s@/:'\"]+")
MIN_PIECE = 4  # pieces of a written password shorter than this are not redacted apart (too common)


def _written_passwords(dsn: str) -> list[str]:
    """A password as written in a DSN that libpq may misread (a blank, a second '@'): in a URI all
    between `user:` and the last '@' before the query; in key=value all up to the next key."""
    out: list[str] = []
    m = _URI_SCHEME.match(dsn)
    if m:
        rest = dsn[m.end():].split("?", 1)[0]
        userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
        if ":" in userinfo:
            out.append(userinfo.split(":", 1)[1])
    else:
        out += [w.group(1).strip().strip("'") for w in _KV_PASSWORD_WRITTEN.finditer(dsn)]
    return out


def add_dsn_secret(dsn: str | None) -> None:
    """Register a connection string's password, as libpq reads it and as written, whole and in
    pieces: libpq quotes the written form, or a piece of it, in its error for a DSN it misreads
    (a '%' that starts no escape, a blank, an '@' in the password: 'failed to resolve host
    "rest@host"')."""
    if not dsn:
        return
    try:
        add_secret(conninfo_to_dict(dsn).get("password"))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - not parseable: the written forms below still count
        pass
    for m in _URI_PASSWORD.finditer(dsn):
        add_secret(m.group(2))
    for m in _KV_PASSWORD.finditer(dsn):
        add_secret(m.group(2).strip("'"))
    for written in _written_passwords(dsn):
        add_secret(written)
        for piece in _PIECES.split(written):
            if len(piece) >= MIN_PIECE:
                add_secret(piece)


def register_env_secrets() -> None:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD"):
        add_secret(os.environ.get(name))


def redact(text: str) -> str:
    """Remove registered secrets and any password inside a DSN from text."""
    if not isinstance(text, str):
        return text
    for s in sorted(_secrets, key=len, reverse=True):  # first: a pattern below may cut a secret apart
        if s in text:
            text = text.replace(s, "***")
    text = _URI_PASSWORD.sub(r"\1***\3", text)
    return _KV_PASSWORD.sub(r"\1***", text)


def _redact_processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def configure(fmt: str = "auto", level: str = "info") -> None:
    register_env_secrets()
    # psycopg's own warnings (such as "error ignored terminating <psycopg.Pipeline [BAD]>" after a
    # lost connection, which partman reports itself) would reach stderr through logging's last
    # resort, unformatted and unredacted
    psycopg_logger = logging.getLogger("psycopg")
    if not any(isinstance(h, logging.NullHandler) for h in psycopg_logger.handlers):
        psycopg_logger.addHandler(logging.NullHandler())
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str = "partman") -> Any:
    return structlog.get_logger(name)
