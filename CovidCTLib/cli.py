"""The ``covidct`` command line.

Subcommands: analyze, segment-slices, classify, demo, models, and (when their parts are installed)
train, finetune, evaluate, compare. User errors print one clear line and exit with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from CovidCTLib.atomic import check_writable, write_text_atomic, write_with
from CovidCTLib.cli_options import add_analysis_arguments, add_device_argument
from CovidCTLib.cli_progress import BarProgress, JsonProgress, emit_json
from CovidCTLib.errors import CovidCTError, InputError, ModelError
from CovidCTLib.explain.text import explanation_summary
from CovidCTLib.progress import CancelToken, Reporter
from CovidCTLib.report.anatomy_tables import anatomy_summary
from CovidCTLib.report.assessment_text import assessment_summary
from CovidCTLib.version import DISCLAIMER, __version__

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SLICE_TASKS = ("lung", "infection", "lesion-type")


# ----------------------------------------------------------------------------------------------- helpers
def _reporter(args: argparse.Namespace, cancel: CancelToken) -> tuple[Reporter, Any]:
    display = JsonProgress() if getattr(args, "json_progress", False) else BarProgress(sys.stderr.isatty())
    return Reporter(display, cancel), display


def _install_signal_handlers(cancel: CancelToken) -> None:
    """SIGTERM/SIGINT cancel between steps; atomic writes guarantee no half-written file."""

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):  # not in the main thread (embedded use)
            signal.signal(signum, handler)


def _summary_lines(report: dict[str, Any]) -> list[str]:
    lungs, infection = report["lungs"], report["infection"]
    probability = report.get("covid_probability")
    lines = [
        f"Method: {report['method']}  (CovidCT {report['versions']['covidct']}"
        + (f"; models {report['versions']['models']}" if report["versions"]["models"] else "")
        + ")",
        f"Lungs: right {lungs['right_ml']:.0f} mL, left {lungs['left_ml']:.0f} mL, total {lungs['total_ml']:.0f} mL",
        f"Infection: {infection['total_ml']:.1f} mL ({infection['percent_of_lungs']:.1f} % of lungs; "
        f"right {infection['right_percent']:.1f} %, left {infection['left_percent']:.1f} %); "
        f"ground-glass {infection['ggo_ml']:.1f} mL, consolidation {infection['consolidation_ml']:.1f} mL",
        f"CT severity score: {report['severity_score']['total']} / 30 (zones)"
        + (f", {report['severity_score_lobar']['total']} / 25 (lobes)" if report.get("severity_score_lobar") else "")
        + f";  lesions: {len(report.get('lesions') or [])}",
        "COVID probability: "
        + ("n/a (no classifier installed)" if probability is None else f"{probability:.2f} (research use)"),
        *[f"WARNING: {text}" for text in report.get("fallbacks") or []],  # issue 12: a fallback is never silent
        *assessment_summary(report),  # issue 13 hook: category, reasons, noise floor
        *explanation_summary(report),  # issue 16.2 hook: top slices and heat in infection
        *anatomy_summary(report),  # issue 14 hook: landmark zones, peripheral share
        f"Note: {DISCLAIMER}",
    ]
    return lines


# ----------------------------------------------------------------------------------------------- analyze
def _thresholds(args: argparse.Namespace) -> Any | None:
    if args.ggo_range is None and args.consolidation_range is None:
        return None
    from CovidCTLib.classical.infection import InfectionThresholds

    defaults = InfectionThresholds()
    kwargs: dict[str, float] = {}
    if args.ggo_range is not None:
        kwargs.update(ggo_min_hu=args.ggo_range[0], ggo_max_hu=args.ggo_range[1])
    if args.consolidation_range is not None:
        kwargs.update(
            consolidation_min_hu=args.consolidation_range[0], consolidation_max_hu=args.consolidation_range[1]
        )
    return type(defaults)(**{**defaults.__dict__, **kwargs})


def run_analyze(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``covidct analyze``: analyse one CT and write every output into OUTDIR (one output set)."""
    from CovidCTLib.outputs.registry import check_outputs, options_from_args, write_outputs
    from CovidCTLib.outputs.warmup import start_warmup
    from CovidCTLib.pipeline import analyze

    outdir = Path(args.output)
    snapshot = check_outputs(outdir, args.overwrite)  # refuse at once, not after the analysis
    start_warmup(options_from_args(args).reports)  # the writers get ready while the analysis runs
    reporter, display = _reporter(args, cancel)
    try:
        result = analyze(
            args.input,
            method=args.method,
            device=args.device,
            reporter=reporter,
            classify=not args.no_classify,
            infection_thresholds=_thresholds(args),
            harmonise_kernel=not args.no_kernel_harmonisation,
            explain=not args.no_explain,
            top_slices=args.top_slices,
        )
        paths = write_outputs(result, outdir, args.overwrite, options_from_args(args), reporter, snapshot)
    finally:
        display.close()
    from CovidCTLib.io.notices import print_warnings  # issue 12.11 hook: warnings on the console

    warnings = print_warnings(result.report.get("notes") or [])
    if args.json_progress:
        emit_json(
            "done",
            outdir=str(outdir),
            report=str(paths["report_json"]),
            files={key: str(path) for key, path in paths.items()},
            warnings=warnings,
            fallbacks=list(result.report.get("fallbacks") or []),
        )
    else:
        print("\n".join(_summary_lines(result.report)))
        print(f"Outputs written to {outdir}/: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0


# ----------------------------------------------------------------------------------------------- demo
def run_demo(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``covidct demo``: generate the phantom, analyse it and compare with its known answer."""
    from CovidCTLib.io.writers import write_image
    from CovidCTLib.outputs.registry import check_outputs, write_outputs
    from CovidCTLib.outputs.warmup import start_warmup
    from CovidCTLib.phantom import make_phantom
    from CovidCTLib.pipeline import analyze

    outdir = Path(args.output)
    snapshot = check_outputs(outdir, args.overwrite, ("phantom_ct.nii.gz",))
    phantom = make_phantom(seed=args.seed)
    ct_path = outdir / "phantom_ct.nii.gz"
    phantom.ct.source = str(ct_path)
    start_warmup()  # the writers get ready while the analysis runs
    reporter, display = _reporter(args, cancel)
    try:
        result = analyze(phantom.ct, method=args.method, device=args.device, reporter=reporter)
        paths = write_outputs(
            result,
            outdir,
            args.overwrite,
            reporter=reporter,
            snapshot=snapshot,
            extra_files={ct_path.name: lambda path: write_image(phantom.ct.image, path, overwrite=True)},
        )
    finally:
        display.close()
    voxel_ml = phantom.ct.voxel_volume_ml
    truth_lung = np.count_nonzero(phantom.lungs) * voxel_ml
    truth_inf = np.count_nonzero(phantom.infection) * voxel_ml
    print("CovidCT demo on the built-in synthetic chest CT phantom (known answer)")
    print("\n".join(_summary_lines(result.report)))
    print(
        f"Known answer: lungs {truth_lung:.0f} mL, infection {truth_inf:.1f} mL "
        f"({100 * truth_inf / truth_lung:.1f} % of lungs)"
    )
    print(f"Outputs written to {outdir}/: " + ", ".join(sorted([ct_path.name, *(p.name for p in paths.values())])))
    if args.json_progress:
        emit_json("done", outdir=str(outdir), report=str(paths["report_json"]))
    return 0


# ----------------------------------------------------------------------------------------------- slices
def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of 2-D images (PNG/JPG).")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InputError(f"No PNG/JPG/BMP/TIFF image found in {folder}; nothing to segment.")
    return images


def _read_grey_uint8(path: Path) -> np.ndarray:
    from CovidCTLib.io.loader import load_checked  # issue 12.1 hook: refuse blank / non-CT images

    ct = load_checked(path, require_3d=False)
    array = ct.array
    array = array[0] if array.ndim == 3 else array
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    return array


def _write_png(mask: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    def writer(tmp: Path) -> None:
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(tmp))

    write_with(path, writer, overwrite=True)


def slice_segmenter(task: str, method: str, device: str) -> tuple[str, Callable[[list[np.ndarray]], list[np.ndarray]]]:
    """The 2-D segmenter for ``task`` from the segmentation registry (trained when installed or asked)."""
    from CovidCTLib.segmentation.registry import make_slice_segmenter

    segmenter = make_slice_segmenter(method, device)
    return segmenter.method, lambda images: segmenter.segment_images(task, images)


def run_segment_slices(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``covidct segment-slices``: one PNG mask per 2-D image, same size and file stem."""
    images = _list_images(Path(args.input_dir))
    outdir = Path(args.output)
    targets = [outdir / f"{path.stem}.png" for path in images]
    for target in targets:
        check_writable(target, args.overwrite)
    method, segment = slice_segmenter(args.task, args.method, args.device)
    reporter, display = _reporter(args, cancel)
    try:
        batch = 16
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            arrays = [_read_grey_uint8(path) for path in chunk]
            for path, array, mask in zip(chunk, arrays, segment(arrays), strict=True):
                if mask.shape != array.shape:
                    raise CovidCTError(f"internal error: mask for {path.name} has the wrong size {mask.shape}")
                out = (mask > 0).astype(np.uint8) * 255 if args.task != "lesion-type" else mask.astype(np.uint8)
                _write_png(out, outdir / f"{path.stem}.png")
            reporter.update("segment-slices", (start + len(chunk)) / len(images), f"{start + len(chunk)} images")
    finally:
        display.close()
    encoding = "0/255" if args.task != "lesion-type" else "0 background, 1 ground-glass, 2 consolidation"
    print(f"{len(images)} masks ({args.task}, {method}, values {encoding}) written to {outdir}/")
    return 0


# ----------------------------------------------------------------------------------------------- classify
def run_classify(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``covidct classify``: write the slice classifier's probability for images or volumes.

    This is the classifier alone (pooled slice scores); ``covidct analyze`` combines it with the segmentation into
    the scan-level COVID assessment, whose probability is report.json's ``covid_probability``.
    """
    from CovidCTLib.models.runtime import classifier_inference as classifier

    output = Path(args.output)
    check_writable(output, args.overwrite)
    if not classifier.classifier_available():
        raise ModelError(
            "No COVID classifier is installed. Train one with "
            "`covidct train classifier --data /path/to/covid_ct_classification --out runs/classifier` "
            "and install it into Resources/Models (see README), or set COVIDCT_MODELS_DIR."
        )
    rows = []
    reporter, display = _reporter(args, cancel)
    try:
        for index, path in enumerate(args.inputs):
            reporter.update("classify", index / len(args.inputs), f"Classifying {Path(path).name}")
            row = classifier.classify_path_details(path, device=args.device)
            rows.append((path, float(row["probability"]), f"{row['model_name']} {row['model_version']}"))
    finally:
        display.close()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "classifier_probability", "model"])
    writer.writerows([(path, f"{p:.4f}", model) for path, p, model in rows])
    write_text_atomic(output, buffer.getvalue(), overwrite=args.overwrite)
    print(
        f"{len(rows)} slice-classifier probabilities written to {output} (research use, not a diagnosis). "
        "This is the classifier alone: for a CT volume, `covidct analyze` gives the scan-level COVID assessment "
        "(category, reasons and its calibrated probability), which also weighs the segmented infection."
    )
    return 0


# ----------------------------------------------------------------------------------------------- models
def run_models(args: argparse.Namespace, cancel: CancelToken) -> int:  # noqa: ARG001
    """``covidct models``: list the installed models with version and checksum state."""
    try:
        registry = importlib.import_module("CovidCTLib.models.runtime.registry")
    except ImportError:
        print("No model support installed (torch/monai missing); the classical method is available.")
        return 0
    models = registry.list_models()
    if not models:
        print("No trained model installed; `covidct analyze` uses the classical method.")
    for entry in models:
        if entry.get("ok"):
            print(
                f"{entry['name']}  version {entry.get('version')}  task {entry.get('task')}  "
                "(checksum verified: manifest and weights)"
            )
        else:
            print(f"{entry['name']}  NOT USABLE: {entry.get('error')}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
def _add_common(parser: argparse.ArgumentParser, device: bool = True, overwrite: bool = True) -> None:
    if device:
        add_device_argument(parser)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--json-progress",
        action="store_true",
        help="print one JSON line per progress step on stdout (for the Slicer module)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``covidct`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="COVID-19 chest CT analysis: lungs, infection, classification, quantification. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    analyze = sub.add_parser(
        "analyze",
        help="analyse one chest CT (DICOM folder/file, NIfTI, NRRD, MHA)",
        description="Segment lungs and infection, classify and quantify one chest CT.",
    )
    analyze.add_argument("input", help="DICOM folder or file, .nii/.nii.gz, .nrrd, .mha/.mhd")
    analyze.add_argument("-o", "--output", required=True, help="output folder")
    add_analysis_arguments(analyze)
    _add_common(analyze)
    analyze.set_defaults(handler=run_analyze)

    slices = sub.add_parser(
        "segment-slices",
        help="segment every 2-D image of a folder",
        description="Write one PNG mask per 2-D image (same size and file stem): lung and "
        "infection 0/255; lesion-type 0 background, 1 ground-glass, 2 consolidation.",
    )
    slices.add_argument("--task", choices=SLICE_TASKS, required=True)
    slices.add_argument("input_dir", help="folder of PNG/JPG slices")
    slices.add_argument("-o", "--output", required=True, help="output folder for the masks")
    slices.add_argument("--method", choices=("auto", "classical", "model"), default="auto")
    _add_common(slices)
    slices.set_defaults(handler=run_segment_slices)

    classify = sub.add_parser(
        "classify",
        help="COVID probability of images or volumes",
        description="Write path,covid_probability for each input (research use only).",
    )
    classify.add_argument("inputs", nargs="+", help="2-D images or CT volumes")
    classify.add_argument("-o", "--output", required=True, help="predictions CSV path")
    _add_common(classify)
    classify.set_defaults(handler=run_classify)

    demo = sub.add_parser("demo", help="analyse the built-in synthetic phantom and print a summary")
    demo.add_argument("-o", "--output", default="demo_out", help="output folder (default demo_out)")
    demo.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    demo.add_argument("--method", choices=("auto", "classical", "model"), default="auto")
    _add_common(demo)
    demo.set_defaults(handler=run_demo)

    models = sub.add_parser("models", help="list installed trained models")
    models.set_defaults(handler=run_models)

    for module_name in ("CovidCTLib.models.cli", "CovidCTLib.longitudinal.cli", "CovidCTLib.batch.cli"):
        importlib.import_module(module_name).register(sub)  # torch, monai ... are plain dependencies
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``covidct`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cancel = CancelToken()
    _install_signal_handlers(cancel)
    json_mode = getattr(args, "json_progress", False)
    try:
        return int(args.handler(args, cancel) or 0)
    except CovidCTError as error:
        if json_mode:
            emit_json("error", message=str(error), kind=type(error).__name__)
        print(f"covidct: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        outdir = getattr(args, "output", None)
        where = f"; {outdir} was left as it was (outputs are replaced as one set)" if outdir else ""
        print(f"covidct: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - last resort: say it is a bug, keep the traceback
        if json_mode:
            emit_json("error", message=f"internal error: {error}", kind=type(error).__name__)
        traceback.print_exc()
        print(
            f"covidct: internal error ({type(error).__name__}: {error}); please report it with the traceback above.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
