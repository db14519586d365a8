"""The replicas a conversion's copy can leave behind, and how far behind each one is: every WAL
sender of this server (physical standbys and read replicas, logical subscribers) as
`pg_stat_replication` shows it.

PostgreSQL shows a WAL sender's details (its state, its `replay_lag`) only to superusers and to
members of `pg_read_all_stats` (which `pg_monitor` includes); any other role sees the row with
every column but the pid NULL. A throttle that read only NULLs would never slow down for a
replica and never say why, so the plan counts such replicas and warns.

`replay_lag` is NULL also when a replica has replayed everything and the server has been quiet
for a while: that is no lag, not a hidden one (its `state` is still readable)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg

from .plan import MAX_PAUSE


@dataclass(frozen=True)
class Replicas:
    connected: int  # WAL senders (replicas, subscribers, base backups) connected now
    hidden: int  # of them, those whose lag this role cannot read
    lags: tuple[float, ...]  # the replay lag (s) of each visible one that has a measurement

    @property
    def worst(self) -> float | None:
        return max(self.lags) if self.lags else None


def read(conn: psycopg.Connection) -> Replicas:
    rows = conn.execute(
        "SELECT state IS NULL, extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication"
    ).fetchall()
    return Replicas(connected=len(rows), hidden=sum(1 for hidden, _ in rows if hidden),
                    lags=tuple(lag for hidden, lag in rows if not hidden and lag is not None))


def lag_now(conn: psycopg.Connection) -> float | None:
    """The largest replay lag (s) this role can see now; None when no replica shows one."""
    return read(conn).worst


def _ident(name: str) -> str:
    """A role name as GRANT takes it (quoted unless it is a plain lower-case identifier)."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _replicas(n: int) -> str:
    return f"{n} replica{'' if n == 1 else 's'}"


def summary(r: Replicas, *, throttled: bool, max_lag: float) -> str | None:
    """The dry-run's line about the replicas (None when none is connected)."""
    if not r.connected:
        return None
    lags = ", ".join(f"{lag:.1f} s" for lag in sorted(r.lags, reverse=True)) if r.lags else None
    seen = (f"replay lag now {lags}" if lags else "none lagging now") if r.hidden < r.connected else "lag not readable"
    if not throttled:
        return (f"{_replicas(r.connected)} streaming from this server ({seen}); the copy does not watch their lag "
                "at this pace (only the throttle does, at --sleep > 0)")
    return (f"{_replicas(r.connected)} streaming from this server ({seen}); the throttle slows the copy while one "
            f"lags more than {max_lag:g} s (PARTMAN_THROTTLE_MAX_REPLICA_LAG)")


def warnings(r: Replicas, *, throttled: bool, max_lag: float, role: str) -> list[str]:
    """What the plan warns about the replicas, for a throttled conversion: lag this role cannot
    read, and a lag already over the limit (the throttle would crawl from the first batch)."""
    if not throttled:
        return []
    out = []
    if r.hidden:
        out.append(
            f"{_replicas(r.hidden)} stream{'s' if r.hidden == 1 else ''} from this server, but role {role} cannot "
            "read their lag (pg_stat_replication shows it only to superusers and members of pg_read_all_stats), "
            "so the throttle cannot slow the copy down when a replica falls behind: it watches only its probe "
            f"insert. To let it, GRANT pg_monitor TO {_ident(role)} (or pg_read_all_stats) before converting.")
    worst = r.worst
    if worst is not None and worst > max_lag:
        out.append(
            f"a replica already lags {worst:,.1f} s behind, over PARTMAN_THROTTLE_MAX_REPLICA_LAG ({max_lag:g} s): "
            f"the throttle would hold every pause at its longest ({MAX_PAUSE:g} s) until it catches up. A standby "
            "delayed on purpose (recovery_min_apply_delay) always lags by its delay: set "
            "PARTMAN_THROTTLE_MAX_REPLICA_LAG above that delay; otherwise let the replica catch up first.")
    return out
