"""Run ``covidct analyze --json-progress`` in a background process and follow it without blocking.

The Slicer module polls :meth:`BackgroundAnalysis.poll` from a Qt timer; tests poll it in a loop. The
process starts in its own session/process group so that :meth:`BackgroundAnalysis.cancel` ends the whole
process tree (worker processes of torch/monai included); on Windows ``taskkill /T`` does the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import CovidCTError, InputError

LIBRARY_ROOT = Path(__file__).resolve().parents[2]


def python_executable() -> str:
    """The Python that runs the engine: Slicer's own (``PythonSlicer``) inside Slicer, else this one."""
    exe = Path(sys.executable) if sys.executable else None
    if exe is not None and exe.is_file() and "python" in exe.name.lower():
        return str(exe)
    launcher = shutil.which("PythonSlicer") or shutil.which("python3") or shutil.which("python")
    if launcher is None:
        raise CovidCTError("No Python interpreter found to run the analysis; reinstall Slicer/CovidCT.")
    return launcher


def analyze_command(
    input_path: str | os.PathLike,
    outdir: str | os.PathLike,
    method: str = "auto",
    device: str = "auto",
    python: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one background analysis (no HTML/PDF/DICOM SEG: those are written on demand)."""
    return [
        python or python_executable(),
        "-m",
        "CovidCTLib.cli",
        "analyze",
        str(input_path),
        "-o",
        str(outdir),
        "--method",
        method,
        "--device",
        device,
        "--overwrite",
        "--json-progress",
        "--no-report",
        "--no-dicom-seg",
        *extra,
    ]


class BackgroundAnalysis:
    """One running engine process; events are read by a thread and handed out by :meth:`poll`."""

    def __init__(self, command: Sequence[str], cwd: str | os.PathLike | None = None) -> None:
        self.command = list(command)
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.returncode: int | None = None
        self.cancelled = False
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LIBRARY_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            cwd=cwd,
            env=env,
            **kwargs,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "message": line}
            if not isinstance(event, dict):
                event = {"event": "log", "message": line}
            self._queue.put(event)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call; sets :attr:`returncode` once the process and its output ended."""
        new: list[dict[str, Any]] = []
        while True:
            try:
                new.append(self._queue.get_nowait())
            except queue.Empty:
                break
        code = self.process.poll()
        if code is not None and not any(t.is_alive() for t in self._threads):
            while not self._queue.empty():
                new.append(self._queue.get_nowait())
            self.returncode = code
        self.events.extend(new)
        return new

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> list[dict[str, Any]]:
        """Block until the process ended (tests and scripts); returns every event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the analysis did not finish within {timeout} s and was stopped")
            time.sleep(interval)
        return self.events

    def done_event(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == "done"), None)

    def error_message(self) -> str | None:
        """The engine's error message, or the end of stderr when it failed without one."""
        for event in reversed(self.events):
            if event.get("event") == "error":
                return str(event.get("message") or "the analysis failed")
        if self.finished and self.returncode != 0:
            if self.cancelled:
                return "Cancelled by the user."
            tail = "\n".join(list(self.stderr_tail)[-8:])
            return f"The analysis process ended with exit code {self.returncode}.\n{tail}".strip()
        return None

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the whole process tree: SIGTERM to the group, SIGKILL after ``grace_s``."""
        if self.process.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        else:
            pgid = os.getpgid(self.process.pid)
            _killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
            _killpg(pgid, signal.SIGKILL)
        self.process.wait()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def read_outputs(outdir: str | os.PathLike) -> tuple[sitk.Image, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read what ``covidct analyze`` wrote: (lungs image, lungs array, infection array, report dict)."""
    outdir = Path(outdir)
    paths = {name: outdir / name for name in ("lungs.nii.gz", "infection.nii.gz", "report.json")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"The analysis did not write {', '.join(missing)}; run it again.")
    lungs_image = sitk.ReadImage(str(paths["lungs.nii.gz"]))
    infection_image = sitk.ReadImage(str(paths["infection.nii.gz"]))
    report = json.loads(paths["report.json"].read_text(encoding="utf-8"))
    lungs = sitk.GetArrayFromImage(lungs_image).astype(np.uint8)
    infection = sitk.GetArrayFromImage(infection_image).astype(np.uint8)
    return lungs_image, lungs, infection, report
