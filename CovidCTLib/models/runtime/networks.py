"""Network builders referenced by model manifests (``architecture.builder``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import AttentionUnet, UNet


def attention_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.0,
) -> torch.nn.Module:
    """2-D MONAI AttentionUnet (lung model: channels = neighbouring slices, classes = background/lung)."""
    return AttentionUnet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple([2] * (len(channels) - 1)),
        dropout=dropout,
    )


def unet(
    in_channels: int = 2,
    out_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """2-D MONAI residual UNet (infection model: CT + lung mask in; background/GGO/consolidation out)."""
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=num_res_units,
        dropout=dropout,
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
