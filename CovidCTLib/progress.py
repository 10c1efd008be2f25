"""Progress reporting and cancellation shared by the engine, the CLI and the Slicer module."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from CovidCTLib.errors import CancelledError


@dataclass
class ProgressEvent:
    """One progress update: a step name, overall fraction done (0..1) and a human message."""

    step: str
    fraction: float
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe flag checked between steps; :meth:`check` raises :class:`CancelledError` once set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise CancelledError("Cancelled by the user; no output was written for the unfinished step.")


class Reporter:
    """Maps named steps with weights onto one 0..1 progress scale and forwards to a callback."""

    def __init__(
        self,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.callback = callback
        self.cancel = cancel or CancelToken()
        self._start = 0.0
        self._span = 1.0

    def stage(self, step: str, start: float, end: float, message: str = "") -> None:
        """Enter a stage covering [start, end] of the whole job."""
        self.cancel.check()
        self._start, self._span = start, max(end - start, 0.0)
        self._emit(step, start, message)

    def update(self, step: str, fraction_of_stage: float, message: str = "") -> None:
        """Report progress inside the current stage."""
        self.cancel.check()
        self._emit(step, self._start + self._span * min(max(fraction_of_stage, 0.0), 1.0), message)

    def _emit(self, step: str, fraction: float, message: str) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(step, round(fraction, 4), message))
