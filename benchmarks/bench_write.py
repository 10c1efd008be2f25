"""Benchmark the writers alone on one saved analysis: wall and CPU seconds per writer, cold and warm.

Analysing a scan takes a minute; the writers take seconds. To compare writer changes, save one
AnalysisResult once (``--save``), then time only ``covidct analyze``'s default output set on it, in a fresh
process per run, with this checkout or another one (``PYTHONPATH=<other checkout>``), back to back:

    python benchmarks/bench_write.py --save /tmp/ricord.pkl --input DICOM_DIR [--method model]
    python benchmarks/bench_write.py /tmp/ricord.pkl --repeat 3 [--json out.json]

Pass 1 is *cold* (the first output set of the process: the writers' imports such as highdicom, reportlab
and matplotlib are paid there, as in one ``covidct analyze``); later passes are *warm* (a batch worker's
case). CPU seconds (``time.process_time``, this process only) are printed beside wall seconds because on a
shared machine wall time depends on the load; the load average is printed too. The pickle holds patient
data of the input: keep it outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path


def save_result(input_path: str, method: str, path: Path) -> None:
    """Analyse ``input_path`` once and pickle the AnalysisResult to ``path``."""
    from CovidCTLib import pipeline

    result = pipeline.analyze(input_path, method=method, device="cpu")
    with open(path, "wb") as handle:
        pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)


def time_writers(result, repeat: int) -> list[dict]:
    """Write the default output set ``repeat`` times; per pass, wall and CPU seconds per writer."""
    import dataclasses

    import CovidCTLib.outputs.registry as registry
    from CovidCTLib import pipeline

    passes: list[dict] = []
    current: dict[str, tuple[float, float]] = {}
    original = registry.FileWriter.write

    def timed(self, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(self, *args)
        finally:
            current[self.name] = (time.perf_counter() - wall, time.process_time() - cpu)

    registry.FileWriter.write = timed
    try:
        for _ in range(repeat):
            current = {}
            result = dataclasses.replace(result)  # a new result object: nothing cached from the last pass
            with tempfile.TemporaryDirectory() as folder:
                load = os.getloadavg()[0]
                wall, cpu = time.perf_counter(), time.process_time()
                pipeline.write_outputs(result, Path(folder) / "out", reports=True)
                total = (time.perf_counter() - wall, time.process_time() - cpu)
                sizes = {p.name: p.stat().st_size for p in (Path(folder) / "out").iterdir() if p.is_file()}
            passes.append(
                {
                    "writers": dict(current),
                    "total": total,
                    "load": load,
                    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                    "sizes": sizes,
                }
            )
    finally:
        registry.FileWriter.write = original
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="pickled AnalysisResult (made with --save)")
    parser.add_argument("--save", action="store_true", help="analyse --input and save the result to RESULT")
    parser.add_argument("--input", help="the scan to analyse for --save")
    parser.add_argument("--method", default="model", choices=("classical", "model"))
    parser.add_argument("--repeat", type=int, default=2, help="passes (1 cold, then warm)")
    parser.add_argument("--json", type=Path, help="also save the passes as JSON here")
    args = parser.parse_args()
    if args.save:
        if not args.input:
            parser.error("--save needs --input")
        save_result(args.input, args.method, args.result)
        return
    import importlib

    import CovidCTLib

    # what an analysis has imported by the time it writes (so that "cold" counts the writers' own imports)
    for module in ("CovidCTLib.pipeline", "CovidCTLib.explain.heatmap", "matplotlib.figure", "pydicom", "PIL.Image"):
        importlib.import_module(module)

    with open(args.result, "rb") as handle:
        result = pickle.load(handle)
    passes = time_writers(result, max(1, args.repeat))
    names = list(passes[0]["writers"])
    print(f"CovidCTLib from {Path(CovidCTLib.__file__).parent}; {len(os.sched_getaffinity(0))} CPU cores")
    print("| pass | load | " + " | ".join(names) + " | total | peak MB |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for index, row in enumerate(passes):
        cells = [f"{row['writers'][n][0]:.2f} / {row['writers'][n][1]:.2f}" for n in names]
        label = "cold" if index == 0 else f"warm {index}"
        total = row["total"]
        print(
            f"| {label} | {row['load']:.1f} | {' | '.join(cells)} | {total[0]:.2f} / {total[1]:.2f} "
            f"| {row['peak_mb']:.0f} |"
        )
    print("cells: wall s / CPU s (this process)")
    print("sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sorted(passes[-1]["sizes"].items())))
    if args.json:
        args.json.write_text(json.dumps(passes, indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
