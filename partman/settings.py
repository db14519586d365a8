"""Settings: CLI flag > env `PARTMAN_<NAME>` > TOML file (`--config` / `PARTMAN_CONFIG`) > default."""

from __future__ import annotations

import os
import socket
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .durations import parse_duration
from .intervals import INTERVALS, zone
from .errors import UsageError

_config_file: Path | None = None

# settings whose flag has another name: PARTMAN_<FLAG> is read too (below PARTMAN_<NAME> when both are set)
ENV_ALIASES = {"database_url": "PARTMAN_DSN", "lock_timeout_ms": "PARTMAN_LOCK_TIMEOUT"}
# PARTMAN_* variables that are no setting but are read elsewhere: the config file (load_settings), the
# failpoints (partman.failpoints), and the test suite's and benchmarks' own (PARTMAN_TEST_*)
OTHER_ENV = ("PARTMAN_CONFIG", "PARTMAN_FAILPOINTS", "PARTMAN_TEST_PG", "PARTMAN_TEST_DSN")
OTHER_ENV_PREFIXES = ("PARTMAN_TEST_",)
LOG_LEVELS = ("debug", "info", "warning", "error")


class _EnvAliases(PydanticBaseSettingsSource):
    """The flag-named variables of ENV_ALIASES (`--lock-timeout`: PARTMAN_LOCK_TIMEOUT); case-insensitive
    like pydantic-settings' own environment source."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        return {name: env[var] for name, var in ENV_ALIASES.items() if var in env}


class Settings(BaseSettings):
    """Every setting partman reads. The README's settings table is generated from these fields."""

    model_config = SettingsConfigDict(env_prefix="PARTMAN_", extra="ignore", validate_default=True)

    database_url: SecretStr = Field(
        SecretStr(""), description="libpq URI or key=value string; empty falls back to PG* variables"
    )
    catalog_schema: str = Field("partman_catalog", description="schema holding partman's own catalog")
    timezone: str = Field("UTC", description="time zone that partition bounds are aligned to")
    lock_timeout_ms: int = Field(500, ge=1, le=2_147_483_647, description="lock_timeout of every DDL on a live table, per attempt")
    lock_retries: int = Field(30, ge=1, description="attempts per DDL before giving up cleanly")
    batch_size: int = Field(10000, ge=1, description="rows per copy batch (convert)")
    sleep: float = Field(0.1, ge=0, description="seconds to sleep between copy batches (convert)")
    throttle: bool = Field(True, description="adaptive throttle between copy batches when --sleep > 0 (convert)")
    throttle_ratio: float = Field(1.3, gt=1, description="throttle: slow down when over 1% of probe inserts take longer than this x their idle p99")
    throttle_max_replica_lag: float = Field(10.0, gt=0, description="throttle: slow down while a replica's replay_lag (any WAL sender's: standby, read replica, subscriber) exceeds these seconds; needs pg_read_all_stats or pg_monitor")
    convert_workers: int = Field(0, ge=0, le=8, description="connections a conversion at --sleep 0 builds indexes on after the copy (a paced one creates them before it); the copy and the verification use at most 2; 0: 2 at --sleep 0, else 1")
    premake: int = Field(3, ge=0, le=1000, description="future partitions kept beyond the current one")
    interval: str = Field("year", description="partition interval of a conversion (convert; register takes --interval)")
    retention: str | None = Field(None, description="retention a conversion or a registration records, a PostgreSQL interval such as '10 years'; unset: keep forever (convert, register)")
    retention_action: Literal["drop", "detach", "archive"] | None = Field(None, description="what retention does: drop, detach or archive; unset: drop (convert, register)")
    drop_old_after: str | None = Field(None, description="the daemon drops <table>_old this long after a verified swap, e.g. 7d; unset: never (convert)")
    maintenance_interval: timedelta = Field(timedelta(hours=1), description="time between maintenance passes")
    health_host: str = Field("0.0.0.0", description="address the daemon's HTTP server binds")
    health_port: int = Field(8080, ge=0, le=65535, description="port of /health, /livez, /metrics")
    archive_bucket: str = Field("", description="S3 bucket for retention archives")
    archive_prefix: str = Field("partman/", description="key prefix inside the bucket")
    archive_sse: str = Field("", description="ServerSideEncryption for uploads (AES256 or aws:kms); empty: bucket default")
    archive_kms_key_id: str = Field("", description="KMS key id when archive_sse is aws:kms")
    archive_checksum_mode: Literal["when_supported", "when_required"] = Field(
        "when_supported", description="boto3 request_checksum_calculation"
    )
    archive_part_size_mb: int = Field(16, ge=5, description="multipart part size (MiB); bounds archive memory")
    retention_schema: str = Field("", description="schema that detached partitions are moved to (empty: stay)")
    instance_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}",
        description="name this instance records in the catalog",
    )
    log_format: Literal["auto", "json", "console"] = Field("auto", description="auto: JSON off a terminal")
    log_level: str = Field("info", description="debug, info, warning, error")
    debug: bool = Field(False, description="print tracebacks on failure")

    @field_validator("maintenance_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        d = parse_duration(v)
        if d <= timedelta(0):
            raise ValueError(f"{v!r} must be a positive duration, such as 1h or 15m")
        return d

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if v not in INTERVALS:
            raise ValueError(f"{v!r} is not one of {', '.join(INTERVALS)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)  # ValueError: unknown time zone
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.strip().lower() not in LOG_LEVELS:
            raise ValueError(f"{v!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
        return v.strip().lower()

    @field_validator("catalog_schema")
    @classmethod
    def _catalog(cls, v: str) -> str:
        if not v.strip() or v.startswith("pg_") or v == "information_schema":
            raise ValueError(f"{v!r} cannot hold partman's catalog: give a schema name of its own, such as partman_catalog")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _EnvAliases(settings_cls)]
        if _config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_config_file))
        return tuple(sources)

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()


def load_settings(cli: dict[str, Any] | None = None, config_file: str | None = None) -> Settings:
    """Build settings; `cli` holds only the flags the user actually gave."""
    global _config_file
    path = config_file or os.environ.get("PARTMAN_CONFIG") or None
    if path is not None and not Path(path).is_file():
        raise UsageError(f"The config file {path!r} does not exist. Pass an existing TOML file to --config or PARTMAN_CONFIG.")
    _config_file = Path(path) if path else None
    if _config_file is not None:
        _check_config_keys(_config_file)
    try:
        return Settings(**{k: v for k, v in (cli or {}).items() if v is not None})
    except Exception as exc:  # pydantic ValidationError or TOML error
        raise UsageError(f"Invalid setting: {_short_validation(exc)}. Check the flag, the PARTMAN_* variable or the config file.") from None
    finally:
        _config_file = None


def unknown_env_variables(environ: dict[str, str] | None = None) -> list[str]:
    """Warnings, one per PARTMAN_* variable in the environment that partman does not read (a typo:
    pydantic-settings ignores it, where an unknown config file key is refused), naming the closest
    variable it does read. Names only: a value may hold a password."""
    import difflib

    known = [f"PARTMAN_{name.upper()}" for name in Settings.model_fields] + list(ENV_ALIASES.values()) + list(OTHER_ENV)
    out = []
    for var in sorted(environ if environ is not None else os.environ):
        name = var.upper()  # pydantic-settings reads the variables case-insensitively
        if not name.startswith("PARTMAN_") or name in known or name.startswith(OTHER_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(name[len("PARTMAN_"):], [k[len("PARTMAN_"):] for k in known], n=1, cutoff=0.6)
        out.append(f"The environment variable {var} is not a partman setting and is ignored"
                   + (f"; did you mean PARTMAN_{close[0]}?" if close else ".")
                   + " The variables partman reads are in the README's settings table.")
    return out


def _check_config_keys(path: Path) -> None:
    """A key the settings do not know (a typo) is an error, not silently ignored."""
    try:
        keys = set(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"The config file {str(path)!r} is not valid TOML: {exc}. Fix it or pass another file.") from None
    unknown = sorted(keys - set(Settings.model_fields))
    if unknown:
        raise UsageError(
            f"The config file {str(path)!r} has unknown setting(s): {', '.join(unknown)}. The keys are the "
            "README's settings table's TOML keys (the PARTMAN_* names in lower case, without the prefix)."
        )


def _short_validation(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ()))
            msg = str(e.get("msg"))
            parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")  # a validator's own message is the reason
        return "; ".join(parts)
    return str(exc)


def settings_table() -> str:
    """The README's settings table (a test checks the README carries exactly this)."""
    rows = ["| env | TOML key | default | meaning |", "|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        if name == "instance_name":
            default = "`<host>:<pid>`"
        elif name == "maintenance_interval":
            default = "`1h`"
        elif isinstance(f.default, SecretStr):
            default = "(empty)"
        else:
            default = f"`{f.default}`" if f.default not in ("", None) else "(empty)"
        env = f"`PARTMAN_{name.upper()}`" + (f" (or `{ENV_ALIASES[name]}`)" if name in ENV_ALIASES else "")
        rows.append(f"| {env} | `{name}` | {default} | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
