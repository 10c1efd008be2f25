"""An output folder replaced whole: the complete old set or the complete new set, never a mix.

Files are written into a hidden staging folder beside OUTDIR (``.<name>.covidct-new-<pid>``); a completion
marker (:data:`MARKER`, listing every file) is written last; then OUTDIR is swapped for the staging folder by
two renames (the old set moves aside to ``.<name>.covidct-old-<pid>`` and is deleted after). A run killed at
any point leaves OUTDIR as it was (or, between the two renames, the old set aside, which the next run puts
back). Stale staging folders of dead processes are removed by the next run.

The swap refuses to replace anything it did not check: OUTDIR's entries are recorded when the run starts and
must be unchanged at the swap; an OUTDIR holding files that are not a CovidCT output set is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from CovidCTLib.errors import CovidCTError, OutputExistsError
from CovidCTLib.version import DISCLAIMER, __version__

MARKER = "covidct-outputs.json"
_NEW, _OLD = ".covidct-new-", ".covidct-old-"


class OutputError(CovidCTError):
    """The output folder cannot be written (not a folder, not writable, disk full, changed meanwhile)."""


def _snapshot(outdir: Path) -> dict[str, tuple[int, int]]:
    if not outdir.is_dir():
        return {}
    out = {}
    for entry in outdir.iterdir():
        stat = entry.stat()
        out[entry.name] = (stat.st_size if entry.is_file() else -1, stat.st_mtime_ns)
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(outdir: Path) -> list[str]:
    """Remove staging / set-aside folders of dead runs beside ``outdir``; put back an old set left aside when
    OUTDIR itself is missing. Returns what was done (for the run's notes)."""
    done: list[str] = []
    parent = outdir.parent
    if not parent.is_dir():
        return done
    for entry in sorted(parent.glob(f".{outdir.name}.covidct-*")):
        kind, _, pid = entry.name.rpartition("-")
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind.endswith(_OLD.rstrip("-")) and not outdir.exists():
            os.replace(entry, outdir)
            done.append(f"restored the previous output set of an interrupted run into {outdir}")
        else:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:  # a probe file of a run killed while checking the folder
                entry.unlink(missing_ok=True)
            done.append(f"removed the unfinished output folder {entry.name} of an interrupted run")
    return done


def read_marker(outdir: str | os.PathLike) -> dict | None:
    """The completion marker of an output set, or None when OUTDIR holds no complete set."""
    path = Path(outdir) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = marker.get("files", [])
    if not all((Path(outdir) / name).exists() for name in files):
        return None
    return marker


def is_complete(outdir: str | os.PathLike) -> bool:
    """True when OUTDIR holds a complete CovidCT output set (its marker lists files that all exist)."""
    return read_marker(outdir) is not None


def check_output_dir(
    outdir: str | os.PathLike,
    overwrite: bool,
    known: frozenset[str] | set[str] = frozenset(),
) -> dict[str, tuple[int, int]]:
    """Refuse at once (before any analysis) an OUTDIR that cannot take a new output set; returns its snapshot.

    Refused: OUTDIR is a file; OUTDIR exists and is not empty without ``overwrite``; OUTDIR holds files that
    are not a CovidCT output set (nothing of a user's is ever deleted); its parent cannot be written.
    ``known``: names CovidCT's writers create; with ``overwrite`` a folder holding only such names is replaced
    even without a marker (a set left by an older version or an interrupted pre-set run).
    """
    outdir = Path(outdir)
    clean_stale(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir} is a file, not a folder; give -o a folder path (new or a previous output).")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{outdir} already holds files; pass --overwrite to replace its output set or choose another -o folder."
            )
        marker = read_marker(outdir) or {}
        own = set(marker.get("files", [])) | {MARKER} | set(known)
        foreign = sorted(e.name for e in outdir.iterdir() if e.name not in own)
        if foreign:
            raise OutputError(
                f"{outdir} holds files that are not part of a CovidCT output set ({', '.join(foreign[:5])}); "
                "they would be lost. Choose an empty or new -o folder."
            )
    parent = outdir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{outdir.name}.covidct-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(
            f"cannot write beside {outdir} ({error.strerror or error}); choose a writable -o folder."
        ) from error
    return _snapshot(outdir)


@contextlib.contextmanager
def output_set(
    outdir: str | os.PathLike,
    overwrite: bool,
    snapshot: dict[str, tuple[int, int]] | None = None,
) -> Iterator[Path]:
    """Yield a fresh staging folder; on success mark it complete and swap it in place of ``outdir``.

    ``snapshot``: what :func:`check_output_dir` saw when the run started (taken now when None). On any error
    the staging folder is removed and ``outdir`` is untouched; OS errors become one :class:`OutputError` line.
    """
    outdir = Path(outdir)
    if snapshot is None:
        snapshot = check_output_dir(outdir, overwrite)
    staging = outdir.parent / f".{outdir.name}{_NEW}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        yield staging
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        marker = {
            "files": files,
            "software": f"CovidCT {__version__}",
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "disclaimer": DISCLAIMER,
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        _swap(outdir, staging, snapshot, overwrite)
    except OSError as error:
        raise OutputError(
            f"writing the outputs failed ({error.strerror or error}: {error.filename or outdir}); "
            f"{outdir} was left as it was. Free disk space or choose another -o folder."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(outdir: Path, staging: Path, snapshot: dict[str, tuple[int, int]], overwrite: bool) -> None:
    """Put ``staging`` in place of ``outdir`` unless ``outdir`` changed since ``snapshot`` was taken."""
    now = _snapshot(outdir)
    if now != snapshot:
        changed = sorted(set(now) ^ set(snapshot) | {k for k in now if k in snapshot and now[k] != snapshot[k]})
        raise OutputExistsError(
            f"{outdir} changed while the analysis ran ({', '.join(changed[:5])}); nothing was replaced. "
            "Run again with another -o folder."
        )
    if not outdir.exists():
        os.replace(staging, outdir)
        return
    if not overwrite and any(outdir.iterdir()):
        raise OutputExistsError(f"{outdir} already holds files; pass --overwrite to replace them.")
    aside = outdir.parent / f".{outdir.name}{_OLD}{os.getpid()}"
    os.replace(outdir, aside)
    try:
        os.replace(staging, outdir)
    except OSError:
        os.replace(aside, outdir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
