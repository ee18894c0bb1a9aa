"""Small reference networks to try vgcore on any torch module (also from the command line:
``vgcore analyze --module vgcore.reference.nets:transformer --input-shape 4,32,64``).

Each factory returns a freshly initialised ``torch.nn.Module`` in eval mode with PyTorch's
default initialisation (seed it with ``torch.manual_seed`` first).
"""

from __future__ import annotations

from typing import Any

__all__ = ["deep_sigmoid_net", "plain_cnn", "resnet", "transformer"]


def transformer(
    d_model: int = 64, layers: int = 6, *, heads: int = 4, norm_first: bool = False
) -> Any:
    """A Transformer encoder, ``(B, S, d_model) -> (B, S, d_model)`` (batch first, ``heads``
    heads, feed-forward ``4 d_model``, no dropout); post-LN by default, pre-LN with
    ``norm_first``."""
    import torch

    layer = torch.nn.TransformerEncoderLayer(
        d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    return torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def deep_sigmoid_net(width: int = 64, depth: int = 20) -> Any:
    """A custom module (not an ``nn.Sequential``): ``depth`` blocks ``sigmoid(W h + b)`` held
    in a ``ModuleList``, ``(B, width) -> (B, width)``; the classic vanishing-gradient case."""
    import torch

    class SigmoidNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Sigmoid())
                for _ in range(depth)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    return SigmoidNet().eval()


def plain_cnn(channels: int = 16, depth: int = 8, *, skips: bool = False) -> Any:
    """``depth`` 3x3 convolution + BatchNorm + ReLU blocks on ``(B, 3, H, W)`` images, with
    identity skips around each block (``skips=True``, He et al. 2016) or without."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn(self.conv(x)))
            return x + y if skips else y

    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), *[Block() for _ in range(depth)]
    ).eval()


def resnet(channels: int = 64, blocks: int = 8, classes: int = 10) -> Any:
    """A ResNet-style CNN on ``(B, 3, H, W)`` images: a 3x3 stem, ``blocks`` basic blocks
    ``relu(x + bn(conv(relu(bn(conv(x))))))`` (He et al. 2016) and a pooled linear head."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + x)

    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        ),
        *[BasicBlock() for _ in range(blocks)],
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)),
    ).eval()
