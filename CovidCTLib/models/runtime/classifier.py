"""COVID vs non-COVID slice classifier: network, lung cropping, intensity mapping and pooling.

The network is MONAI's ``EfficientNetBN`` (2-D, one output logit, trained from scratch: no pretrained
weights are downloaded). Every slice is cropped to the bounding box of its lungs (plus a margin),
resized to the network input size and standardised, the same way in training and at inference.
Slice probabilities are pooled to one scan probability by the mean over lung-containing slices;
the mean of the top ``TOP_K_FRACTION`` slices is reported as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

#: Share of the (most suspicious) slices averaged for the top-k score (at least one slice).
TOP_K_FRACTION = 0.10
#: Margin around the lung bounding box, as a fraction of the box size on each side.
CROP_MARGIN = 0.08
#: Below this share of the image area the lung mask is not trusted and the whole image is used.
MIN_LUNG_FRACTION = 0.02
#: An automatic (Otsu) lung box smaller than this share of the image is distrusted (whole image used).
AUTO_MIN_BOX_FRACTION = 0.3
#: Side of the cached / intermediate lung crop, resized to the network input afterwards.
CROP_SIZE = 256


@dataclass(frozen=True)
class ClassifierConfig:
    """What defines a classifier: architecture, input size, channels and preprocessing."""

    arch: str = "efficientnet-b0"
    input_size: int = 160
    in_channels: int = 1


def build_efficientnet(model_name: str = "efficientnet-b0", in_channels: int = 1) -> torch.nn.Module:
    """Registry builder: an untrained 2-D ``EfficientNetBN`` with one output logit (no pretrained weights)."""
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN(
        model_name,
        pretrained=False,
        progress=False,
        spatial_dims=2,
        in_channels=in_channels,
        num_classes=1,
    )
    # MONAI initialises the head uniformly in +-1/sqrt(out_features), i.e. +-1 for a single logit, which
    # gives logits of +-20 at the start; a small head makes from-scratch training stable.
    torch.nn.init.normal_(net._fc.weight, std=0.01)
    torch.nn.init.zeros_(net._fc.bias)
    # MONAI keeps TensorFlow's BN momentum (0.01 in PyTorch terms): with a few hundred steps per run the
    # running statistics would stay near their initial values and evaluation outputs would be constant.
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return net


def build_classifier(config: ClassifierConfig) -> torch.nn.Module:
    """The network for ``config`` (see :func:`build_efficientnet`)."""
    return build_efficientnet(config.arch, config.in_channels)


def to_unit(array: np.ndarray, intensity: str) -> np.ndarray:
    """Map a 2-D slice to float32 0..1 with the shared normalisation (HU: lung window; no CLAHE).

    ``CovidCTLib.models.runtime.normalization.normalize_slice`` (window, per-slice min-max) is the one definition
    used for HU volumes and 8-bit images alike. The classifier standardises every crop afterwards
    (zero mean, unit variance), so any affine change of the 0..1 range does not change its input.
    """
    from CovidCTLib.models.runtime.normalization import normalize_slice

    return normalize_slice(to_gray(array), "HU" if intensity == "HU" else "8bit", clahe=False)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Collapse RGB(A) or (1, y, x) arrays to a 2-D greyscale array."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    return a


def lung_mask_from_unit(unit: np.ndarray) -> np.ndarray:
    """Robust lung mask for a display-range slice: dark regions enclosed by the body (Otsu).

    Dark connected regions that touch the image border are outside air; of the enclosed dark
    regions the (up to three) largest, each at least 1 % of the image, are kept as lungs.
    """
    from skimage.filters import threshold_otsu

    img = ndimage.gaussian_filter(unit.astype(np.float32), 1.0)
    if float(img.max() - img.min()) < 1e-3:
        return np.zeros(unit.shape, dtype=bool)
    dark = img < threshold_otsu(img)
    dark = ndimage.binary_opening(dark, iterations=1)
    labels, n = ndimage.label(dark)
    if n == 0:
        return np.zeros(unit.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    min_size = 0.01 * unit.size
    keep = [i + 1 for i in np.argsort(sizes)[::-1] if (i + 1) not in border and sizes[i] >= min_size][:3]
    return np.isin(labels, keep)


def lung_bbox(
    mask: np.ndarray, margin: float = CROP_MARGIN, min_box_fraction: float = 0.0
) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the mask plus a margin; None when the mask is empty or too small.

    ``min_box_fraction``: the box must cover at least this share of the image, else None (used for
    automatic masks of images that are already cropped to the chest, where a small box is a mistake).
    """
    if mask is None or mask.sum() < MIN_LUNG_FRACTION * mask.size:
        return None
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    h, w = mask.shape
    y0, y1 = max(0, y0 - my), min(h, y1 + my)
    x0, x1 = max(0, x0 - mx), min(w, x1 + mx)
    if (y1 - y0) < 0.15 * h or (x1 - x0) < 0.15 * w or (y1 - y0) * (x1 - x0) < min_box_fraction * h * w:
        return None
    return int(y0), int(y1), int(x0), int(x1)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize of a 2-D float image to ``size x size``."""
    from skimage.transform import resize as _resize

    return _resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def crop_to_lungs(unit: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, bool]:
    """Crop a 0..1 slice to the lung box (with margin) and resize; whole image when no usable mask.

    Returns the ``size x size`` float32 crop and whether a lung box was used.
    """
    auto = mask is None
    if auto:
        mask = lung_mask_from_unit(unit)
    box = lung_bbox(mask, min_box_fraction=AUTO_MIN_BOX_FRACTION if auto else 0.0)
    if box is None:
        return resize(unit, size), False
    y0, y1, x0, x1 = box
    return resize(unit[y0:y1, x0:x1], size), True


def standardize(batch: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean / unit variance (robust to the very varied contrast of paper figures)."""
    dims = tuple(range(1, batch.ndim))
    mean = batch.mean(dim=dims, keepdim=True)
    std = batch.std(dim=dims, keepdim=True).clamp_min(0.02)
    return (batch - mean) / std


def pool_probabilities(
    probabilities: list[float] | np.ndarray, top_fraction: float = TOP_K_FRACTION
) -> tuple[float, float, int]:
    """Scan probability (mean), top-k mean and k for a set of slice probabilities.

    k = max(1, ceil(top_fraction * n)). Raises ValueError for an empty input.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.size == 0:
        raise ValueError("no slice probabilities to pool")
    k = max(1, int(np.ceil(top_fraction * p.size)))
    top = np.sort(p)[::-1][:k]
    return float(p.mean()), float(top.mean()), k


def quantize_8bit(unit: np.ndarray) -> np.ndarray:
    """Round to the 8-bit grid the training images had (so HU inputs see the same value levels)."""
    return np.round(unit * 255.0) / 255.0


@torch.no_grad()
def predict_crops(
    model: torch.nn.Module, crops_01: torch.Tensor, device: torch.device, batch_size: int = 64, tta: bool = True
) -> np.ndarray:
    """COVID probability for (B, 1, S, S) 0..1 crops; ``tta`` averages with the left-right flip."""
    model.eval()
    out = []
    for i in range(0, crops_01.shape[0], batch_size):
        x = standardize(crops_01[i : i + batch_size]).to(device)
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            p = torch.sigmoid(model(x).float())
            if tta:
                p = 0.5 * (p + torch.sigmoid(model(torch.flip(x, dims=[-1])).float()))
        out.append(p.float().cpu().numpy().ravel())
    return np.concatenate(out) if out else np.zeros(0)
