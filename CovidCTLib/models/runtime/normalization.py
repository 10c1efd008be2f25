"""The one intensity normalisation that maps any CT slice into the networks' input domain.

Normalisation id ``lungwin-minmax-clahe-v1`` (stored in every manifest as ``normalization``):

1. **HU input** (``kind="HU"``): clip to the lung window ``[-1250, 250]`` HU and scale to ``[0, 1]``.
   **8-bit input** (``kind="8bit"``, any integer/float display image): cast to float.
2. Per-slice min-max to ``[0, 1]`` (a constant slice becomes all zeros).
3. Optional CLAHE (``clahe=True``): contrast-limited adaptive histogram equalisation with 8x8 tiles and the
   clip limit the COVID-19-CT-Seg PNG slices were made with (OpenCV clipLimit 7, i.e. ``7/256`` in
   scikit-image units). Default on for HU volumes (so they resemble the CLAHE-processed training slices),
   off for 8-bit images (which already are display images). Training randomises it, so both work.
4. Resize to the network's square input size (``size``; bilinear, anti-aliased); masks use nearest.
   The infection network gets the crop of the normalised slice around the lungs (:func:`lung_box`).

Orientation: the training slices are in the radiological display orientation (anterior at the top,
patient right on the image left), which is what a SimpleITK ``array[z]`` slice of a volume oriented to LPS
(``sitk.DICOMOrient(image, "LPS")``) shows. :func:`orient_lps` does that for 3-D volumes;
:mod:`CovidCTLib.models.runtime.inference` maps the results back onto the original grid.

Output: float32 in ``[0, 1]``, shape ``(size, size)`` (or the input shape when ``size`` is None).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from skimage.transform import resize

from CovidCTLib.imaging.clahe import equalize

NORMALIZATION_ID = "lungwin-minmax-clahe-v1"
HU_WINDOW = (-1250.0, 250.0)
CLAHE_CLIP = 7.0 / 256.0


def _minmax(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1e-6:
        return np.zeros_like(img, dtype=np.float32)
    return ((img - lo) / (hi - lo)).astype(np.float32)


def apply_clahe(img01: np.ndarray, clip: float = CLAHE_CLIP) -> np.ndarray:
    """CLAHE on a ``[0, 1]`` float image (8x8 tiles), returned as float32 in ``[0, 1]``.

    :func:`CovidCTLib.imaging.clahe.equalize`: the values of scikit-image's ``equalize_adapthist`` (which the
    training slices were made with), faster.
    """
    if float(img01.max()) - float(img01.min()) < 1e-6:
        return img01.astype(np.float32)
    return equalize(np.clip(img01, 0, 1), clip_limit=clip).astype(np.float32)


def normalize_slice(
    img: np.ndarray,
    kind: str = "8bit",
    clahe: bool | None = None,
    size: int | None = None,
) -> np.ndarray:
    """Map one 2-D slice (HU or 8-bit) to float32 ``[0, 1]`` in the networks' domain.

    Args:
        img: 2-D array; HU values when ``kind="HU"``, display values (e.g. uint8) when ``kind="8bit"``.
            A colour image ``(h, w, 3|4)`` is converted to grey.
        kind: ``"HU"`` or ``"8bit"``.
        clahe: apply CLAHE; None means the default for the kind (HU: on, 8-bit: off).
        size: resize to ``(size, size)``; None keeps the input shape.
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32).mean(axis=-1)
    if a.ndim != 2:
        raise ValueError(f"normalize_slice expects a 2-D slice, got shape {a.shape}")
    a = a.astype(np.float32)
    if kind == "HU":
        lo, hi = HU_WINDOW
        a = (np.clip(a, lo, hi) - lo) / (hi - lo)
    elif kind != "8bit":
        raise ValueError(f"unknown intensity kind {kind!r}; use 'HU' or '8bit'")
    a = _minmax(a)
    if clahe is None:
        clahe = kind == "HU"
    if clahe:
        a = apply_clahe(a)
    if size is not None and a.shape != (size, size):
        a = resize(a, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def normalize_volume(
    vol: np.ndarray, kind: str = "HU", clahe: bool | None = None, size: int | None = None
) -> np.ndarray:
    """Normalise every axial slice of a ``(z, y, x)`` volume; returns ``(z, size, size)`` float32."""
    return np.stack([normalize_slice(s, kind, clahe, size) for s in vol]).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label image."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    return resize(mask, shape, order=0, preserve_range=True, anti_aliasing=False).astype(mask.dtype)


def lung_box(lung: np.ndarray, margin: float = 0.1) -> tuple[slice, slice] | None:
    """Bounding box of a 2-D lung mask grown by ``margin`` of its size on each side (min 4 px), or None.

    The infection network works on this crop of the normalised slice (the lungs fill its input, as in
    the lung-region crops of the MedSeg training images), resized to its input size.
    """
    ys, xs = np.nonzero(lung)
    if len(ys) == 0:
        return None
    h, w = lung.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = max(4, int(margin * (y1 - y0))), max(4, int(margin * (x1 - x0)))
    return slice(max(0, y0 - my), min(h, y1 + my)), slice(max(0, x0 - mx), min(w, x1 + mx))


#: An 8-bit image whose lung box covers at least this share of it is a lung-region crop (like the MedSeg
#: training images): the lung network is unreliable there, so the infection network gets "lung unknown".
LUNG_REGION_CROP_FRACTION = 0.75


def is_lung_region_crop(box: tuple[slice, slice], shape: tuple[int, ...]) -> bool:
    """True when ``box`` covers at least :data:`LUNG_REGION_CROP_FRACTION` of an image of ``shape``."""
    area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
    return area >= LUNG_REGION_CROP_FRACTION * shape[0] * shape[1]


def infection_input(norm: np.ndarray, lung: np.ndarray, box: tuple[slice, slice], size: int) -> np.ndarray:
    """Two-channel infection-network input: the lung-box crop of the normalised slice and of the lung mask."""
    lm = resize_mask(lung[box].astype(np.uint8), size).astype(np.float32)
    return np.stack([fit(norm[box], size), lm])


def fit(img01: np.ndarray, size: int) -> np.ndarray:
    """Resize a normalised ``[0, 1]`` slice to ``(size, size)`` (bilinear, anti-aliased)."""
    if img01.shape == (size, size):
        return img01.astype(np.float32)
    out = resize(img01, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


def orient_lps(image: sitk.Image) -> sitk.Image:
    """Reorient a 3-D image so ``array[z]`` slices show the radiological view (LPS axes, no resampling)."""
    if image.GetDimension() != 3:
        return image
    return sitk.DICOMOrient(image, "LPS")
