"""Find the studies of a cohort: volume files and DICOM studies under input folders, or a manifest CSV.

Rules (the same series selection as ``covidct analyze``):

* every NIfTI / NRRD / MetaImage file is one study (id: the file name without its suffix);
* DICOM files are grouped by StudyInstanceUID (files without one: by folder); within a study the CT series with
  the most images is chosen exactly as analyze chooses it in one folder (non-CT, SEG/SR and scout/localizer
  series skipped, the skipped series noted); id: the chosen series' folder relative to the input folder;
* a study holding no CT series is reported as a failure of discovery (it does not stop the others);
* a manifest CSV with the columns ``id`` and ``path`` lists the studies explicitly (paths relative to the CSV).

Only one pydicom header per series is kept in memory, so folders of many thousands of files are fine.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from CovidCTLib.batch.jobs import Study, safe_id, unique_ids
from CovidCTLib.errors import CovidCTError, InputError

#: DICOM headers read per chunk at discovery.
HEADER_CHUNK = 512


@dataclass
class Discovery:
    """Studies found, problems (``(id, path, message)``, e.g. a study with no CT series) and general notes."""

    studies: list[Study] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _volume_suffixes() -> set[str]:
    from CovidCTLib.io.images import VOLUME_SUFFIXES

    return set(VOLUME_SUFFIXES)


def _suffix(path: Path) -> str:
    from CovidCTLib.io.images import suffix_of

    return suffix_of(path)


def _stem(path: Path) -> str:
    suffix = _suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _is_detached_data(path: Path) -> bool:
    """The data file of a detached header (``.raw`` / ``.zraw`` beside an ``.mhd`` / ``.nhdr``) is no study."""
    return path.suffix.lower() in (".raw", ".zraw", ".img", ".gz") and not path.name.lower().endswith(".nii.gz")


def _files_under(folder: Path, exclude: Sequence[Path] = ()) -> Iterable[Path]:
    excluded = {p.resolve() for p in exclude}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in excluded)
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def _relative_id(folder: Path, root: Path) -> str:
    try:
        relative = folder.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(folder.name)
    text = str(relative) if str(relative) not in ("", ".") else root.resolve().name
    return safe_id(text.replace(os.sep, "_"))


def _common_folder(paths: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _dicom_studies(files: list[Path], root: Path, found: Discovery) -> list[tuple[str, Study]]:
    """Group DICOM headers by study, choose each study's series by analyze's rule."""
    from CovidCTLib.io import dicom

    first_of_series: dict[str, object] = {}
    by_study: dict[str, list[dicom.SliceHeader]] = {}
    unreadable: list[tuple[Path, str]] = []
    for start in range(0, len(files), HEADER_CHUNK):  # chunks: only one full header per series stays alive
        scan = dicom.scan_files(files[start : start + HEADER_CHUNK])
        unreadable += scan.unreadable
        for header in scan.headers:
            ds = first_of_series.setdefault(header.series_uid, header.ds)
            study_uid = str(header.ds.get("StudyInstanceUID", "") or f"folder:{header.path.parent}")
            by_study.setdefault(study_uid, []).append(dataclasses.replace(header, ds=ds))
    if unreadable:
        path, why = unreadable[0]
        found.notes.append(f"{len(unreadable)} unreadable DICOM file(s) under {root} ignored (e.g. {path}: {why})")
    out: list[tuple[str, Study]] = []
    for headers in by_study.values():
        folder = _common_folder([h.path for h in headers])
        base = _relative_id(folder, root)
        try:
            chosen, notes = dicom.choose_series(dicom.group_series(headers), str(folder))
        except CovidCTError as error:
            found.problems.append((base, str(folder), str(error)))
            continue
        chosen_folder = _common_folder([h.path for h in chosen])
        study = Study(
            id="",
            path=str(chosen_folder),
            files=tuple(str(h.path) for h in sorted(chosen, key=lambda h: str(h.path))),
            notes=tuple(notes),
        )
        out.append((_relative_id(chosen_folder, root), study))
    return out


def discover(inputs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> Discovery:
    """All studies under ``inputs`` (folders or files), with unique ids, in a stable order.

    Folders in ``exclude`` (the batch's own OUTDIR when it lies inside an input folder) are not searched.
    """
    found = Discovery()
    named: list[tuple[str, Study]] = []
    volume_suffixes = _volume_suffixes()
    for raw in inputs:
        root = Path(raw).expanduser()
        if not root.exists():
            raise InputError(f"{root} does not exist; give folders of studies, volume files or --manifest CSV.")
        if root.is_file():  # a volume file, or a DICOM file whose series analyze loads from its folder
            named.append((safe_id(_stem(root)), Study(id="", path=str(root))))
            continue
        dicom_candidates: list[Path] = []
        for path in _files_under(root, [Path(e) for e in exclude]):
            if _suffix(path) in volume_suffixes:
                named.append((safe_id(_stem(path)), Study(id="", path=str(path))))
            elif not _is_detached_data(path):
                dicom_candidates.append(path)
        if dicom_candidates:
            named.extend(_dicom_studies(dicom_candidates, root, found))
    ids = unique_ids([name for name, _ in named])
    found.studies = [dataclasses.replace(study, id=study_id) for study_id, (_, study) in zip(ids, named, strict=True)]
    return found


def read_manifest(path: str | os.PathLike) -> Discovery:
    """Studies listed in a CSV with the columns ``id`` and ``path`` (relative paths: from the CSV's folder)."""
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise InputError(f"manifest {manifest} does not exist; give a CSV with the columns id,path.")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "id" not in columns or "path" not in columns:
            raise InputError(
                f"manifest {manifest} has the columns {columns}; it needs a header line with the columns id,path."
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    found = Discovery()
    ids: list[str] = []
    for number, row in enumerate(rows, start=2):
        if not row.get("id") or not row.get("path"):
            raise InputError(f"manifest {manifest} line {number}: id and path must both be given.")
        study_id = safe_id(row["id"])
        if study_id != row["id"]:
            found.notes.append(f"manifest id {row['id']!r} is used as the folder name {study_id!r}")
        ids.append(study_id)
        target = Path(row["path"]).expanduser()
        target = target if target.is_absolute() else manifest.parent / target
        found.studies.append(Study(id=study_id, path=str(target)))
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"manifest {manifest} repeats the id(s) {', '.join(duplicates)}; every id must be unique.")
    return found
