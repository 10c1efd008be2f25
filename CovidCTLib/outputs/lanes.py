"""Run the writers of one output set in parallel lanes (threads), each lane in registry order.

Much of the writing waits on work that releases the GIL (zlib, SimpleITK, the VTK probe process), so the
picture writers (HTML / PDF reports, surfaces: VTK and matplotlib) run on the calling thread while the voxel
writers (labelmaps, .seg.nrrd, DICOM SEG, report.json / csv) run beside them in a worker thread. Each lane keeps
its writers in the registry's order, so a lane's shared state (the report pictures rendered once for HTML and
PDF) is only ever used by one thread. Progress and cancellation stay on the calling thread; the first error, in
registry order, is raised after every lane has stopped (nothing is left writing into the staging folder).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from CovidCTLib.progress import Reporter

#: the lane of a writer without a ``lane`` attribute
DEFAULT_LANE = "data"


def lane_of(writer: Any) -> str:
    """The lane a writer runs in (its ``lane`` attribute, else :data:`DEFAULT_LANE`)."""
    return str(getattr(writer, "lane", DEFAULT_LANE))


def run_lanes(
    writers: Sequence[Any],
    write: Callable[[Any], list[Path]],
    reporter: Reporter,
    parallel: bool = True,
    home: str = "pictures",
) -> list[list[Path]]:
    """``write(writer)`` for every writer, the lanes side by side; returns the written paths in ``writers`` order.

    The ``home`` lane runs on the calling thread (VTK and matplotlib stay where they always ran, e.g. Slicer's
    main thread); every other lane gets a worker thread. ``parallel=False`` writes one writer after the other
    on the calling thread (same files, same order).
    """
    n = max(len(writers), 1)
    results: list[list[Path] | None] = [None] * len(writers)
    lanes: dict[str, list[int]] = {}
    for index, writer in enumerate(writers):
        lanes.setdefault(lane_of(writer), []).append(index)
    if not parallel or len(lanes) < 2:
        for index, writer in enumerate(writers):
            reporter.update("write", index / n, f"Writing {writer.name.replace('_', ' ')}")
            results[index] = write(writer)
        return [r or [] for r in results]

    stop = threading.Event()

    def lane(indices: list[int]) -> None:
        for index in indices:
            if stop.is_set():
                return
            results[index] = write(writers[index])

    def progress(message: str) -> None:
        done = sum(r is not None for r in results)
        reporter.update("write", done / n, f"{message} ({done}/{len(writers)} outputs done)")

    errors: list[tuple[int, BaseException]] = []
    away = [indices for name, indices in lanes.items() if name != home]
    with ThreadPoolExecutor(max_workers=len(away), thread_name_prefix="covidct-write") as pool:
        futures: dict[Future, list[int]] = {pool.submit(lane, indices): indices for indices in away}
        try:
            for index in lanes.get(home, []):
                progress(f"Writing {writers[index].name.replace('_', ' ')}")
                try:
                    results[index] = write(writers[index])
                except Exception as exc:  # noqa: BLE001 - raised below, after the other lanes stopped
                    errors.append((index, exc))
                    stop.set()
                    break
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                progress("Writing")
        except BaseException:  # cancelled (reporter.update) or interrupted: let the lanes stop, then re-raise
            stop.set()
            raise
    for future, indices in futures.items():
        if future.exception() is not None:
            errors.append((next(i for i in indices if results[i] is None), future.exception()))
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    return [r or [] for r in results]
