"""Synthetic 8-bit chest slices for the classifier tests (two dark lungs; bright blobs when COVID)."""

from __future__ import annotations

import numpy as np


def synthetic_chest(size: int = 96, covid: bool = False, seed: int = 0) -> np.ndarray:
    """8-bit synthetic axial slice: grey body, two dark lungs, bright blobs in the lungs when ``covid``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = np.zeros((size, size), np.float32)
    img[((yy - 0.5) / 0.38) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1] = 170
    for cx in (0.32, 0.68):
        img[((yy - 0.5) / 0.26) ** 2 + ((xx - cx) / 0.13) ** 2 < 1] = 25
    if covid:
        for _ in range(4):
            cy, cx = rng.uniform(0.35, 0.65), rng.choice([0.3, 0.7]) + rng.uniform(-0.04, 0.04)
            img[((yy - cy) / 0.06) ** 2 + ((xx - cx) / 0.05) ** 2 < 1] = 120
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
