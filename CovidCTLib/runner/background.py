"""Run ``covidct analyze --json-progress`` in a background process and follow it without blocking.

The Slicer module polls :meth:`BackgroundAnalysis.poll` from a Qt timer; tests poll it in a loop. The
process starts in its own session/process group so that :meth:`BackgroundAnalysis.cancel` ends the whole
process tree (worker processes of torch/monai included); on Windows ``taskkill /T`` does the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
    if exe is not None:  # an application binary: PythonSlicer lives beside it (or in ../bin)
        for folder in (exe.parent, exe.parent.parent / "bin"):
            for name in ("PythonSlicer", "PythonSlicer.exe"):
                if (folder / name).is_file():
                    return str(folder / name)
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
    """One running engine process, followed by polling its output files (no threads, no pipes).

    stdout (the JSON event lines) and stderr go to files in ``logdir``; :meth:`poll` reads the complete
    lines added since the last call. Nothing here needs Python threads (which only run intermittently
    inside Slicer's embedded interpreter) and a chatty process can never block on a full pipe.
    """

    def __init__(
        self,
        command: Sequence[str],
        cwd: str | os.PathLike | None = None,
        logdir: str | os.PathLike | None = None,
    ) -> None:
        self.command = list(command)
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.returncode: int | None = None
        self.cancelled = False
        self.started = time.monotonic()
        self._own_logdir = logdir is None
        self.logdir = Path(logdir) if logdir is not None else Path(tempfile.mkdtemp(prefix="covidct-job-"))
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.logdir / "events.jsonl"
        self.stderr_path = self.logdir / "stderr.txt"
        self._offset = 0
        self._partial = b""
        self._kill_at: float | None = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LIBRARY_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env, **kwargs
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _read_new_lines(self) -> list[str]:
        with open(self.stdout_path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").strip() for line in lines]

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call; sets :attr:`returncode` once the process has ended."""
        self._escalate()
        code = self.process.poll()  # before reading, so that nothing written before the exit is missed
        new: list[dict[str, Any]] = []
        lines = self._read_new_lines()
        if code is not None and self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace").strip())
            self._partial = b""
        for line in lines:
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            new.append(event if isinstance(event, dict) else {"event": "log", "message": line})
        if code is not None:
            self.returncode = code
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""
            self.stderr_tail.extend(line for line in text.splitlines() if line.strip())
        self.events.extend(new)
        return new

    def cleanup(self) -> None:
        """Remove the log folder when this object created it (after the process ended)."""
        if self._own_logdir and not self.running:
            shutil.rmtree(self.logdir, ignore_errors=True)

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> list[dict[str, Any]]:
        """Block until the process ended (tests and scripts); returns every event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(grace_s=0.0)
                self.poll()
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

    def cancel(self, grace_s: float = 3.0, wait: bool = False) -> None:
        """Stop the whole process tree without blocking the caller.

        POSIX: SIGTERM to the process group now (the engine stops at its next step and writes nothing
        half-done); :meth:`poll` sends SIGKILL to the group ``grace_s`` later if anything still runs, and
        right away once the main process has ended (worker processes left behind). Windows:
        ``taskkill /F /T`` ends the tree at once. ``wait=True`` blocks until the process has ended.
        """
        if self.process.poll() is None:
            self.cancelled = True
            if os.name == "nt":
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            else:
                _killpg(self.process.pid, signal.SIGTERM)  # new session: the group id is the pid
                self._kill_at = time.monotonic() + grace_s
        if wait:
            self.wait(timeout=grace_s + 10)

    def _escalate(self) -> None:
        if self._kill_at is None or os.name == "nt":
            return
        if self.process.poll() is not None or time.monotonic() >= self._kill_at:
            _killpg(self.process.pid, signal.SIGKILL)
            if self.process.poll() is not None:
                self._kill_at = None


def compare_command(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    method: str = "auto",
    device: str = "auto",
    python: str | None = None,
) -> list[str]:
    """The command line of one background comparison (``covidct compare ... --json-progress``)."""
    return [
        python or python_executable(),
        "-m",
        "CovidCTLib.cli",
        "compare",
        *(str(p) for p in inputs),
        "-o",
        str(outdir),
        "--method",
        method,
        "--device",
        device,
        "--overwrite",
        "--json-progress",
    ]


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def read_outputs(outdir: str | os.PathLike) -> tuple[sitk.Image, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read what ``covidct analyze`` wrote: (lungs image, lungs array, infection array, report dict)."""
    from CovidCTLib.outputs.output_set import is_complete

    outdir = Path(outdir)
    if not is_complete(outdir):
        raise InputError(f"{outdir} holds no complete CovidCT output set (the run was interrupted?); run it again.")
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


def read_heatmap(outdir: str | os.PathLike) -> np.ndarray | None:
    """The classifier heatmap an analysis wrote (``covid_heatmap.nii.gz``, float32 0..1), or None."""
    path = Path(outdir) / "covid_heatmap.nii.gz"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32) if path.is_file() else None


def read_lobes(outdir: str | os.PathLike) -> np.ndarray | None:
    """The lobe labelmap an analysis wrote (``lobes.nii.gz``), or None when it wrote none (8-bit input)."""
    path = Path(outdir) / "lobes.nii.gz"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8) if path.is_file() else None
