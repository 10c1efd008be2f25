"""Input loading (DICOM, NIfTI, NRRD, MetaImage, 2-D images) and file writers (images, labelmaps, seg.nrrd)."""

from CovidCTLib.io.checks import MAX_VOXELS, MIN_SLICES_3D
from CovidCTLib.io.loader import load_ct
from CovidCTLib.io.seg_nrrd import read_seg_nrrd, write_result_seg_nrrd, write_seg_nrrd
from CovidCTLib.io.writers import write_image, write_labelmap

__all__ = [
    "MAX_VOXELS",
    "MIN_SLICES_3D",
    "load_ct",
    "read_seg_nrrd",
    "write_image",
    "write_labelmap",
    "write_result_seg_nrrd",
    "write_seg_nrrd",
]
