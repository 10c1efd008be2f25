"""Progress display for the command line: a tqdm bar on stderr, or JSON lines on stdout for callers."""

from __future__ import annotations

import json
import sys
from typing import Any

from CovidCTLib.progress import ProgressEvent


def emit_json(event: str, **fields: Any) -> None:
    """Print one JSON event line on stdout and flush (read line by line by the Slicer module)."""
    sys.stdout.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()


class JsonProgress:
    """Progress callback printing ``{"event": "progress", "step", "fraction", "message"}`` lines."""

    def __call__(self, event: ProgressEvent) -> None:
        emit_json("progress", step=event.step, fraction=event.fraction, message=event.message)

    def close(self) -> None:
        """Nothing to release."""


class BarProgress:
    """Progress callback drawing one tqdm bar (0-100 %) on stderr with the current step as text."""

    def __init__(self, enabled: bool = True) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=100,
            unit="%",
            file=sys.stderr,
            disable=not enabled,
            leave=False,
            bar_format="{l_bar}{bar}| {elapsed}",
        )
        self._done = 0

    def __call__(self, event: ProgressEvent) -> None:
        target = int(round(event.fraction * 100))
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target
        self._bar.set_description_str(event.message or event.step, refresh=True)

    def close(self) -> None:
        self._bar.close()
