"""COVID slice classifier on the features of the segmentation networks (issue 13.4: encoder transfer).

The shipped lung Attention U-Net and infection U-Net were trained on CT slices (HU volumes and 8-bit
images) to find lungs, ground glass and consolidation. Their feature maps describe exactly what the slice
classifier needs, so :class:`SegFeatureClassifier` holds frozen copies of both networks and a head (2.1: an
ensemble of small perceptrons, :class:`MLPEnsembleHead`; 2.0: one linear layer) on pooled statistics (mean,
max, standard deviation over the map) of

* the four encoder levels of the lung network (its decoder is not needed: the slice's lung mask is given),
* all eight encoder and decoder levels of the infection network, run on the lung-box crop with the mask.

The copies make the classifier self-contained: retraining a segmentation model later does not change it.
The inputs are built by :func:`slice_inputs` for training images and CT slices alike (8-bit display range).
Grad-CAM (:meth:`SegFeatureClassifier.logits_and_cams`) explains the logit on the last infection-decoder
map, which lies on the infection crop. Research software, not a diagnosis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.networks.layers import SkipConnection
from torch import nn

from CovidCTLib.models.runtime.networks import attention_unet, unet

#: Pooled statistics of every tapped map, in this order.
STATS = ("mean", "max", "std")


def pool_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, sum of 3 x channels): mean, max and standard deviation of each (B, C, H, W) map over H, W."""
    parts = []
    for m in maps:
        flat = m.flatten(2)
        parts += [flat.mean(-1), flat.amax(-1), flat.std(-1)]
    return torch.cat(parts, dim=1)


def lung_encoder_maps(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every encoder level of a MONAI AttentionUnet (the decoder is not run)."""
    seq = net.model
    h = seq[0](x)
    maps = [h]
    layer = seq[1]
    while True:
        sub = layer.submodule
        if isinstance(sub, nn.Sequential):
            h = sub[0](h)
            maps.append(h)
            layer = sub[1]
        else:
            maps.append(sub(h))
            return maps


def infection_taps(net: nn.Module) -> list[nn.Module]:
    """Encoder levels, bottom and decoder levels (deep to shallow) of a MONAI UNet, without the output layer."""
    seq = net.model
    taps, ups = [seq[0]], []
    node = seq[1]
    while isinstance(node, SkipConnection):
        inner = node.submodule
        if isinstance(inner, nn.Sequential) and len(inner) == 3:
            taps.append(inner[0])
            ups.append(inner[2])
            node = inner[1]
        else:
            taps.append(inner)
            break
    return taps + ups[::-1]


class MLPEnsembleHead(nn.Module):
    """The mean logit of ``members`` one-hidden-layer ReLU perceptrons on the raw pooled features.

    Parameters: ``w1`` (E, F, H), ``b1`` (E, H), ``w2`` (E, H), ``b2`` (E,), as
    :meth:`CovidCTLib.models.training.mlp_head.HeadEnsemble.stacked` gives them (standardisation folded in).
    """

    def __init__(self, n_features: int, hidden: int, members: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(members, n_features, hidden))
        self.b1 = nn.Parameter(torch.zeros(members, hidden))
        self.w2 = nn.Parameter(torch.zeros(members, hidden))
        self.b2 = nn.Parameter(torch.zeros(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) features -> (B, 1) mean logit of the members."""
        h = torch.relu(torch.matmul(x.to(self.w1.dtype).unsqueeze(0), self.w1) + self.b1[:, None, :])  # (E, B, H)
        logits = (h * self.w2[:, None, :]).sum(-1) + self.b2[:, None]  # (E, B)
        return logits.mean(0)[:, None]


def make_head(n_features: int, spec: dict[str, Any] | None) -> nn.Module:
    """The classifier head a manifest's ``architecture.kwargs.head`` describes (None: linear); the kinds and
    their fields are validated with the manifest (``architectures.HEAD_FIELDS``)."""
    kind = (spec or {}).get("kind", "linear")
    if kind == "linear":
        return nn.Linear(n_features, 1)
    if kind == "mlp-ensemble":
        return MLPEnsembleHead(n_features, int(spec["hidden"]), int(spec["members"]))  # type: ignore[index]
    raise ValueError(f"unknown classifier head {kind!r} (see architectures.HEAD_FIELDS)")


class SegFeatureClassifier(nn.Module):
    """Frozen lung / infection segmentation networks + a head on their pooled feature maps.

    ``head``: None or ``{"kind": "linear"}`` (2.0.x), or ``{"kind": "mlp-ensemble", "hidden": H, "members": E}``
    (:class:`MLPEnsembleHead`, 2.1.0).
    """

    def __init__(
        self,
        lung_channels: Sequence[int] = (16, 32, 64, 128),
        infection_channels: Sequence[int] = (16, 32, 64, 128, 256),
        infection_res_units: int = 1,
        n_features: int | None = None,
        head: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.lung = attention_unet(1, 2, lung_channels)
        self.infection = unet(2, 3, infection_channels, infection_res_units)
        self._taps = infection_taps(self.infection)
        count = self.feature_count()
        if n_features is not None and n_features != count:
            raise ValueError(f"the networks give {count} features, the head expects {n_features}")
        self.head = make_head(count, head)

    def feature_count(self) -> int:
        """Length of the pooled feature vector of these networks (one small forward pass)."""
        with torch.no_grad():
            return int(self.features(torch.zeros(1, 1, 32, 32), torch.zeros(1, 2, 32, 32)).shape[1])

    def infection_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped maps of one infection-network forward pass (its output itself is not used)."""
        kept: list[torch.Tensor] = []
        handles = [t.register_forward_hook(lambda _m, _i, out: kept.append(out)) for t in self._taps]
        try:
            self.infection(x)
        finally:
            for h in handles:
                h.remove()
        return kept  # hooks fire in execution order: encoder, bottom, decoder (deep to shallow) = tap order

    def features(self, lung_in: torch.Tensor, infection_in: torch.Tensor) -> torch.Tensor:
        """(B, n_features) pooled features of (B, 1, S, S) lung inputs and (B, 2, s, s) infection inputs."""
        return torch.cat(
            [pool_maps(lung_encoder_maps(self.lung, lung_in)), pool_maps(self.infection_maps(infection_in))], 1
        )

    def forward(self, lung_in: torch.Tensor, infection_in: torch.Tensor) -> torch.Tensor:
        """(B,) logits of a COVID-19 pattern."""
        return self.head(self.features(lung_in, infection_in))[:, 0]

    def logits_and_cams(self, lung_in: torch.Tensor, infection_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and Grad-CAM maps (B, s, s) >= 0 on the last infection-decoder map (the crop's grid)."""
        with torch.no_grad():
            lung = pool_maps(lung_encoder_maps(self.lung, lung_in))
        with torch.enable_grad():
            maps = self.infection_maps(infection_in)
            logits = self.head(torch.cat([lung, pool_maps(maps)], 1))[:, 0]
            (grad,) = torch.autograd.grad(logits.sum(), maps[-1])
        cams = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * maps[-1]).sum(dim=1))
        return logits.detach(), cams.detach()


@dataclass
class SliceInputs:
    """Network inputs of one slice and the infection crop box (rows, columns) in the slice."""

    lung: np.ndarray  # (1, S, S) float32 0..1
    infection: np.ndarray  # (2, s, s) float32: normalised crop, lung mask
    box: tuple[int, int, int, int]  # y0, y1, x0, x1


def slice_inputs(gray: np.ndarray, lung_mask: np.ndarray, lung_size: int, infection_size: int) -> SliceInputs:
    """Inputs of one slice in the 8-bit display range (any scale: each input is min-max normalised).

    ``lung_mask`` (bool, the slice's shape): the lungs of that slice. The infection input is the lung box
    (10 % margin) of the normalised slice and of the mask; when the box covers most of the image (a
    lung-region crop) the mask channel is all ones, as in the 2-D infection path.
    """
    from CovidCTLib.models.runtime.normalization import (
        infection_input,
        is_lung_region_crop,
        lung_box,
        normalize_slice,
    )

    gray = np.asarray(gray, dtype=np.float32)
    norm = normalize_slice(gray, "8bit", False, None)
    box = lung_box(lung_mask) or (slice(0, gray.shape[0]), slice(0, gray.shape[1]))
    mask = np.ones_like(lung_mask) if is_lung_region_crop(box, gray.shape) else lung_mask
    infection = infection_input(norm, mask, box, infection_size)
    lung = normalize_slice(gray, "8bit", False, lung_size)[None]
    return SliceInputs(lung, infection, (box[0].start, box[0].stop, box[1].start, box[1].stop))


@dataclass
class BatchInputs:
    """Stacked network inputs of several slices (on one device) and each slice's infection crop box."""

    lung: torch.Tensor  # (B, 1, S, S)
    infection: torch.Tensor  # (B, 2, s, s)
    boxes: list[tuple[int, int, int, int]]


def batch_inputs(
    grays: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    lung_size: int,
    infection_size: int,
    device: torch.device | str = "cpu",
) -> BatchInputs:
    """:func:`slice_inputs` of every slice, stacked: the one input path of training and scoring."""
    inputs = [slice_inputs(g, m, lung_size, infection_size) for g, m in zip(grays, masks, strict=True)]
    lung = torch.from_numpy(np.stack([i.lung for i in inputs])).to(device)
    infection = torch.from_numpy(np.stack([i.infection for i in inputs])).to(device)
    return BatchInputs(lung, infection, [i.box for i in inputs])
