"""Progress of a conversion: a rich progress bar on a terminal (stderr); structured log lines
with the same figures (rows, rate, ETA, phase) when stderr is not a terminal: the copy's rows,
then the verification's (rows of the original compared). A paced phase adds its pace: the
pause after each batch or range, what stretched it (the application's probe, a replica's lag)
and the replicas' lag, so a DBA watching a slow conversion sees why it is slow. The same figures
(figures()) go to the catalog's conversion row (its `pace`), for `partman status` elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from .. import log


class Progress:
    def __init__(self, total: int, table: str) -> None:
        self.total = max(total, 1)
        self.table = table
        self.phase = "copy"
        self.started = time.monotonic()
        self.start_rows = 0
        self.last_log = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._pacing: Callable[[], dict[str, Any]] | None = None
        self._figures: dict[str, Any] = {}
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.fields[phase]}[/bold] {task.fields[table]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[pace]}"),
                console=Console(file=sys.stderr),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("copy", total=self.total, phase=self.phase, table=self.table, rate="-",
                                            pace="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def begin(self, rows_done: int) -> None:
        self.start_rows = rows_done
        self.started = time.monotonic()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._pacing = None  # each phase's throttle is its own (watch)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, phase=phase)
        log.get().info("phase", table=self.table, phase=phase)

    def watch(self, pacing: Callable[[], dict[str, Any]]) -> None:
        """Show this pace (throttle.Throttle.pacing) with the phase's progress until the next phase."""
        self._pacing = pacing

    def _pace(self) -> dict[str, Any]:
        return self._pacing() if self._pacing is not None else {}

    @staticmethod
    def pace_text(pace: dict[str, Any]) -> str:
        """The bar's pace column: "pause 0.10 s", "pause 1.64 s (replica 12.3 s behind)"."""
        if "pause_s" not in pace:
            return ""
        why = pace.get("slowed_by")
        text = f"pause {pace['pause_s']:.2f} s"
        if why == "replica":
            return text + f" (replica {pace.get('replica_lag_s', 0):.1f} s behind)"
        return text + (" (application slower)" if why == "application" else "")

    def figures(self) -> dict[str, Any]:
        """The phase's figures at the last update (for the catalog): phase, rows, total_estimate,
        rows_per_s, eta_s and the pace; empty before the first."""
        return self._figures

    def update(self, rows_done: int, batch_ms: float | None = None) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (rows_done - self.start_rows) / elapsed
        total = max(self.total, rows_done)
        eta = (total - rows_done) / rate if rate > 0 else None
        pace = self._pace()
        self._figures = {"phase": self.phase, "rows": rows_done, "total_estimate": total, "rows_per_s": round(rate),
                         "eta_s": round(eta, 1) if eta is not None else None, **pace}
        if self._bar is not None:
            self._bar.update(self._task, completed=rows_done, total=total, rate=f"{rate:,.0f}",
                             pace=self.pace_text(pace))
            return
        now = time.monotonic()
        if now - self.last_log >= 2.0:
            self.last_log = now
            log.get().info("progress", table=self.table, **self._figures,
                           batch_ms=round(batch_ms, 1) if batch_ms is not None else None)
