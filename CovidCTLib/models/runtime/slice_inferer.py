"""The slice inferer's view of one CT: its axial slices on the LPS-oriented grid, each normalised once.

The 2-D networks see axial slices in radiological display (LPS, as the training slices), without resampling.
One :class:`SliceInferer` per CT is passed explicitly from the lung to the infection network so each slice is
normalised once; nothing is cached behind the caller's back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import SimpleITK as sitk

from CovidCTLib.errors import ModelError
from CovidCTLib.models.runtime.normalization import normalize_slice, orient_lps
from CovidCTLib.volume import CTVolume

T = TypeVar("T")


def _torch_threads() -> int:
    """The intra-op thread count the networks run with (the analysis' ``--threads``)."""
    import torch

    return torch.get_num_threads()


class SliceInferer:
    """Axial slices of ``ct`` on its LPS-oriented grid (``array``), normalised on demand (``normalized``)."""

    def __init__(self, ct: CTVolume) -> None:
        self.ct = ct
        if ct.image.GetDimension() == 2:
            self.array = sitk.GetArrayFromImage(ct.image)[None]
            self.oriented, self.original = ct.image, ""
        else:
            self.original = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.image.GetDirection())
            self.oriented = orient_lps(ct.image)
            # a read-only view of the oriented image (no second copy of the scan); it lives as long as this object
            self.array = sitk.GetArrayViewFromImage(self.oriented)
        self._normalized: dict[int, np.ndarray] = {}

    def normalized(self, z: int) -> np.ndarray:
        """Slice ``z`` normalised at its own resolution (float32; stored as float16 once computed)."""
        if z not in self._normalized:
            self._normalized[z] = normalize_slice(self.array[z], self.ct.intensity, None, None).astype(np.float16)
        return self._normalized[z].astype(np.float32)

    def map_slices(self, fn: Callable[[int], T], zs: Sequence[int], threads: int | None = None) -> list[T]:
        """``[fn(z) for z in zs]`` on ``threads`` threads (default: the torch thread count), in order.

        For the per-slice preparation of network inputs (CLAHE, resizing): numpy and scipy release the GIL in
        their inner loops, so on two cores the slices are ready in a little over half the time. ``fn`` must
        only read shared state (each slice's normalisation is stored under its own key).
        """
        workers = max(1, int(threads if threads is not None else _torch_threads()))
        if workers == 1 or len(zs) < 2:
            return [fn(z) for z in zs]
        with ThreadPoolExecutor(max_workers=min(workers, len(zs)), thread_name_prefix="covidct-slices") as pool:
            return list(pool.map(fn, zs))

    def to_ct_grid(self, array_lps: np.ndarray) -> np.ndarray:
        """A uint8 array on the oriented grid mapped back to the CT's own axis order."""
        img = sitk.GetImageFromArray(np.asarray(array_lps).astype(np.uint8))
        img.CopyInformation(self.oriented)
        back = sitk.GetArrayFromImage(sitk.DICOMOrient(img, self.original))
        if back.shape != self.ct.shape:
            raise ModelError("Internal orientation mapping failed; please report this with the input's geometry.")
        return back

    def from_ct_grid(self, array: np.ndarray) -> np.ndarray:
        """A uint8 array on the CT's grid (e.g. the lung labelmap) on the oriented grid of the slices."""
        img = sitk.GetImageFromArray(np.asarray(array).astype(np.uint8))
        img.CopyInformation(self.ct.image)
        return sitk.GetArrayFromImage(orient_lps(img))
