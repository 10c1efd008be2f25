"""Benchmark ``covidct analyze``: seconds per stage and peak memory, printed as a table.

Each case runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own.

    python benchmarks/bench_analyze.py                      # phantom + RICORD + LIDC, auto method
    python benchmarks/bench_analyze.py --method classical   # the classical method only
    python benchmarks/bench_analyze.py --cases phantom --device cuda

Real-data cases are skipped when ../shared/data (or $COVIDCT_SHARED_DATA) is absent.
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
CASES = {
    "phantom": None,
    "ricord": DATA / "ricord_1a_covid_chest_ct" / "dicom",
    "lidc-0001": DATA / "lidc_idri_chest_ct" / "LIDC-IDRI-0001.nii.gz",
}


def run_case(name: str, method: str, device: str, write: bool) -> dict:
    """Child-process body: analyse one case and return timings (and the output writing time)."""
    from CovidCTLib.pipeline import analyze, write_outputs

    if name == "phantom":
        from CovidCTLib.phantom import make_phantom

        source = make_phantom().ct
    else:
        source = CASES[name]
    started = time.perf_counter()
    result = analyze(source, method=method, device=device)
    timings = dict(result.report["timing_s"])
    if write:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            write_outputs(result, folder, reports=False)
            timings["write"] = time.perf_counter() - t0
    timings["wall"] = time.perf_counter() - started
    return {
        "case": name,
        "size": "x".join(str(s) for s in result.ct.image.GetSize()),
        "method": result.method,
        "timings": timings,
        "infection_percent": result.report["infection"]["percent_of_lungs"],
        "lungs_ml": result.report["lungs"]["total_ml"],
    }


def run_child(command: list[str]) -> tuple[str, str, int, float]:
    """Run a child process; return its stdout, stderr, exit code and its own peak RSS in MB (wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), process.returncode, usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--method", default="auto", choices=("auto", "classical", "model"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-write", action="store_true", help="do not time writing the output files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.method, args.device, not args.no_write)))
        return
    rows = []
    for name in args.cases:
        if CASES[name] is not None and not CASES[name].exists():
            print(f"skipping {name}: {CASES[name]} not found", file=sys.stderr)
            continue
        command = [sys.executable, __file__, "--child", name, "--method", args.method, "--device", args.device]
        if args.no_write:
            command.append("--no-write")
        stdout, stderr, returncode, peak_mb = run_child(command)
        if returncode != 0:
            print(f"{name} failed:\n{stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(stdout.strip().splitlines()[-1])
        row["peak_mb"] = peak_mb
        rows.append(row)
    from CovidCTLib.pipeline import STAGES

    stages = [stage.name for stage in STAGES] + ["write", "total", "wall"]
    header = f"| case | size | method | {' | '.join(s + ' s' for s in stages)} | peak MB | lungs mL | infection % |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        cells = [f"{row['timings'][s]:.2f}" if s in row["timings"] else "-" for s in stages]
        print(f"| {row['case']} | {row['size']} | {row['method']} | {' | '.join(cells)} | {row['peak_mb']:.0f} | "
              f"{row['lungs_ml']:.0f} | {row['infection_percent']:.1f} |")
    print(f"\nmachine: {os.cpu_count()} CPU cores; peak MB = maximum resident set size of the case's own process")


if __name__ == "__main__":
    main()
