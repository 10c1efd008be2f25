"""Batch augmentation on tensors (CPU-cheap): geometry (flips, rotation, scale, shift) and intensity
(contrast, brightness, gamma, blur, noise). CLAHE on/off is chosen per sample by the dataset
(:mod:`CovidCTLib.models.data.datasets` keeps both variants), so the networks see plain, CLAHE and HU-derived
slices; vertical and horizontal flips cover the flipped Radiopaedia slices and left/right mirroring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass
class AugmentConfig:
    """Augmentation ranges (probabilities are per sample)."""

    p_hflip: float = 0.5
    p_vflip: float = 0.3
    max_rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.8, 1.2)
    max_shift: float = 0.08  # fraction of the field of view
    p_intensity: float = 0.8
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.05)
    p_blur: float = 0.2


def augment_batch(
    image: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    mask_channels_in_image: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``image`` ``(B, C, H, W)`` float in [0, 1] and integer ``masks`` ``(B, M, H, W)`` alike.

    The last ``mask_channels_in_image`` image channels are binary masks (e.g. the lung mask fed to the
    infection network): they get the geometry but not the intensity changes, and nearest sampling.
    """
    cfg = cfg or AugmentConfig()
    g = generator
    b = image.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    angle = (rand(b) * 2 - 1) * math.radians(cfg.max_rotate_deg)
    scale = cfg.scale[0] + rand(b) * (cfg.scale[1] - cfg.scale[0])
    sx = torch.where(rand(b) < cfg.p_hflip, -1.0, 1.0)
    sy = torch.where(rand(b) < cfg.p_vflip, -1.0, 1.0)
    shift = (rand(b, 2) * 2 - 1) * cfg.max_shift * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * sx, -sin * sy, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * sx, cos * sy, shift[:, 1]
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    n_int = image.shape[1] - mask_channels_in_image
    img = F.grid_sample(image[:, :n_int], grid, mode="bilinear", padding_mode="border", align_corners=False)
    msk_in = masks.float()
    if mask_channels_in_image:
        msk_in = torch.cat([msk_in, image[:, n_int:]], 1)
    msk = F.grid_sample(msk_in, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    # intensity
    do = (rand(b) < cfg.p_intensity).float().view(b, 1, 1, 1)
    gam = torch.exp(math.log(cfg.gamma[0]) + rand(b) * (math.log(cfg.gamma[1]) - math.log(cfg.gamma[0]))).view(
        b, 1, 1, 1
    )
    con = (cfg.contrast[0] + rand(b) * (cfg.contrast[1] - cfg.contrast[0])).view(b, 1, 1, 1)
    bri = ((rand(b) * 2 - 1) * cfg.brightness).view(b, 1, 1, 1)
    out = img.clamp(0, 1) ** gam
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = (out - mean) * con + mean + bri
    blur = (rand(b) < cfg.p_blur).view(b, 1, 1, 1)
    if bool(blur.any()):
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3).repeat(out.shape[1], 1, 1, 1)
        blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), k2, groups=out.shape[1])
        out = torch.where(blur, blurred, out)
    std = (cfg.noise_std[0] + rand(b) * (cfg.noise_std[1] - cfg.noise_std[0])).view(b, 1, 1, 1)
    out = out + torch.randn(out.shape, generator=g) * std
    out = do * out.clamp(0, 1) + (1 - do) * img.clamp(0, 1)

    n_m = masks.shape[1]
    out_masks = msk[:, :n_m].round().to(masks.dtype)
    if mask_channels_in_image:
        out = torch.cat([out, msk[:, n_m:]], 1)
    return out, out_masks
