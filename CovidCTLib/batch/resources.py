"""How many local workers: from the usable cores, the threads each worker needs and the memory available."""

from __future__ import annotations

import os

#: peak resident memory of one worker, measured on RICORD 512x512x248 (bench_analyze.py), with a margin.
WORKER_MEMORY_GB = {"model": 3.6, "classical": 2.0}
#: threads one worker uses by default (torch inference profits from 2; the classical method is mostly serial).
WORKER_THREADS = {"model": 2, "classical": 1}


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup-restricted sets respected where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory_gb() -> float | None:
    """MemAvailable from /proc/meminfo in GB (None where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_threads(method: str) -> int:
    """Threads per worker for ``method`` (``model`` or ``classical``)."""
    return WORKER_THREADS.get(method, 1)


def default_workers(method: str, threads: int, n_studies: int) -> int:
    """``min(cores // threads, memory // per-worker peak, studies)``, at least 1."""
    by_cores = usable_cores() // max(1, threads)
    memory = available_memory_gb()
    by_memory = int(memory // WORKER_MEMORY_GB.get(method, 3.6)) if memory is not None else by_cores
    return max(1, min(by_cores, by_memory, max(1, n_studies)))
