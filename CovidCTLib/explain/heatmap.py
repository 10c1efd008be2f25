"""Map the classifier's per-slice Grad-CAM maps back onto the CT grid: ``covid_heatmap.nii.gz``.

Each lung-containing slice was shown to the classifier in the radiological view (in-plane flips and, for
sagittally stored rows, a transpose: :func:`radiological_view`), cropped to its lung box
(:func:`lung_bbox`, the crop :func:`crop_to_lungs` uses) and resized to the network input. The map of a
slice lives on the network's feature grid over that box: it is resized bilinearly (cell centres at the
centres of the box's sixteenths, ``align_corners=False``) onto the box, placed into the slice, and put
back into the CT's own voxel order through the same view function applied to an index grid, so the inverse
is exact by construction. The volume is restricted to the lungs, scaled to 0..1 by its maximum and kept in
steps of 1/255.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812

from CovidCTLib.models.runtime.classifier import lung_bbox
from CovidCTLib.models.runtime.classifier_inference import radiological_view

#: the heat is kept in steps of 1 / HEAT_LEVELS (display precision: the file is a tenth of the size of the
#: interpolated float map, which does not compress, and is written in a third of the time)
HEAT_LEVELS = 255


def view_index(shape_yx: tuple[int, int], image: sitk.Image) -> np.ndarray:
    """For each pixel of the radiological view of a slice, the flat index of the CT pixel it shows."""
    grid = np.arange(shape_yx[0] * shape_yx[1], dtype=np.int64).reshape(1, *shape_yx)
    viewed, _ = radiological_view(grid, grid, image)
    return viewed[0]


def crop_box(view_lungs: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) the classifier cropped from a view slice: the lung box, or the whole slice."""
    box = lung_bbox(view_lungs > 0)
    return box if box is not None else (0, view_lungs.shape[0], 0, view_lungs.shape[1])


def cam_to_box(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a feature-grid map onto a ``height x width`` box (cell centres preserved)."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def heatmap_volume(
    image: sitk.Image,
    lungs: np.ndarray,
    cams: dict[int, np.ndarray],
    boxes: dict[int, tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """float32 ``(z, y, x)`` heat on the CT grid: 0 outside the lungs and on unclassified slices, max 1.

    ``cams``: slice index -> Grad-CAM map of that slice (radiological view, feature grid), as
    :func:`CovidCTLib.models.runtime.classifier_inference.classify_scan` keeps them with ``explain=True``;
    ``boxes``: the view box each map lies on, when the classifier gives one (else the classic lung crop).
    """
    lungs = np.asarray(lungs)
    heat = np.zeros(lungs.shape, dtype=np.float32)
    if not cams:
        return heat
    _, view_lungs = radiological_view(lungs, lungs, image)
    index = view_index(lungs.shape[1:], image).ravel()
    for z, cam in cams.items():
        y0, y1, x0, x1 = boxes[z] if boxes and z in boxes else crop_box(view_lungs[z])
        view = np.zeros(view_lungs.shape[1:], dtype=np.float32)
        view[y0:y1, x0:x1] = cam_to_box(cam, y1 - y0, x1 - x0)
        flat = np.empty(view.size, dtype=np.float32)
        flat[index] = view.ravel()
        heat[z] = flat.reshape(lungs.shape[1:])
    heat[lungs == 0] = 0.0
    peak = float(heat.max())
    if peak <= 0:
        return heat
    for z in cams:  # scaled to 0..1 and rounded to the display steps, slice by slice (no copy of the volume)
        plane = heat[z]
        np.multiply(plane, np.float32(HEAT_LEVELS / peak), out=plane)
        np.rint(plane, out=plane)
        np.clip(plane, 0.0, HEAT_LEVELS, out=plane)
        plane /= np.float32(HEAT_LEVELS)
    return heat


def heatmap_image(heat: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """The heat as a float32 image with the reference's exact origin, spacing and direction."""
    if tuple(reversed(np.shape(heat))) != tuple(reference.GetSize()):
        raise ValueError(f"heatmap shape {np.shape(heat)} (z,y,x) does not match the CT size {reference.GetSize()}")
    out = sitk.GetImageFromArray(np.asarray(heat, dtype=np.float32))
    out.CopyInformation(reference)
    return out
