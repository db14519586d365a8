"""Prometheus metrics on a registry of our own (never the global one), every name prefixed
`partman_`. Process metrics (passes run by this instance, their durations) are kept in memory;
everything about tables is read from the catalog at scrape time, so every instance agrees."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import log
from .settings import Settings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _ts(v: datetime | None) -> float | None:
    if v is None:
        return None
    if v.year >= 9999:
        return float("inf")
    return v.timestamp()


class _CatalogCollector(Collector):
    """Reads the catalog at scrape time through `probe(fn)` -> (result, error)."""

    def __init__(self, settings: Settings, probe: Callable[[Callable[[psycopg.Connection], Any]], tuple[Any, str | None]],
                 leader: Callable[[], bool]) -> None:
        self.settings = settings
        self.probe = probe
        self.leader = leader

    def collect(self):  # type: ignore[override]
        leader = GaugeMetricFamily("partman_leader", "1 when this instance holds the leader lock and acts")
        leader.add_metric([], 1.0 if self.leader() else 0.0)
        yield leader
        facts, error = self.probe(self._facts)
        up = GaugeMetricFamily("partman_up", "1 when the database answers")
        up.add_metric([], 0.0 if error else 1.0)
        yield up
        healthy = GaugeMetricFamily("partman_healthy", "1 when /health would answer 200")
        read = not error and facts is not None and "scrape_error" not in facts
        # /health is 503 when the database or its catalog cannot be read: say 0 then, never nothing,
        # so an alert on partman_healthy == 0 fires during an outage too
        healthy.add_metric([], 1.0 if read and facts["health"]["status"] == "ok" else 0.0)  # type: ignore[index]
        yield healthy
        ok = GaugeMetricFamily("partman_catalog_scrape_ok", "1 when the catalog was read for this scrape")
        ok.add_metric([], 1.0 if read else 0.0)  # 0 during an outage too, never absent
        yield ok
        if error or facts is None:
            return
        if read:
            yield from self._families(facts)

    def _facts(self, conn: psycopg.Connection) -> dict[str, Any]:
        from .health import judge
        from .status import gather

        try:
            doc = gather(conn, self.settings)
            doc["health"] = judge(conn, self.settings, leader=self.leader())
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database is away: partman_up 0
        except Exception as exc:  # noqa: BLE001 - the database answers, reading the catalog failed
            msg = log.redact(" ".join(str(exc).split()))
            log.get().warning("metrics_catalog_failed", error=msg)
            return {"scrape_error": msg}
        return doc

    def _families(self, doc: dict[str, Any]):  # noqa: C901 - a flat list of metrics
        last_ok = doc.get("last_successful_maintenance")
        last = doc.get("last_maintenance")
        g = GaugeMetricFamily(
            "partman_maintenance_last_success_timestamp_seconds",
            "end of the last successful maintenance pass by any instance (catalog)",
        )
        if last_ok and last_ok.get("finished_at"):
            g.add_metric([], _ts(last_ok["finished_at"]))
        yield g
        g = GaugeMetricFamily("partman_maintenance_last_pass_ok", "1 when the last finished pass succeeded (catalog)")
        if last:
            g.add_metric([], 1.0 if last["ok"] else 0.0)
        yield g

        per_table: dict[str, GaugeMetricFamily] = {
            "ahead": GaugeMetricFamily("partman_partitions_ahead", "contiguous future partitions beyond the current one", labels=["table"]),
            "required": GaugeMetricFamily("partman_partitions_ahead_required", "premake - 1: fewer ahead is unhealthy", labels=["table"]),
            "premake": GaugeMetricFamily("partman_premake", "future partitions maintenance keeps", labels=["table"]),
            "count": GaugeMetricFamily("partman_partitions", "partitions of the table (default excluded)", labels=["table"]),
            "covered": GaugeMetricFamily("partman_covered_until_timestamp_seconds", "upper bound of contiguous coverage from now", labels=["table"]),
            "default": GaugeMetricFamily("partman_default_rows", "rows in the default partition", labels=["table"]),
            "due": GaugeMetricFamily("partman_retention_due_partitions", "partitions retention would remove now", labels=["table"]),
            "holds": GaugeMetricFamily("partman_holds", "partitions under legal hold", labels=["table"]),
            "last_run": GaugeMetricFamily("partman_table_maintenance_last_success_timestamp_seconds", "last successful maintenance of the table", labels=["table"]),
            "failed": GaugeMetricFamily("partman_table_maintenance_failed", "1 when the table's last maintenance attempt failed", labels=["table"]),
            "rows": GaugeMetricFamily("partman_rows_estimate", "estimated rows over the partitions PostgreSQL has an estimate for", labels=["table"]),
            "unknown": GaugeMetricFamily("partman_rows_estimate_unknown_partitions",
                                         "partitions PostgreSQL has no row estimate for (never analyzed, or written since an ANALYZE while empty): partman_rows_estimate leaves them out", labels=["table"]),
            "conv": GaugeMetricFamily("partman_conversion_progress_ratio", "rows copied / rows estimated of the latest conversion", labels=["table", "status", "phase"]),
            "conv_rows": GaugeMetricFamily("partman_conversion_rows_copied", "rows copied by the latest conversion", labels=["table"]),
        }
        archive_bytes = CounterMetricFamily("partman_archive_bytes", "bytes archived to object storage by retention", labels=["table"])
        archive_objects = CounterMetricFamily("partman_archive_objects", "partitions archived to object storage", labels=["table"])
        removed = CounterMetricFamily("partman_partitions_removed", "partitions removed by retention", labels=["table", "action"])
        for t in doc["tables"]:
            name = [t["table"]]
            per_table["premake"].add_metric(name, t["premake"])
            per_table["required"].add_metric(name, t["required_ahead"])
            per_table["failed"].add_metric(name, 1.0 if t["maintenance"]["last_error"] and (
                t["maintenance"]["last_run"] is None
                or (t["maintenance"]["last_attempt"] and t["maintenance"]["last_attempt"] > t["maintenance"]["last_run"])
            ) else 0.0)
            if t["maintenance"]["last_run"]:
                per_table["last_run"].add_metric(name, _ts(t["maintenance"]["last_run"]))
            if t["exists"]:
                per_table["ahead"].add_metric(name, t["partitions_ahead"])
                per_table["count"].add_metric(name, sum(1 for p in t["partitions"] if not p["default"]))
                per_table["covered"].add_metric(name, _ts(t["covered_until"]) if t["covered_until"] else 0.0)
                per_table["default"].add_metric(name, t["default_rows"] or 0)
                per_table["due"].add_metric(name, len(t["retention_due"]))
                per_table["holds"].add_metric(name, len(t["holds"]))
                per_table["rows"].add_metric(name, sum(p["rows_estimate"] for p in t["partitions"] if p["rows_estimate_known"]))
                per_table["unknown"].add_metric(name, sum(1 for p in t["partitions"] if not p["rows_estimate_known"]))
            if t["conversion"]:
                c = t["conversion"]
                per_table["conv"].add_metric([t["table"], str(c["status"]), str(c["phase"])], c["progress"])
                per_table["conv_rows"].add_metric(name, c["rows_copied"] or 0)
            archive_bytes.add_metric(name, t["archive_bytes"])
            archive_objects.add_metric(name, t["archive_objects"])
            by_action: dict[str, int] = {}
            for r in t["removals"]:
                by_action[r["action"]] = by_action.get(r["action"], 0) + 1
            for action, n in sorted(by_action.items()):
                removed.add_metric([t["table"], action], n)
        for c in doc.get("conversions_running", []):
            if not any(t["table"] == c["table"] for t in doc["tables"]):
                per_table["conv"].add_metric([c["table"], str(c["status"]), str(c["phase"])], c["progress"])
                per_table["conv_rows"].add_metric([c["table"]], c["rows_copied"] or 0)
        yield from per_table.values()
        yield archive_bytes
        yield archive_objects
        yield removed


class Metrics:
    def __init__(self, settings: Settings, probe: Callable[..., tuple[Any, str | None]], leader: Callable[[], bool]) -> None:
        prometheus_client.disable_created_metrics()  # no *_created series: they only add noise
        self.registry = CollectorRegistry(auto_describe=False)
        self.runs = Counter(
            "partman_maintenance_runs", "maintenance passes run by this instance", ["result"], registry=self.registry
        )
        for result in ("ok", "error"):
            self.runs.labels(result=result)
        self.skipped = Counter(
            "partman_maintenance_skipped", "scheduled passes skipped because the previous one was still running",
            registry=self.registry,
        )
        self.duration = Histogram(
            "partman_maintenance_duration_seconds", "duration of maintenance passes run by this instance",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600), registry=self.registry,
        )
        self.leader_changes = Counter(
            "partman_leader_transitions", "times this instance became or stopped being the leader",
            ["to"], registry=self.registry,
        )
        self.registry.register(_CatalogCollector(settings, probe, leader))

    def render(self) -> bytes:
        try:
            return log.redact(generate_latest(self.registry).decode()).encode()
        except Exception as exc:  # noqa: BLE001 - a scrape never takes the daemon down
            log.get().warning("metrics_failed", error=log.redact(str(exc)))
            return b"# metrics collection failed\npartman_up 0\n"

