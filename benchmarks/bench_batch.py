"""Benchmark ``covidct batch``: studies per hour with 1 and 2 local workers, printed as a Markdown table.

Each configuration runs ``covidct batch`` in a fresh process on a fresh OUTDIR, so the number includes worker
start-up and model loading (once per worker) and every output written (``--no-report`` is used unless
``--reports`` is given: the PDF dominates small studies otherwise).

    python benchmarks/bench_batch.py                                   # phantoms, classical, 1 and 2 workers
    python benchmarks/bench_batch.py --cases phantom,lidc --methods classical,model
    python benchmarks/bench_batch.py --n-phantoms 8 --workers 1,2,4

Real-data cases (the three LIDC-IDRI volumes) are skipped when ../shared/data (or $COVIDCT_SHARED_DATA) is
absent. The load average before each run is printed: numbers from a shared machine are not idle-machine numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COVIDCT_SHARED_DATA", REPO.parent / "shared" / "data"))
LIDC = [DATA / "lidc_idri_chest_ct" / f"LIDC-IDRI-000{i}.nii.gz" for i in (1, 2, 3)]


def write_phantoms(folder: Path, n: int) -> Path:
    """``n`` default-size phantoms (64x128x128) with different seeds as NIfTI files in ``folder``."""
    from CovidCTLib.io.writers import write_image
    from CovidCTLib.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        write_image(make_phantom(seed=seed).ct.image, folder / f"phantom{seed:02d}.nii.gz", overwrite=True)
    return folder


def write_manifest(path: Path, files: list[Path]) -> Path:
    """A manifest CSV (id,path) for real-data files."""
    path.write_text("id,path\n" + "".join(f"{f.name.split('.')[0]},{f}\n" for f in files), encoding="utf-8")
    return path


def run_batch(inputs: list[str], outdir: Path, method: str, workers: int, reports: bool) -> dict:
    """One ``covidct batch`` run; returns wall time, counts and the per-study mean from cohort.json."""
    command = [
        sys.executable,
        "-m",
        "CovidCTLib.cli",
        "batch",
        *inputs,
        "-o",
        str(outdir),
        "--method",
        method,
        "--workers",
        str(workers),
    ]
    if not reports:
        command.append("--no-report")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if completed.returncode not in (0, 1):
        raise SystemExit(f"batch failed ({completed.returncode}): {completed.stderr[-2000:]}")
    summary = json.loads((outdir / "cohort.json").read_text())
    counts = summary["counts"]
    return {
        "wall_s": wall,
        "load": load,
        "ok": counts["analysed"],
        "failed": counts["failed"] + counts["timed_out"],
        "per_study_s": summary["timings"]["per_study_s"]["mean"],
        "per_hour": 3600.0 * counts["analysed"] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="phantom", help="comma list of phantom, lidc (default phantom)")
    parser.add_argument("--methods", default="classical", help="comma list of classical, model")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    parser.add_argument("--n-phantoms", type=int, default=6, help="phantom studies per run (default 6)")
    parser.add_argument("--reports", action="store_true", help="also write report.html / report.pdf")
    args = parser.parse_args()
    print(f"cores {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f} at start")
    print("| case | method | workers | studies | wall s | s / study (in worker) | studies / hour | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        inputs: dict[str, list[str]] = {}
        for case in args.cases.split(","):
            if case == "phantom":
                inputs[case] = [str(write_phantoms(root / "phantoms", args.n_phantoms))]
            elif case == "lidc":
                if not all(p.is_file() for p in LIDC):
                    print(f"| lidc | skipped: {LIDC[0].parent} not found |")
                    continue
                inputs[case] = ["--manifest", str(write_manifest(root / "lidc.csv", LIDC))]
        for case, case_inputs in inputs.items():
            for method in args.methods.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    out = root / f"out-{case}-{method}-{workers}"
                    r = run_batch(case_inputs, out, method, workers, args.reports)
                    print(
                        f"| {case} | {method} | {workers} | {r['ok']} ok / {r['failed']} failed | {r['wall_s']:.1f} "
                        f"| {r['per_study_s']:.1f} | {r['per_hour']:.0f} | {r['load']:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
