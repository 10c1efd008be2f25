"""Batch progress: one overall bar with ETA on stderr, or one JSON line per finished study (``--json-progress``)."""

from __future__ import annotations

import sys
import time

from CovidCTLib.batch.jobs import Outcome
from CovidCTLib.cli_progress import emit_json


class BatchProgress:
    """Counts finished studies; draws a tqdm bar (ETA from the rate so far) or prints JSON lines."""

    def __init__(self, total: int, json_lines: bool = False, bar: bool | None = None) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.json_lines = json_lines
        self._started = time.monotonic()
        self._bar = None
        if not json_lines:
            from tqdm import tqdm

            enabled = sys.stderr.isatty() if bar is None else bar
            self._bar = tqdm(total=total, unit="study", file=sys.stderr, disable=not enabled, desc="covidct batch")

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first study)."""
        if not self.done:
            return None
        elapsed = time.monotonic() - self._started
        return round(elapsed / self.done * (self.total - self.done), 1)

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        self.failed += not outcome.succeeded
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
