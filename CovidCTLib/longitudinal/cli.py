"""``covidct compare``: longitudinal comparison of two or more scans of one patient (registered here)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from CovidCTLib.progress import CancelToken, Reporter
from CovidCTLib.version import DISCLAIMER


def _summary(report: dict[str, Any]) -> list[str]:
    lines = [f"Order: {report['order']['by']}: " + " -> ".join(report["order"]["labels"])]
    for tp in report["timepoints"]:
        numbers = tp["numbers"]
        unit = numbers["unit"]
        total = numbers["regions"]["total"]
        line = (
            f"  #{tp['index']} {tp['label']} ({tp['date'] or 'date unknown'}): infection "
            f"{total['infection']:.1f} {unit} = {total['percent']:.1f} % of lung "
            f"(right {numbers['regions']['right']['percent']:.1f} %, left "
            f"{numbers['regions']['left']['percent']:.1f} %)"
        )
        reg = tp.get("registration")
        if reg:
            line += (
                f"; registration lung Dice {reg['lung_dice']:.3f}, surface distance "
                f"{reg['mean_surface_distance_mm']:.2f} mm; vs baseline: {tp['verdict_vs_baseline']}"
            )
            if reg.get("not_assessable"):
                line += f" ({reg['not_assessable']})"
        lines.append(line)
    change = report["changes"][-1]["change_map_on_baseline_grid"]
    total = change["regions"]["total"]
    lines.append(
        f"Change (baseline grid, last follow-up): new {total['new']:.1f}, resolved {total['resolved']:.1f}, "
        f"persistent {total['persistent']:.1f} {change['unit']}"
    )
    lines.append("Overall: " + ", ".join(f"{k} {v}" for k, v in report["overall"].items()))
    lines.append(f"Note: {DISCLAIMER}")
    return lines


def run_compare(args: argparse.Namespace, cancel: CancelToken) -> int:
    """Handler of ``covidct compare``."""
    from CovidCTLib.cli_progress import BarProgress, JsonProgress, emit_json
    from CovidCTLib.longitudinal.compare import compare

    display: Any = JsonProgress() if args.json_progress else BarProgress(sys.stderr.isatty())
    reporter = Reporter(display, cancel)
    try:
        result = compare(
            [args.baseline, args.followup, *args.more],
            args.output,
            deformable=args.deformable,
            method=args.method,
            device=args.device,
            overwrite=args.overwrite,
            reporter=reporter,
            check=not args.no_quality_check,
        )
    finally:
        display.close()
    if args.json_progress:
        emit_json(
            "done",
            outdir=str(args.output),
            report=str(result.paths["json"]),
            files={key: str(path) for key, path in result.paths.items()},
        )
    else:
        print("\n".join(_summary(result.report)))
        print(f"Outputs written to {args.output}/: " + ", ".join(sorted(p.name for p in result.paths.values())))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``compare`` subcommand to the ``covidct`` parser."""
    from CovidCTLib.cli_options import add_device_argument
    from CovidCTLib.segmentation.registry import METHODS

    parser = subparsers.add_parser(
        "compare",
        help="compare a baseline with follow-up scans (registration, change map, trend)",
        description=(
            "Register each follow-up to the baseline (rigid + affine, optionally B-spline), map new / resolved / "
            "persistent infection on the baseline grid and report per-lung and per-zone change with a verdict. "
            "Inputs are CT scans or earlier `covidct analyze` output folders; they are ordered by DICOM "
            "acquisition date when known, else as given. Single slices are compared in 2-D. "
            "Research software, not for diagnosis."
        ),
    )
    parser.add_argument("baseline", help="baseline CT (file or DICOM folder) or analyze output folder")
    parser.add_argument("followup", help="follow-up CT or analyze output folder")
    parser.add_argument("more", nargs="*", help="further follow-ups")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--deformable", action="store_true", help="add a B-spline (deformable) stage after the affine one (slower)"
    )
    parser.add_argument(
        "--method", choices=METHODS, default="auto", help="segmentation method for CT inputs (default auto)"
    )
    add_device_argument(parser)
    parser.add_argument(
        "--no-quality-check",
        action="store_true",
        help="report even when the registration fails the quality thresholds (the verdicts then read 'not assessable')",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--json-progress", action="store_true", help="print progress and the result as JSON lines on stdout"
    )
    parser.set_defaults(handler=run_compare)
