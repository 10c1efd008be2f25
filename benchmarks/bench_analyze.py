"""Benchmark ``covidct analyze``: seconds per stage, writing and peak memory, against the issue-15 goals.

Each (case, method) runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own.
The classical and the model method are measured in the same run (the goal is a ratio), and the load
average is printed with every row: on a shared machine absolute seconds are noisy, so compare a branch with
its base by running both back to back (``PYTHONPATH=<other checkout> python benchmarks/bench_analyze.py``).

    python benchmarks/bench_analyze.py                                  # phantom + RICORD, classical and model
    python benchmarks/bench_analyze.py --cases ricord --methods model --json out.json
    python benchmarks/bench_analyze.py --cases phantom --device cuda

``write`` is every output of ``covidct analyze`` (labelmaps, .seg.nrrd, lobes, DICOM SEG for DICOM input,
report.json/csv/html/pdf); the per-writer seconds and the peak memory after each stage are in the second table.
Real-data cases are skipped when ../shared/data (or $COVIDCT_SHARED_DATA) is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
#: issue 15, on 2 CPU cores: model time <= 1.5 x classical, all outputs written in < 2 s, peak < 2.5 GB
GOAL_RATIO, GOAL_WRITE_S, GOAL_PEAK_MB = 1.5, 2.0, 2500.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(name: str, method: str, device: str, write: bool) -> dict:
    """Child-process body: analyse one case; timings, per-writer seconds and the peak RSS after each stage."""
    import CovidCTLib.outputs.registry as registry
    from CovidCTLib import pipeline

    peaks: dict[str, float] = {"start": _rss_mb()}
    cpu: dict[str, float] = {}

    def measured(stage):
        def run(state):
            started_cpu = time.process_time()
            stage.run(state)
            cpu[stage.name] = time.process_time() - started_cpu  # all threads of this process
            peaks[stage.name] = _rss_mb()

        return pipeline.Stage(stage.name, stage.weight, stage.message, run)

    stages = tuple(measured(s) for s in pipeline.STAGES)
    run_stages = pipeline.run_stages
    pipeline.run_stages = lambda state, _stages=stages: run_stages(state, _stages)  # analyze looks it up by name
    if name == "phantom":
        from CovidCTLib.phantom import make_phantom

        source = make_phantom().ct
    else:
        source = CASES[name]
    if write:
        from CovidCTLib.outputs.warmup import start_warmup

        start_warmup()  # as covidct analyze does: the writers get ready while the analysis runs
    started = time.perf_counter()
    result = pipeline.analyze(source, method=method, device=device)
    timings = dict(result.report["timing_s"])
    writers: dict[str, float] = {}
    if write:
        original = registry.FileWriter.write

        def timed(self, *args):
            t0 = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                writers[self.name] = time.perf_counter() - t0

        registry.FileWriter.write = timed
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            pipeline.write_outputs(result, Path(folder) / "out", reports=True)
            timings["write"] = time.perf_counter() - t0
        peaks["write"] = _rss_mb()
    timings["wall"] = time.perf_counter() - started
    cpu["analysis"] = sum(cpu.values())
    return {
        "case": name,
        "size": "x".join(str(s) for s in result.ct.image.GetSize()),
        "method": result.method,
        "timings": timings,
        "writers": writers,
        "cpu_s": cpu,
        "peaks_mb": peaks,
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


def _goal_rows(rows: list[dict]) -> list[str]:
    """One line per case measured with both methods: the three goals, measured and met or not."""
    lines = [
        "| case | classical s | model s | model / classical (goal <= 1.5) | same in CPU s | write s, model (goal < 2) "
        "| peak MB, model (goal < 2500) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {r["method"]: r for r in rows if r["case"] == case}
        if "model" not in by:
            continue
        model = by["model"]
        ratio, cpu_ratio = "-", "-"
        classical = by.get("classical")
        if classical:
            value = model["timings"]["total"] / classical["timings"]["total"]
            ratio = f"{value:.2f} ({'met' if value <= GOAL_RATIO else 'not met'})"
            # CPU seconds of all threads: steadier than wall time on a shared machine (not the goal's measure)
            cpu_ratio = f"{model['cpu_s']['analysis'] / max(classical['cpu_s']['analysis'], 1e-9):.2f}"
        write = model["timings"].get("write")
        write_cell = f"{write:.2f} ({'met' if write < GOAL_WRITE_S else 'not met'})" if write is not None else "-"
        peak = model["peak_mb"]
        lines.append(
            f"| {case} | {classical['timings']['total'] if classical else float('nan'):.1f} | "
            f"{model['timings']['total']:.1f} | {ratio} | {cpu_ratio} | {write_cell} | "
            f"{peak:.0f} ({'met' if peak < GOAL_PEAK_MB else 'not met'}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["phantom", "ricord"], choices=list(CASES))
    parser.add_argument("--methods", nargs="+", default=["classical", "model"], choices=("auto", "classical", "model"))
    parser.add_argument("--method", dest="methods", action="store", type=lambda m: [m], help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-write", action="store_true", help="do not time writing the output files")
    parser.add_argument("--json", type=Path, help="also save every row (timings, writers, peaks) as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.methods[0], args.device, not args.no_write)))
        return
    rows = []
    for name in args.cases:
        if CASES[name] is not None and not CASES[name].exists():
            print(f"skipping {name}: {CASES[name]} not found", file=sys.stderr)
            continue
        for method in args.methods:
            command = [sys.executable, __file__, "--child", name, "--methods", method, "--device", args.device]
            if args.no_write:
                command.append("--no-write")
            load = os.getloadavg()[0]
            stdout, stderr, returncode, peak_mb = run_child(command)
            if returncode != 0:
                print(f"{name} ({method}) failed:\n{stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(stdout.strip().splitlines()[-1])
            row.update(peak_mb=peak_mb, load=load, load_after=os.getloadavg()[0])
            rows.append(row)
    from CovidCTLib.pipeline import STAGES

    stages = [stage.name for stage in STAGES] + ["write", "total", "wall"]
    header = (
        f"| case | size | method | {' | '.join(s + ' s' for s in stages)} | peak MB | lungs mL | infection % "
        "| load avg |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        cells = [f"{row['timings'][s]:.2f}" if s in row["timings"] else "-" for s in stages]
        print(
            f"| {row['case']} | {row['size']} | {row['method']} | {' | '.join(cells)} | {row['peak_mb']:.0f} | "
            f"{row['lungs_ml']:.0f} | {row['infection_percent']:.1f} | {row['load']:.1f}-{row['load_after']:.1f} |"
        )
    print("\n| case | method | CPU seconds per stage (all threads of the process) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['method']} | {', '.join(f'{k} {v:.2f}' for k, v in row['cpu_s'].items())} |")
    print("\n| case | method | seconds per writer | peak MB after each stage |\n|---|---|---|---|")
    for row in rows:
        writers = ", ".join(f"{k} {v:.2f}" for k, v in row["writers"].items()) or "-"
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in row["peaks_mb"].items())
        print(f"| {row['case']} | {row['method']} | {writers} | {peaks} |")
    print()
    print("\n".join(_goal_rows(rows)))
    print(
        f"\nmachine: {len(os.sched_getaffinity(0))} CPU cores; load average (1 min) before-after each row; "
        "peak MB = maximum resident set size of the case's own process; write = every output incl. HTML/PDF"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
