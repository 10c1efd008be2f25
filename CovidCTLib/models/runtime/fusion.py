"""Fold inference-mode batch normalisation into the convolution before it (same function, fewer passes).

In evaluation mode a ``BatchNorm2d`` with running statistics is an affine map per channel, so
``bn(conv(x))`` equals one convolution with rescaled weights and a shifted bias (up to float32 rounding:
about 4e-5 in the lung network's probabilities, 0 differing mask voxels on the real volumes). On the CPU
batch norm was 22 % of the lung network's profile; folded, the network measured about 1.15x faster.
The infection U-Net uses instance norm, so nothing of it is folded.

Two layouts of the MONAI networks are folded:

* a MONAI ``Convolution`` whose ``adn`` block starts with the norm (``conv`` -> ``adn.N`` -> dropout ->
  activation): the norm becomes ``Identity``;
* an ``nn.Sequential`` whose child ``i`` is a convolution (or a MONAI ``Convolution`` holding only ``conv``)
  and child ``i + 1`` a ``BatchNorm2d`` (the attention gates): the norm becomes ``Identity``.

Instance norm, group norm and norms placed after the activation are left alone. The folded network is a
new module: the loaded (and cached) one keeps its batch norms, so training code never sees a folded copy.
"""

from __future__ import annotations

import copy
from typing import Any


def _fusable(bn: Any) -> bool:
    import torch

    return isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None


def _fused(conv: Any, bn: Any) -> Any:
    """``conv`` with ``bn`` (evaluation mode) folded in, or None when ``conv`` is not a 2-D convolution."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if isinstance(conv, torch.nn.ConvTranspose2d):
        return fuse_conv_bn_eval(conv, bn, transpose=True)
    if isinstance(conv, torch.nn.Conv2d):
        return fuse_conv_bn_eval(conv, bn)
    return None


def _inner_conv(module: Any) -> tuple[Any, str] | None:
    """(owner, attribute) of the convolution of a plain conv, or of a MONAI ``Convolution`` holding only ``conv``."""
    import torch

    if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
        return None  # a bare conv is replaced in its Sequential directly
    children = dict(module.named_children())
    if set(children) == {"conv"}:
        return module, "conv"
    return None


def fold_batchnorm(module: Any) -> tuple[Any, int]:
    """An evaluation-mode copy of ``module`` with every foldable batch norm folded; (copy, norms folded)."""
    import torch

    net = copy.deepcopy(module).eval()
    folded = 0
    for sub in list(net.modules()):
        adn = getattr(sub, "adn", None)
        conv = getattr(sub, "conv", None)
        if adn is not None and conv is not None:
            names = [name for name, _ in adn.named_children()]
            if names and names[0] == "N" and _fusable(adn.N):
                fused = _fused(conv, adn.N)
                if fused is not None:
                    sub.conv, adn.N = fused, torch.nn.Identity()
                    folded += 1
        if isinstance(sub, torch.nn.Sequential):
            kids = list(sub.children())
            for i in range(len(kids) - 1):
                if not _fusable(kids[i + 1]):
                    continue
                if isinstance(kids[i], torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                    fused = _fused(kids[i], kids[i + 1])
                    sub[i], sub[i + 1] = fused, torch.nn.Identity()
                    folded += 1
                    continue
                inner = _inner_conv(kids[i])
                if inner is not None:
                    owner, attr = inner
                    fused = _fused(getattr(owner, attr), kids[i + 1])
                    if fused is not None:
                        setattr(owner, attr, fused)
                        sub[i + 1] = torch.nn.Identity()
                        folded += 1
    return net, folded
