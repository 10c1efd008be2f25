"""The trained-network segmenters behind the segmentation protocols (:mod:`CovidCTLib.models.runtime`).

The network of each task is the installed model whose manifest names that task
(:func:`CovidCTLib.models.runtime.inference.model_name`). The lung and infection segmenters of one analysis
share a :class:`~CovidCTLib.models.runtime.slice_inferer.SliceInferer`, so every slice is normalised once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from CovidCTLib.models.runtime.slice_inferer import SliceInferer
from CovidCTLib.progress import Reporter
from CovidCTLib.volume import CTVolume


@dataclass
class _SharedSlices:
    """The slice inferer of the CT being analysed (replaced when another CT comes)."""

    inferer: SliceInferer | None = None

    def for_ct(self, ct: CTVolume) -> SliceInferer:
        if self.inferer is None or self.inferer.ct is not ct:
            self.inferer = SliceInferer(ct)
        return self.inferer


@dataclass
class ModelLungs:
    """The lung network, its manifest threshold, the shared lung post-processing and the right/left split."""

    device: str = "auto"
    shared: _SharedSlices = field(default_factory=_SharedSlices)
    method: str = "model"

    def segment(self, ct: CTVolume, reporter: Reporter | None = None) -> np.ndarray:
        from CovidCTLib.models.runtime import inference

        return inference.segment_lungs_model(ct, self.device, reporter, inferer=self.shared.for_ct(ct))

    def versions(self) -> dict[str, str]:
        return _version_used("lung", self.device)


@dataclass
class ModelInfection:
    """The infection network fed the CT plus the lung mask, on each slice's lung box."""

    device: str = "auto"
    shared: _SharedSlices = field(default_factory=_SharedSlices)
    method: str = "model"

    def segment(self, ct: CTVolume, lungs: np.ndarray, reporter: Reporter | None = None) -> np.ndarray:
        from CovidCTLib.models.runtime import inference

        try:
            return inference.segment_infection_model(ct, lungs, self.device, reporter, inferer=self.shared.for_ct(ct))
        finally:
            self.shared.inferer = None  # lungs -> infection is done with this CT: free its slices

    def versions(self) -> dict[str, str]:
        return _version_used("infection", self.device)


@dataclass
class ModelSlices:
    """The lung and infection networks on 8-bit images."""

    device: str = "auto"
    method: str = "model"

    def segment_images(self, task: str, images: list[np.ndarray]) -> list[np.ndarray]:
        from CovidCTLib.models.runtime import inference

        return inference.segment_slice_images(task, images, device=self.device)


def _version_used(task: str, device: str) -> dict[str, str]:
    """``{task: "name version"}`` of the network this segmenter ran (the loaded, verified model: no re-hashing)."""
    from CovidCTLib.models.runtime import inference

    model = inference.get_model(inference.model_name(task), device)
    return {task: f"{model.name} {model.version}"}


def shared_slices() -> _SharedSlices:
    """A fresh shared slice holder for one lung + infection pair."""
    return _SharedSlices()
