"""The writer registry: every output of ``covidct analyze``, in writing order, and the flags that choose them.

Adding an output format means adding one writer here (and, if it is optional, one :class:`OutputOption`):
the command line (:func:`add_output_arguments`), the Slicer export and :func:`write_outputs` follow.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CovidCTLib.outputs.base import OutputOption, OutputOptions, Writer
from CovidCTLib.outputs.output_set import check_output_dir, output_set
from CovidCTLib.progress import Reporter

#: the optional outputs' command-line flags
OPTIONS: tuple[OutputOption, ...] = (
    OutputOption(
        "surfaces",
        "--surfaces",
        "also export one 3-D surface per segment in this format (OUTDIR/surfaces)",
        choices=("stl", "obj", "ply", "vtp", "gltf"),
    ),
    OutputOption("points_csv", "--points-csv", "also write the legacy point CSV (x,y,z,value) for ParaView"),
    OutputOption("reports", "--no-report", "skip report.html / report.pdf", store_false=True),
    OutputOption("dicom_seg", "--no-dicom-seg", "skip the DICOM SEG for DICOM input", store_false=True),
    OutputOption(
        "include_identifiers",
        "--include-identifiers",
        "put patient name / ID into the HTML/PDF report and the DICOM SEG (off by default)",
    ),
    OutputOption(
        "heatmap",
        "--no-heatmap",
        "skip covid_heatmap.nii.gz (the classifier's Grad-CAM map; report.json keeps the explanation)",
        store_false=True,
    ),
)


@dataclass(frozen=True)
class FileWriter:
    """A writer of one or more files whose names are known in advance.

    ``files``: ``(role key, file or folder name)`` pairs; the key names the file in the dictionary
    :func:`write_outputs` returns (the files of a folder such as ``surfaces`` get ``<key>_<i>``).
    """

    name: str
    files: tuple[tuple[str, str], ...]
    run: Callable[[Any, Path, OutputOptions], list[Path] | None]
    when: Callable[[Any, OutputOptions], bool] = lambda result, options: True

    def applies(self, result: Any, options: OutputOptions) -> bool:
        return bool(self.when(result, options))

    def paths(self, result: Any, options: OutputOptions) -> list[str]:
        return [name for _, name in self.files]

    def write(self, result: Any, folder: Path, options: OutputOptions) -> list[Path]:
        written = self.run(result, folder, options)
        return list(written) if written else [folder / name for _, name in self.files]


def _labelmaps(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.io.writers import write_labelmap

    write_labelmap(result.lungs, result.ct.image, folder / "lungs.nii.gz", True, file_note(result, "lung"))
    write_labelmap(result.infection, result.ct.image, folder / "infection.nii.gz", True, file_note(result, "infection"))


def _segmentation(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.io.seg_nrrd import write_seg_nrrd

    write_seg_nrrd(
        result.lungs,
        result.infection,
        result.ct.image,
        folder / "segmentation.seg.nrrd",
        overwrite=True,
        extra_metadata=seg_metadata(result),
    )


def _lobes(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.io.seg_nrrd import write_layered_seg_nrrd
    from CovidCTLib.io.writers import write_labelmap
    from CovidCTLib.lobes.segments import lobe_layer_segments

    write_labelmap(result.lobes, result.ct.image, folder / "lobes.nii.gz", True, file_note(result, "lobes"))
    write_layered_seg_nrrd(
        [result.lobes],
        lobe_layer_segments(0),
        result.ct.image,
        folder / "lobes.seg.nrrd",
        overwrite=True,
        extra_metadata=seg_metadata(result),
        layer_names=["lobes"],
    )


def _heatmap(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.explain.heatmap import heatmap_image
    from CovidCTLib.io.writers import write_image

    write_image(
        heatmap_image(result.heatmap, result.ct.image), folder / HEATMAP_FILE, True, file_note(result, "classifier")
    )


def _dicom_seg(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.outputs.dicom_seg import write_dicom_seg

    write_dicom_seg(
        result, folder / "segmentation.dcm", overwrite=True, include_identifiers=options.include_identifiers
    )


def _surfaces(result: Any, folder: Path, options: OutputOptions) -> list[Path]:
    from CovidCTLib.outputs.meshes import export_surfaces

    return export_surfaces(result, folder / "surfaces", options.surfaces or "stl", overwrite=True)


def _points(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.outputs.points_csv import write_points_csv

    write_points_csv(result, folder / "points.csv")


def _written_report(result: Any, options: OutputOptions) -> dict[str, Any]:
    """The report as written out: no full path or patient fields unless asked (:mod:`CovidCTLib.privacy`)."""
    from CovidCTLib.privacy import report_for_output

    return report_for_output(result.report, options.include_identifiers, result.ct.patient)


def _report_json(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.report.report_json import write_report_json

    write_report_json(_written_report(result, options), folder / "report.json", overwrite=True)


def _report_csv(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.report.report_json import write_report_csv

    write_report_csv(_written_report(result, options), folder / "report.csv", overwrite=True)


def _report_html(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.outputs.html_pdf import write_html_report

    write_html_report(result, folder / "report.html", include_identifiers=options.include_identifiers)


def _report_pdf(result: Any, folder: Path, options: OutputOptions) -> None:
    from CovidCTLib.outputs.html_pdf import write_pdf_report

    write_pdf_report(result, folder / "report.pdf", include_identifiers=options.include_identifiers)


#: the classifier's Grad-CAM heatmap (float32 0..1 in steps of 1/255 on the CT grid; :mod:`CovidCTLib.explain`)
HEATMAP_FILE = "covid_heatmap.nii.gz"

#: every output, in writing order (key = the role in the returned path dictionary)
WRITERS: tuple[FileWriter, ...] = (
    FileWriter("labelmaps", (("lungs", "lungs.nii.gz"), ("infection", "infection.nii.gz")), _labelmaps),
    FileWriter("segmentation", (("segmentation", "segmentation.seg.nrrd"),), _segmentation),
    FileWriter(
        "lobes",
        (("lobes", "lobes.nii.gz"), ("lobes_segmentation", "lobes.seg.nrrd")),
        _lobes,
        lambda result, options: getattr(result, "lobes", None) is not None,
    ),
    FileWriter(
        "heatmap",
        (("heatmap", HEATMAP_FILE),),
        _heatmap,
        lambda result, options: options.heatmap and getattr(result, "heatmap", None) is not None,
    ),
    FileWriter(
        "dicom_seg",
        (("dicom_seg", "segmentation.dcm"),),
        _dicom_seg,
        lambda result, options: options.dicom_seg and bool(result.ct.dicom_files),
    ),
    FileWriter("surfaces", (("surface", "surfaces"),), _surfaces, lambda result, options: bool(options.surfaces)),
    FileWriter("points_csv", (("points_csv", "points.csv"),), _points, lambda result, options: options.points_csv),
    FileWriter("report_json", (("report_json", "report.json"),), _report_json),
    FileWriter("report_csv", (("report_csv", "report.csv"),), _report_csv),
    FileWriter("report_html", (("report_html", "report.html"),), _report_html, lambda result, options: options.reports),
    FileWriter("report_pdf", (("report_pdf", "report.pdf"),), _report_pdf, lambda result, options: options.reports),
)


def known_output_names(extra: tuple[str, ...] = ()) -> frozenset[str]:
    """Every name a writer of :data:`WRITERS` can create (top-level entries of an output folder)."""
    return frozenset(name for writer in WRITERS for _, name in writer.files) | set(extra)


def check_outputs(
    outdir: str | os.PathLike,
    overwrite: bool,
    extra: tuple[str, ...] = (),
) -> dict[str, tuple[int, int]]:
    """:func:`check_output_dir` knowing the writers' names (call it before the analysis)."""
    return check_output_dir(outdir, overwrite, known_output_names(extra))


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the optional outputs' flags (:data:`OPTIONS`) to a subcommand's parser."""
    for option in OPTIONS:
        if option.choices:
            parser.add_argument(option.flag, dest=option.dest, choices=option.choices, default=None, help=option.help)
        else:
            action = "store_false" if option.store_false else "store_true"
            parser.add_argument(option.flag, dest=option.dest, action=action, help=option.help)


def options_from_args(args: argparse.Namespace) -> OutputOptions:
    """The :class:`OutputOptions` of parsed command-line arguments (defaults for flags a command lacks)."""
    defaults = OutputOptions()
    return OutputOptions(**{o.dest: getattr(args, o.dest, getattr(defaults, o.dest)) for o in OPTIONS})


#: the writers of the report alone (the Slicer panel's "Save report")
REPORT_WRITERS = ("report_json", "report_csv", "report_html", "report_pdf")


def planned_outputs(
    result: Any,
    options: OutputOptions,
    only: tuple[str, ...] | None = None,
) -> list[tuple[Writer, list[str]]]:
    """The writers that apply (those named in ``only`` when given), with the names they will create."""
    return [
        (w, w.paths(result, options))
        for w in WRITERS
        if w.applies(result, options) and (only is None or w.name in only)
    ]


def write_outputs(
    result: Any,
    outdir: str | os.PathLike,
    overwrite: bool = False,
    options: OutputOptions | None = None,
    reporter: Reporter | None = None,
    snapshot: dict[str, tuple[int, int]] | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
    only: tuple[str, ...] | None = None,
) -> dict[str, Path]:
    """Write every output of one analysis as one output set (see :mod:`CovidCTLib.outputs.output_set`).

    ``snapshot``: from :func:`check_output_dir` when the folder was checked before the analysis.
    ``extra_files``: name -> writer(path) for files that belong to the set (the demo's phantom CT).
    ``only``: write just these writers (e.g. :data:`REPORT_WRITERS`).
    Returns the final paths keyed by role (``surface_<i>`` for the files of the surfaces folder).
    """
    options = options or OutputOptions()
    outdir = Path(outdir)
    reporter = reporter or Reporter()
    plan = planned_outputs(result, options, only)
    if snapshot is None:
        snapshot = check_output_dir(outdir, overwrite, known_output_names(tuple(extra_files or ())))
    written: dict[str, list[Path]] = {}
    background_lane = [w for w, _ in plan if w.name in BACKGROUND_WRITERS]
    with output_set(outdir, overwrite, snapshot) as staging:
        for name, write in (extra_files or {}).items():
            write(staging / name)
        # the image writers (compression and encoding in C, outside the GIL) run in other threads while this
        # one renders and writes the reports; the executor is left only when those threads are done
        with ThreadPoolExecutor(max_workers=BACKGROUND_THREADS, thread_name_prefix="covidct-write") as pool:
            background = {w.name: pool.submit(w.write, result, staging, options) for w in background_lane}
            try:
                # this thread's writers first, then the background results (so that both threads work at once)
                ordered = [w for w, _ in plan if w.name not in background] + background_lane
                for index, writer in enumerate(ordered):
                    reporter.update("write", index / max(len(plan), 1), f"Writing {writer.name.replace('_', ' ')}")
                    if writer.name in background:
                        written[writer.name] = background[writer.name].result()
                    else:
                        written[writer.name] = writer.write(result, staging, options)
            except BaseException:
                for future in background.values():
                    future.cancel()  # a cancelled or failed run writes nothing more
                raise
        paths: dict[str, Path] = {}
        for writer, _ in plan:
            keys = {name: key for key, name in writer.files}
            for index_in_folder, path in enumerate(written[writer.name]):
                rel = Path(path).relative_to(staging)
                key = keys.get(str(rel)) or f"{keys[rel.parts[0]]}_{index_in_folder}"  # a file of a folder
                paths[key] = outdir / rel
    return paths


#: writers of image files that run in other threads beside the reports (no VTK, no shared state: one file each)
BACKGROUND_WRITERS = ("labelmaps", "segmentation", "lobes", "heatmap", "dicom_seg", "points_csv")
#: threads for them (their compression runs outside the GIL; with the reports' thread, 2 cores are kept busy)
BACKGROUND_THREADS = 2


def file_note(result: Any, task: str) -> str:
    """The header note of a NIfTI output: research use, the CovidCT version and the model behind the file
    (``task``: lung, infection, classifier, or lobes: the lung model they come from), within NIfTI's 80 bytes."""
    versions = result.report.get("versions", {})
    models = result.model_versions or {}
    lungs = models.get("lung") or f"{result.method} lungs"
    source = f"lobes of {lungs}" if task == "lobes" else models.get(task) or f"{result.method} method"
    return f"CovidCT {versions.get('covidct', '')} research only, not a diagnosis; {source}"


def seg_metadata(result: Any) -> dict[str, str]:
    """Provenance stored in the segmentation file header."""
    versions = result.report.get("versions", {})
    return {
        "CovidCT_SoftwareVersion": str(versions.get("covidct", "")),
        "CovidCT_Method": result.method,
        "CovidCT_Models": ";".join(f"{k}={v}" for k, v in sorted(result.model_versions.items())),
        "CovidCT_Disclaimer": str(result.report.get("disclaimer", "")),
    }
