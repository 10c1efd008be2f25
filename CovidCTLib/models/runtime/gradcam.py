"""Grad-CAM of the slice classifier, computed in the same forward pass that gives the slice probability.

The network (MONAI ``EfficientNetBN``) is run stage by stage: the stem and the first blocks without
gradients, the last stages from :data:`CAM_STAGE` on with gradients, so one forward gives the logit (the
score) and one short backward gives the gradient of the logit with respect to the features of that stage.
The map is Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_c mean_xy(dlogit/dA_c) * A_c)``, on the feature
grid of the stage (input size / 16 for ``CAM_STAGE`` 4). With the flip test-time augmentation the map of
the flipped crop is flipped back and the two are averaged, as the two probabilities are.
Research software, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from CovidCTLib.errors import ModelError
from CovidCTLib.models.runtime.classifier import standardize

#: The block stage whose output features are explained: EfficientNet-b0 stage 4 (112 channels, stride 16),
#: the last stage before the final down-sampling (stride 32 gives a 3 x 3 grid on the 96 px input).
CAM_STAGE = 4
#: The parts of an EfficientNetBN the staged forward needs.
_REQUIRED = (
    "_conv_stem_padding",
    "_conv_stem",
    "_bn0",
    "_swish",
    "_blocks",
    "_conv_head_padding",
    "_conv_head",
    "_bn1",
    "_avg_pooling",
    "_dropout",
    "_fc",
)


@dataclass
class CamBatch:
    """Probabilities (B,) and Grad-CAM maps (B, h, w), ``>= 0``, on the feature grid of :data:`CAM_STAGE`."""

    probabilities: np.ndarray
    cams: np.ndarray


def check_explainable(model: torch.nn.Module) -> None:
    """Raise :class:`ModelError` unless ``model`` is an EfficientNetBN this module can run stage by stage."""
    missing = [name for name in _REQUIRED if not hasattr(model, name)]
    if missing or len(model._blocks) <= CAM_STAGE:
        raise ModelError(
            "the installed classifier is not a MONAI EfficientNetBN with the expected stages "
            f"(missing {', '.join(missing) or 'block stages'}), so no Grad-CAM heatmap can be made; "
            "install the shipped covid-classifier or run with --no-heatmap."
        )


def staged_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) and the features of :data:`CAM_STAGE` (a leaf that requires grad) for standardised ``x``."""
    with torch.no_grad():
        h = model._swish(model._bn0(model._conv_stem(model._conv_stem_padding(x))))
        for stage in model._blocks[: CAM_STAGE + 1]:
            h = stage(h)
    features = h.detach().requires_grad_(True)
    with torch.enable_grad():
        h = features
        for stage in model._blocks[CAM_STAGE + 1 :]:
            h = stage(h)
        h = model._swish(model._bn1(model._conv_head(model._conv_head_padding(h))))
        logits = model._fc(model._dropout(model._avg_pooling(h).flatten(start_dim=1)))[:, 0]
    return logits, features


def signed_cam(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) and the gradient-weighted feature sums (B, h, w) before the ReLU (model in eval mode)."""
    logits, features = staged_logits(model, x)
    with torch.enable_grad():
        # eval mode: the samples of a batch do not interact, so the gradient of the sum is each sample's own
        (grad,) = torch.autograd.grad(logits.sum(), features)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return logits.detach(), (weights * features).sum(dim=1).detach()


def grad_cam(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) and Grad-CAM maps ``ReLU(signed_cam)`` (B, h, w) for standardised crops."""
    logits, signed = signed_cam(model, x)
    return logits, torch.relu(signed)


def predict_with_cams(
    model: torch.nn.Module, crops_01: torch.Tensor, device: torch.device, batch_size: int = 64, tta: bool = True
) -> CamBatch:
    """Like :func:`CovidCTLib.models.runtime.classifier.predict_crops` (same probabilities), plus Grad-CAM maps.

    ``crops_01``: (B, C, S, S) crops in 0..1 at the network input size. With ``tta`` the probability is the
    mean of the crop's and its left-right flip's, and the map the mean of the crop's and the flipped-back map.
    """
    check_explainable(model)
    model.eval()
    probabilities, cams = [], []
    for i in range(0, crops_01.shape[0], batch_size):
        x = standardize(crops_01[i : i + batch_size]).to(device)
        n = x.shape[0]
        batch = torch.cat([x, torch.flip(x, dims=[-1])]) if tta else x
        logits, maps = grad_cam(model, batch)
        p = torch.sigmoid(logits.float())
        if tta:
            p = 0.5 * (p[:n] + p[n:])
            maps = 0.5 * (maps[:n] + torch.flip(maps[n:], dims=[-1]))
        probabilities.append(p.cpu().numpy().ravel())
        cams.append(maps.float().cpu().numpy())
    if not probabilities:
        return CamBatch(np.zeros(0), np.zeros((0, 1, 1), dtype=np.float32))
    return CamBatch(np.concatenate(probabilities), np.concatenate(cams).astype(np.float32))
