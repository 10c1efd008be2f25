"""Write images and labelmaps atomically (temporary file in the target folder, then rename), compressed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTLib.atomic import atomic_path
from CovidCTLib.errors import InputError
from CovidCTLib.volume import labelmap_like

#: suffixes :func:`write_image` accepts (single-file formats; .mhd/.nhdr would need a second data file).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _check_suffix(path: Path) -> None:
    name = path.name.lower()
    if not any(name.endswith(s) for s in WRITE_SUFFIXES):
        raise InputError(
            f"Cannot write {path}: unsupported output suffix. Use one of {', '.join(WRITE_SUFFIXES)} "
            "(single-file formats; .mhd/.nhdr are not written because they need a separate data file)."
        )


#: bytes of the NIfTI header's ``descrip`` field (ITK writes the ``ITK_FileNotes`` metadata there)
NOTE_BYTES = 80


def write_image(image: sitk.Image, path: str | os.PathLike, overwrite: bool = False, note: str = "") -> Path:
    """Write ``image`` (geometry included) to ``path`` (.nii.gz, .nii, .nrrd or .mha), compressed.

    ``note``: provenance text stored in the file header (NIfTI ``descrip``, cut to :data:`NOTE_BYTES`; NRRD /
    MHA ``ITK_FileNotes``). Raises OutputExistsError when ``path`` exists and ``overwrite`` is False; on any
    failure the target is untouched and no temporary file is left behind.
    """
    target = Path(path)
    _check_suffix(target)
    if note:
        image = sitk.Image(image)  # the caller's image keeps its metadata
        image.SetMetaData("ITK_FileNotes", note.encode("ascii", "replace").decode()[: NOTE_BYTES - 1])
    with atomic_path(target, overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=not target.name.lower().endswith(".nii"))
    return target


def write_labelmap(
    array: np.ndarray, reference: sitk.Image, path: str | os.PathLike, overwrite: bool = False, note: str = ""
) -> Path:
    """Write a ``(z, y, x)`` label array as uint8 with exactly the reference image's geometry (and ``note``)."""
    return write_image(labelmap_like(array, reference), path, overwrite, note)
