"""The mask stage of every training dataset: JEPA target (and, for images, context) flags per row.

Masks are drawn in the data pipeline, on CPU beside the decode, so the trainer only cuts them.
Each row's blocks come from its own generator seeded by (seed, row key) (``mask_generator``), so
they do not depend on how Ray batched the rows. The flags are not cut here: the trainer cuts each
training batch to its minimum keep-counts with ``jepa.masks.masks_from_flags``, exactly the
reference's rule, whatever batches Ray made.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from jepa.config import ImageMaskConfig, MaskConfig
from jepa.masks import ImageMaskGenerator, mask_generator_for
from pipelines.keys import stable_hash

if TYPE_CHECKING:
    import ray.data


def mask_generator(seed: int, key: int) -> torch.Generator:
    """The torch generator a row's masks are drawn from: seeded by (seed, row key) only."""
    return torch.Generator().manual_seed(stable_hash(f"masks:{seed}:{int(key)}") >> 1)


def add_masks_batch(
    batch: dict[str, np.ndarray],
    *,
    grid: tuple[int, int, int],
    mask_cfgs: list[MaskConfig | dict],
    seed: int,
) -> dict[str, np.ndarray]:
    """Video: adds "target_masks": bool (B, K, N), per clip and mask config, True where a token is
    a target (N = T * H * W of the token ``grid``), uncut."""
    cfgs = [c if isinstance(c, MaskConfig) else MaskConfig(**c) for c in mask_cfgs]
    generators = [mask_generator_for(tuple(grid), c) for c in cfgs]
    keys = batch["key"]
    flags = np.zeros((len(keys), len(cfgs), int(np.prod(grid))), dtype=bool)
    for i, key in enumerate(keys):
        g = mask_generator(seed, key)
        for k, gen in enumerate(generators):
            flags[i, k] = gen.target_flags(1, g)[0].numpy()
    return {**batch, "target_masks": flags}


def add_image_masks_batch(
    batch: dict[str, np.ndarray], *, grid: tuple[int, int, int], cfg: ImageMaskConfig | dict, seed: int
) -> dict[str, np.ndarray]:
    """Images (I-JEPA): adds "target_masks" and "context_masks": bool (B, 1, N) per image (one
    mask config, the union of the target blocks), uncut. Images carry context flags because
    I-JEPA's context is a block minus the targets, not the targets' complement."""
    cfg = cfg if isinstance(cfg, ImageMaskConfig) else ImageMaskConfig(**cfg)
    gen = ImageMaskGenerator(tuple(grid), cfg)
    keys = batch["key"]
    n = int(np.prod(grid))
    target = np.zeros((len(keys), 1, n), dtype=bool)
    context = np.zeros((len(keys), 1, n), dtype=bool)
    for i, key in enumerate(keys):
        t, c = gen.flags(1, mask_generator(seed, key))
        target[i, 0], context[i, 0] = t[0].numpy(), c[0].numpy()
    return {**batch, "target_masks": target, "context_masks": context}


def mask_stage_kwargs(grid: tuple[int, int, int] | None, mask_cfgs: list[MaskConfig | dict] | None,
                      seed: int) -> dict | None:
    """``add_masks_batch``'s keyword arguments (configs as plain dicts, for a Ray task to carry),
    or None when neither a token grid nor mask configs are given."""
    if (grid is None) != (mask_cfgs is None):
        raise ValueError("give both mask_grid and mask_cfgs, or neither")
    if grid is None:
        return None
    cfgs = [dataclasses.asdict(c) if isinstance(c, MaskConfig) else dict(c) for c in mask_cfgs]
    return {"grid": tuple(grid), "mask_cfgs": cfgs, "seed": seed}


def with_masks(ds: ray.data.Dataset, grid: tuple[int, int, int] | None, mask_cfgs: list[MaskConfig] | None,
               seed: int, batch_size: int, num_cpus: float, compute) -> ray.data.Dataset:
    """``ds`` with the video mask stage (``add_masks_batch``) appended when a token grid and mask
    configs are given; ``ds`` itself when neither is."""
    masks = mask_stage_kwargs(grid, mask_cfgs, seed)
    if masks is None:
        return ds
    return ds.map_batches(add_masks_batch, fn_kwargs=masks, batch_size=batch_size, batch_format="numpy",
                          num_cpus=num_cpus, compute=compute)
