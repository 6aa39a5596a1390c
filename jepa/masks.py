"""Multiblock-3D masks (V-JEPA): a few spatial rectangles, each a tube through all time steps;
future masks (``FutureMaskGenerator``): the clip's first time steps predict the rest.

Targets are the union of the blocks, the context is everything else. As in the reference:
one block size per batch (drawn from the scale and aspect-ratio range), independent block
positions per clip, a clip is redrawn if its blocks would leave no context, and both index
lists are cut to the batch minimum (keeping the lowest indices) so they stack into tensors.
The cut matters for the statistics: at batch 24 on an 8x16x16 grid the defaults give about
24% / 6% context and 48% / 71% targets, less than the per-clip coverage.
Everything is vectorised over the batch so it is cheap enough for data-loading workers.

The data pipeline (``pipelines.masking.add_masks_batch``) draws each clip's blocks on its own
(``target_flags`` with a batch of one: block size per clip, not per batch) and ships the uncut
(K, N) flags with the clip; the trainer cuts whatever batch it gets with ``masks_from_flags``.
Drawing the size per clip lowers the averages slightly (measured at batch 24 on 8x16x16: context
23.7% / 5.7%, targets 46.4% / 69.1%, against 24.3% / 6.5% and 47.0% / 70.2% per batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from jepa.config import ImageMaskConfig, MaskConfig


@dataclass
class MaskBatch:
    context: Tensor
    """(B, Nc) int64 token indices the encoder sees, ascending per row."""
    target: Tensor
    """(B, Nt) int64 token indices the predictor must fill in, ascending per row."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        return MaskBatch(
            self.context.to(device, non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
        )


class MultiBlockMaskGenerator:
    """Samples MaskBatches for a (T, H, W) token grid and one MaskConfig."""

    def __init__(self, grid: tuple[int, int, int], cfg: MaskConfig):
        self.grid = grid
        self.cfg = cfg
        _, height, width = grid
        self.block_area = int(height * width * cfg.spatial_scale)
        if self.block_area == 0:
            raise ValueError(f"spatial_scale {cfg.spatial_scale} covers no token of a {height}x{width} grid")

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        """(height, width) in tokens of this batch's blocks; aspect ratio = height / width."""
        lo, hi = self.cfg.aspect_ratio
        aspect = lo + torch.rand(1, generator=generator).item() * (hi - lo)
        _, height, width = self.grid
        h = min(int(round(math.sqrt(self.block_area * aspect))), height)
        w = min(int(round(math.sqrt(self.block_area / aspect))), width)
        return h, w

    def _covered(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """(B, H, W) bool: spatial cells under at least one block, never all of them."""
        _, height, width = self.grid
        h, w = self.block_size(generator)
        if h == height and w == width:
            raise ValueError(f"one block covers the whole {height}x{width} grid: no context left")
        # Positions come from the torch generator; the geometry runs in numpy, whose per-call cost
        # is a tenth of torch's on arrays this small (the data pipeline calls this once per clip).
        rows = np.arange(height).reshape(1, 1, height, 1)
        cols = np.arange(width).reshape(1, 1, 1, width)
        covered = np.empty((batch_size, height, width), dtype=bool)
        todo = np.arange(batch_size)
        while len(todo):
            shape = (len(todo), self.cfg.num_blocks, 1, 1)
            top = torch.randint(0, height - h + 1, shape, generator=generator).numpy()
            left = torch.randint(0, width - w + 1, shape, generator=generator).numpy()
            blocks = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # (n, k, H, W)
            covered[todo] = blocks.any(axis=1)
            todo = todo[covered[todo].reshape(len(todo), -1).all(axis=1)]  # redraw clips left without context
        return torch.from_numpy(covered)

    def target_flags(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """(B, N) bool over the flattened (T, H, W) token grid: True = target, False = context.

        Uncut, so each row keeps its own counts; ``masks_from_flags`` cuts a batch of them."""
        frames = self.grid[0]
        covered = self._covered(batch_size, generator)  # (B, H, W)
        return covered.unsqueeze(1).expand(-1, frames, -1, -1).flatten(1)  # (B, N) tubes

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        return cut_to_batch_minimum(self.target_flags(batch_size, generator))


class FutureMaskGenerator:
    """Future prediction on a (T, H, W) token grid: the first ``context_steps`` token time steps
    are the context, every later one a target. The same for every clip, so no batch cut happens;
    the predictor learns to roll the clip forward, which is what surprise scoring asks of it."""

    def __init__(self, grid: tuple[int, int, int], cfg: MaskConfig):
        self.grid = grid
        self.context_steps = cfg.context_steps or grid[0] // 2
        if not 0 < self.context_steps < grid[0]:
            raise ValueError(f"future masks need 0 < context_steps < {grid[0]} token time steps, "
                             f"got {self.context_steps}")

    def target_flags(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, N) bool over the flattened (T, H, W) grid: True from time step ``context_steps`` on."""
        steps, height, width = self.grid
        future = torch.arange(steps) >= self.context_steps  # (T,)
        return future.view(1, steps, 1).expand(batch_size, steps, height * width).flatten(1)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> MaskBatch:
        return cut_to_batch_minimum(self.target_flags(batch_size, generator))


def mask_generator_for(grid: tuple[int, int, int], cfg: MaskConfig) -> MultiBlockMaskGenerator | FutureMaskGenerator:
    """The generator of ``cfg.kind`` on token ``grid``."""
    return FutureMaskGenerator(grid, cfg) if cfg.kind == "future" else MultiBlockMaskGenerator(grid, cfg)


def cut_to_batch_minimum(target: Tensor, context: Tensor | None = None) -> MaskBatch:
    """(B, N) bool target flags -> MaskBatch, both index lists cut to the batch minimum.

    The context is the complement of the targets unless (B, N) bool ``context`` flags are given
    (I-JEPA: the context block minus the targets)."""
    if target.dtype != torch.bool or target.ndim != 2:
        raise ValueError(f"expected (B, N) bool target flags, got {target.dtype} {tuple(target.shape)}")
    if context is None:
        context = ~target
    elif context.dtype != torch.bool or context.shape != target.shape:
        raise ValueError(f"context flags {context.dtype} {tuple(context.shape)} do not match targets {tuple(target.shape)}")
    n_target = int(target.sum(dim=1).min())
    n_context = int(context.sum(dim=1).min())
    # A stable sort on the 0/1 key lists the wanted indices first, in ascending order.
    target_ids = torch.sort((~target).to(torch.uint8), dim=1, stable=True).indices[:, :n_target]
    context_ids = torch.sort((~context).to(torch.uint8), dim=1, stable=True).indices[:, :n_context]
    return MaskBatch(context=context_ids, target=target_ids)


def masks_from_flags(flags: Tensor, context: Tensor | None = None) -> list[MaskBatch]:
    """(B, K, N) bool per-clip target flags (one row per mask config, as the data pipeline makes
    them) -> one MaskBatch per config, cut to this batch's minimum as the reference does.

    Video clips carry only target flags (context = their complement); images (I-JEPA) also carry
    (B, K, N) ``context`` flags, since their context is a block minus the targets."""
    if flags.ndim != 3:
        raise ValueError(f"expected (B, K, N) target flags, got shape {tuple(flags.shape)}")
    if context is not None and context.shape != flags.shape:
        raise ValueError(f"context flags {tuple(context.shape)} do not match target flags {tuple(flags.shape)}")
    return [cut_to_batch_minimum(flags[:, k].to(torch.bool), None if context is None else context[:, k].to(torch.bool))
            for k in range(flags.shape[1])]


def sample_masks(
    grid: tuple[int, int, int],
    mask_cfgs: list[MaskConfig],
    batch_size: int,
    generator: torch.Generator,
) -> list[MaskBatch]:
    """One MaskBatch per mask config for a batch of clips on token grid (T, H, W)."""
    return [mask_generator_for(grid, cfg)(batch_size, generator) for cfg in mask_cfgs]


# ---------------------------------------------------------------------------------------------
# I-JEPA multiblock-2D masks (image mode).


class ImageMaskGenerator:
    """I-JEPA masks on a (1, H, W) token grid: ``num_targets`` target blocks (area in
    ``target_scale``, height/width in ``target_aspect``) and one square context block (area in
    ``context_scale``); targets = the union of the target blocks, context = the context block minus
    that union. As in I-JEPA, one target and one context block size per call, positions per image;
    an image left with fewer than ``min_keep`` context tokens is redrawn.

    Deviation from I-JEPA: its predictor runs once per target block (4 predictions per image);
    ours handles one mask config per call, so the union of the blocks is one config (K = 1), the
    way V-JEPA treats its blocks."""

    def __init__(self, grid: tuple[int, int, int], cfg: ImageMaskConfig, min_keep: int = 1):
        if grid[0] != 1:
            raise ValueError(f"image masks need a (1, H, W) token grid, got {grid}")
        self.grid = grid
        self.cfg = cfg
        self.min_keep = min_keep

    def _size(self, scale: tuple[float, float], aspect: tuple[float, float], g: torch.Generator,
              limit: int) -> tuple[int, int]:
        """(height, width) in tokens; ``limit`` is subtracted from the grid side as a cap."""
        _, height, width = self.grid
        u = torch.rand(2, generator=g)
        area = height * width * (scale[0] + float(u[0]) * (scale[1] - scale[0]))
        ratio = aspect[0] + float(u[1]) * (aspect[1] - aspect[0])
        h = max(1, min(int(round(math.sqrt(area * ratio))), height - limit))
        w = max(1, min(int(round(math.sqrt(area / ratio))), width - limit))
        return h, w

    def flags(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(target, context): (B, N) bool each over the flattened (1, H, W) grid, disjoint, uncut."""
        _, height, width = self.grid
        c = self.cfg
        th, tw = self._size(c.target_scale, c.target_aspect, generator, limit=1)  # never the whole grid
        ch, cw = self._size(c.context_scale, (1.0, 1.0), generator, limit=0)
        rows = torch.arange(height).view(1, 1, height, 1)
        cols = torch.arange(width).view(1, 1, 1, width)

        def blocks(n: int, k: int, h: int, w: int) -> Tensor:  # (n, H, W): union of k blocks
            top = torch.randint(0, height - h + 1, (n, k, 1, 1), generator=generator)
            left = torch.randint(0, width - w + 1, (n, k, 1, 1), generator=generator)
            return ((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)).any(dim=1)

        target = torch.empty(batch_size, height, width, dtype=torch.bool)
        context = torch.empty_like(target)
        todo = torch.arange(batch_size)
        for _ in range(1000):
            if not len(todo):
                break
            target[todo] = blocks(len(todo), c.num_targets, th, tw)
            context[todo] = blocks(len(todo), 1, ch, cw) & ~target[todo]
            todo = todo[context[todo].flatten(1).sum(dim=1) < self.min_keep]
        if len(todo):
            raise ValueError(f"image masks on a {height}x{width} grid leave fewer than {self.min_keep} context tokens")
        return target.flatten(1), context.flatten(1)

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        return cut_to_batch_minimum(*self.flags(batch_size, generator))
