"""Batch progress: one overall bar with ETA on stderr, or one JSON line per finished study (``--json-progress``)."""

from __future__ import annotations

import sys
import time

from CovidCTLib.batch.jobs import Outcome
from CovidCTLib.cli_progress import emit_json


class BatchProgress:
    """Counts finished studies; draws a tqdm bar, prints one log line per study, or prints JSON lines.

    Outcomes that took no time (already complete with ``--resume``, refused at discovery) count as done but
    not into the rate the ETA is computed from. Without a terminal (a log file) one line per study is written.
    """

    def __init__(self, total: int, json_lines: bool = False, bar: bool | None = None) -> None:
        self.total, self.done, self.failed, self.instant = total, 0, 0, 0
        self.json_lines = json_lines
        self._started: float | None = None
        self._bar = None
        self._log_lines = False
        if not json_lines:
            from tqdm import tqdm

            enabled = sys.stderr.isatty() if bar is None else bar
            self._log_lines = not enabled
            self._bar = tqdm(total=total, unit="study", file=sys.stderr, disable=not enabled, desc="covidct batch")

    def eta_s(self) -> float | None:
        """Seconds left at the rate of the studies analysed so far (None before the first one)."""
        ran = self.done - self.instant
        if not ran or self._started is None:
            return None
        elapsed = time.monotonic() - self._started
        return round(elapsed / ran * (self.total - self.done), 1)

    def __call__(self, outcome: Outcome) -> None:
        if self._started is None:
            self._started = time.monotonic() - outcome.seconds
        self.done += 1
        self.instant += outcome.seconds == 0.0
        self.failed += not outcome.succeeded
        if self._log_lines:
            eta = self.eta_s()
            sys.stderr.write(
                f"[{self.done}/{self.total}] {outcome.id}: {outcome.status} ({outcome.seconds:.1f} s)"
                + (f" - {outcome.message[:200]}" if outcome.message and not outcome.succeeded else "")
                + ("" if eta is None else f"; ETA {eta:.0f} s")
                + "\n"
            )
            sys.stderr.flush()
        if self.json_lines:
            emit_json(
                "study",
                id=outcome.id,
                status=outcome.status,
                message=outcome.message,
                seconds=round(outcome.seconds, 3),
                done=self.done,
                total=self.total,
                failed=self.failed,
                eta_s=self.eta_s(),
            )
        elif self._bar is not None:
            self._bar.set_postfix_str(f"failed {self.failed}" if self.failed else "", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
