"""Input loading (DICOM, NIfTI, NRRD, MetaImage, 2-D images) and file writers (images, labelmaps, seg.nrrd)."""

from CovidCTLib.io.loader import MAX_VOXELS, MIN_SLICES_3D, load_ct
from CovidCTLib.io.writers import write_image, write_labelmap

__all__ = ["MAX_VOXELS", "MIN_SLICES_3D", "load_ct", "write_image", "write_labelmap"]
