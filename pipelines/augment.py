"""Training augmentation of decoded clips and images: a random resized crop (one box for every
frame of a clip, so motion stays intact) and a horizontal flip, on CPU in the decode tasks.

The defaults are the run config's (``jepa.config.DataConfig``), the V-JEPA 2 values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from jepa.config import DataConfig


def sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DataConfig.crop_scale,
    aspect: tuple[float, float] = DataConfig.crop_aspect,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width): area ~ U(scale) x frame area, width/height ratio
    log-uniform in ``aspect``. Up to 10 draws must fit in the frame, else the largest centred
    crop with the ratio clamped to ``aspect``."""
    area = height * width
    log_lo, log_hi = np.log(aspect[0]), np.log(aspect[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = float(np.exp(rng.uniform(log_lo, log_hi)))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, min(height, int(round(width / aspect[0])))
    elif ratio > aspect[1]:
        h, w = height, min(width, int(round(height * aspect[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(clip: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the ``box`` of every frame resized to uint8 (T, size, size, 3).

    torch's uint8 bilinear kernel on the channels-last view (antialiased when shrinking): no
    float copy of the clip, and it is the fastest resize torch has on CPU."""
    top, left, h, w = box
    x = torch.from_numpy(np.ascontiguousarray(clip[:, top : top + h, left : left + w]))
    x = x.permute(0, 3, 1, 2)  # (T, 3, h, w) view, channels-last in memory
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def augment_clip(
    clip: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DataConfig.crop_scale,
    aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
) -> np.ndarray:
    """Random resized crop (one box for all frames) to ``size`` x ``size``, then a horizontal flip
    with probability ``flip``: uint8 (T, H, W, 3) -> uint8 (T, size, size, 3)."""
    box = sample_crop(clip.shape[1], clip.shape[2], rng, scale, aspect)
    out = resized_crop(clip, box, size)
    if rng.random() < flip:  # torch's flip: 4-5x numpy's copy of a reversed view of 3-byte pixels
        out = torch.from_numpy(out).flip(2).numpy()
    return out
