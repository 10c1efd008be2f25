"""The local pool: N long-lived worker processes on this machine, a hard per-study timeout, crash containment.

Each worker process (``spawn``: no inherited threads or locks) limits its threads, loads the models once
(:func:`~CovidCTLib.batch.warmup.prepare_worker`), says it is ready, then analyses one study at a time.
The parent hands a study only to a ready, idle worker and keeps its deadline: a study past ``--timeout`` is
recorded as timed out and its worker is killed and replaced, and a worker that dies (out-of-memory killer,
crash) costs only the study it was running.
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from CovidCTLib.batch.jobs import FAILED, TIMEOUT, AnalysisOptions, Outcome, Study
from CovidCTLib.errors import CovidCTError
from CovidCTLib.progress import CancelToken

#: seconds a worker may take to start and load its models before the batch gives up on it.
STARTUP_TIMEOUT_S = 600.0


def _worker_main(conn: Connection, options: AnalysisOptions, function_ref: str, outdir: str) -> None:
    """Body of one worker process: warm up, then answer ``(study, overwrite)`` requests until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    from CovidCTLib.batch.warmup import limit_threads_env

    limit_threads_env(options.threads)
    try:
        from CovidCTLib.batch.study import execute, resolve_function
        from CovidCTLib.batch.warmup import prepare_worker

        prepare_worker(options)
        function = resolve_function(function_ref)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops the batch
        conn.send(("fatal", f"{error}" if isinstance(error, CovidCTError) else f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        study, overwrite = request
        conn.send(("outcome", execute(function, study, options, outdir, overwrite)))


@dataclass
class _Slot:
    process: Any
    conn: Connection
    ready: bool = False
    study: Study | None = None
    started: float = 0.0
    spawned: float = 0.0


class LocalPool:
    """Run studies on ``workers`` local processes; ``timeout`` seconds per study (None: no limit)."""

    def __init__(
        self,
        workers: int,
        options: AnalysisOptions,
        outdir: str,
        function_ref: str,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.workers = max(1, int(workers))
        self.options, self.outdir, self.function_ref = options, outdir, function_ref
        self.timeout = timeout
        self.cancel = cancel or CancelToken()
        self._context = multiprocessing.get_context("spawn")
        self.replaced = 0
        self.spawned_workers = 0

    def _spawn(self) -> _Slot:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child, self.options, self.function_ref, self.outdir),
            daemon=True,
            name="covidct-batch-worker",
        )
        process.start()
        child.close()
        return _Slot(process, parent, spawned=time.monotonic())

    @staticmethod
    def _stop(slot: _Slot, kill: bool) -> None:
        if kill:
            slot.process.kill()
        else:
            try:
                slot.conn.send(None)
            except OSError:
                slot.process.kill()
        slot.process.join(timeout=10)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=10)
        slot.conn.close()

    def run(self, jobs: Sequence[tuple[Study, bool]], on_outcome: Callable[[Outcome], None]) -> None:
        """Analyse every ``(study, overwrite)``; call ``on_outcome`` once per study, in completion order."""
        pending = collections.deque(jobs)
        self.spawned_workers = min(self.workers, len(pending))
        slots = [self._spawn() for _ in range(self.spawned_workers)]
        finished = False
        try:
            while pending or any(s.study is not None for s in slots):
                self.cancel.check()
                for slot in slots:
                    if slot.ready and slot.study is None and pending:
                        slot.study, overwrite = pending.popleft()
                        slot.started = time.monotonic()
                        slot.conn.send((slot.study, overwrite))
                self._wait_once(slots, on_outcome)
            finished = True
        finally:  # on cancel or error every worker is killed at once; atomic writes leave no half file
            for slot in slots:
                self._stop(slot, kill=not finished or slot.study is not None or not slot.ready)

    def _wait_once(self, slots: list[_Slot], on_outcome: Callable[[Outcome], None]) -> None:
        now = time.monotonic()
        deadlines = [s.started + self.timeout for s in slots if s.study is not None and self.timeout]
        deadlines += [s.spawned + STARTUP_TIMEOUT_S for s in slots if not s.ready]
        wait_s = min([max(0.0, d - now) for d in deadlines] + [0.5])  # 0.5 s: check cancellation often
        waitables = {s.conn: s for s in slots} | {s.process.sentinel: s for s in slots}
        ready = wait(list(waitables), timeout=wait_s)
        handled: set[int] = set()
        for item in ready:
            slot = waitables[item]
            if id(slot) in handled:
                continue
            if item is slot.conn or slot.conn.poll():
                handled.add(id(slot))
                self._receive(slots, slot, on_outcome)
            elif not slot.process.is_alive():
                handled.add(id(slot))
                self._died(slots, slot, on_outcome)
        now = time.monotonic()
        for index, slot in enumerate(slots):
            if slot.study is not None and self.timeout and now - slot.started > self.timeout:
                study, took = slot.study, now - slot.started
                slot.study = None
                self._stop(slot, kill=True)
                slots[index] = self._spawn()
                self.replaced += 1
                message = (
                    f"timed out after {took:.0f} s (--timeout {self.timeout:g}); the worker was stopped and replaced. "
                    "Raise --timeout if this study is just large."
                )
                on_outcome(Outcome(study.id, study.path, TIMEOUT, message, took, f"pid {slot.process.pid}"))
            elif not slot.ready and now - slot.spawned > STARTUP_TIMEOUT_S:
                raise CovidCTError(
                    f"a batch worker did not start within {STARTUP_TIMEOUT_S:.0f} s; check that CovidCT imports "
                    "(`covidct models`) and that the machine is not out of memory."
                )

    def _receive(self, slots: list[_Slot], slot: _Slot, on_outcome: Callable[[Outcome], None]) -> None:
        try:
            kind, payload = slot.conn.recv()
        except (EOFError, OSError):
            self._died(slots, slot, on_outcome)
            return
        if kind == "fatal":
            raise CovidCTError(f"a batch worker could not start: {payload}")
        if kind == "ready":
            slot.ready = True
            return
        slot.study = None
        on_outcome(payload)

    def _died(self, slots: list[_Slot], slot: _Slot, on_outcome: Callable[[Outcome], None]) -> None:
        code = slot.process.exitcode
        study = slot.study
        slot.study = None
        self._stop(slot, kill=True)
        slots[slots.index(slot)] = self._spawn()
        self.replaced += 1
        if study is None:
            if not slot.ready:
                raise CovidCTError(f"a batch worker exited while starting (exit code {code}); run `covidct models`.")
            return
        hint = " (killed: probably out of memory; use fewer --workers)" if code in (-9, 137) else ""
        message = f"the worker process died while analysing this study (exit code {code}){hint}."
        on_outcome(Outcome(study.id, study.path, FAILED, message, time.monotonic() - slot.started, ""))
