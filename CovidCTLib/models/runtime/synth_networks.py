"""The CycleGAN generator of the COVID synthesizer (``covidct synthesize``): a small ResNet image-to-image net.

Layout (Johnson et al. style, as used by CycleGAN): a 7x7 stem, ``n_down`` stride-2 convolutions, ``n_blocks``
residual blocks, ``n_down`` transposed convolutions and a 7x7 output convolution with ``tanh``. Instance
normalisation, reflection padding. Input and output are 1-channel images in ``[-1, 1]`` whose sides are a
multiple of ``2 ** n_down``.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """1-channel image -> 1-channel image of the same size (values in ``[-1, 1]``)."""

    def __init__(self, in_channels: int = 1, base: int = 16, n_down: int = 2, n_blocks: int = 4) -> None:
        super().__init__()
        self.multiple = 2**n_down
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base, 7),
            nn.InstanceNorm2d(base),
            nn.ReLU(True),
        ]
        ch = base
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, in_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"generator input sides must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        return self.net(x)


def cyclegan_resnet(in_channels: int = 1, base: int = 16, n_down: int = 2, n_blocks: int = 4) -> ResnetGenerator:
    """The generator named ``cyclegan-resnet`` in :mod:`CovidCTLib.models.runtime.architectures`."""
    return ResnetGenerator(in_channels, base, n_down, n_blocks)
