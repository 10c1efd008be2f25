"""The one loader: :func:`load_ct` turns any supported input into a checked :class:`CTVolume`.

Supported inputs: a DICOM folder (searched recursively), one DICOM file, NIfTI (``.nii``, ``.nii.gz``),
NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), and 2-D images (PNG, JPEG, BMP, TIFF; only with
``require_3d=False``). See :mod:`CovidCTLib.io.dicom` for series selection and geometry checks and
:mod:`CovidCTLib.io.images` for the HU / 8-bit rule used for volume files.
"""

from __future__ import annotations

import os
from pathlib import Path

from CovidCTLib.errors import InputError, NotCTError
from CovidCTLib.io import dicom, images
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume


def load_ct(path: str | os.PathLike, require_3d: bool = True, reporter: Reporter | None = None) -> CTVolume:
    """Load a CT scan (or, with ``require_3d=False``, a 2-D slice image) and check it is usable.

    Args:
        path: DICOM folder, DICOM file, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, or a
            PNG/JPEG/BMP/TIFF image.
        require_3d: refuse 2-D images and stacks with fewer than :data:`MIN_SLICES_3D` slices.
            A single DICOM file loads the whole series it belongs to when the other slices of that series
            (same SeriesInstanceUID) are in the same folder, otherwise just that slice.
        reporter: optional progress reporter (step ``"load"``; also checks cancellation).

    Returns:
        A :class:`CTVolume` with a 3-D image (a 2-D input becomes a 1-slice volume), ``intensity`` "HU" or
        "8bit" and notes explaining choices made (skipped series, intensity rule).

    Raises:
        InputError: missing path, empty folder, corrupt file, unsupported format, too many voxels.
        NotCTError: not CT (e.g. MR), scout/localizer, 2-D input or too few slices when 3-D is required.
        GeometryError: mixed series, gantry tilt, non-uniform slice spacing, repeated slice positions.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path (a DICOM folder or a CT volume file).")
    if reporter is not None:
        reporter.update("load", 0.0, f"loading {p.name}")
    if p.is_dir():
        ct = dicom.load_dicom_folder(p, require_3d, reporter)
    else:
        if p.stat().st_size == 0:
            raise InputError(f"{p} is an empty file (0 bytes); re-copy or re-export it.")
        suffix = images.suffix_of(p)
        if suffix in images.VOLUME_SUFFIXES:
            ct = images.load_volume_file(p, require_3d, reporter)
        elif suffix in images.IMAGE_SUFFIXES:
            ct = images.load_2d_image(p, require_3d)
        elif suffix in dicom.DICOM_SUFFIXES or suffix == "" or _is_dicom(p):
            ct = dicom.load_dicom_file(p, require_3d, reporter)
        else:
            raise InputError(
                f"{p}: unsupported file type '{suffix}'. Use a DICOM folder or file, NIfTI (.nii/.nii.gz), NRRD "
                "(.nrrd/.nhdr), MetaImage (.mha/.mhd), or a PNG/JPEG/BMP/TIFF slice."
            )
    if require_3d and not ct.is_3d:
        raise NotCTError(f"{p} is a single 2-D slice; 3-D analysis needs a CT volume ({images.SEGMENT_SLICES_HINT}).")
    if reporter is not None:
        reporter.update("load", 1.0, f"loaded {ct.image.GetSize()} ({ct.intensity})")
    return ct


def _is_dicom(path: Path) -> bool:
    """True when the file carries the DICOM preamble marker."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_checked(path: str | os.PathLike, require_3d: bool = True, reporter: Reporter | None = None) -> CTVolume:
    """:func:`load_ct` followed by :func:`CovidCTLib.io.plausibility.check_plausible` (the analysis entry point)."""
    from CovidCTLib.io.plausibility import check_plausible

    return check_plausible(load_ct(path, require_3d=require_3d, reporter=reporter))
