"""Decoded uint8 frames -> normalised float clips for the encoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clips_to_tensor(clips: Tensor | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W) with ImageNet mean/std.

    Moves the uint8 data first so the host-to-device copy is a quarter of the float size.
    """
    x = torch.as_tensor(clips)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips (B, T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(device, non_blocking=True).permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std
