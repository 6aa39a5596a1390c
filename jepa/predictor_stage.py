"""Predictor-only training on frozen encoders (config `predictor_stage`).

With the encoders frozen, what the predictor sees and regresses for a clip never changes: encode
each clip once (the context encoder on the future mask's context steps, the target encoder on the
rest) and train the predictor, error scales included, on the cache. A step then costs the
predictor's forward and backward alone, several times less than a joint step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from jepa.config import MaskConfig
from jepa.masks import FutureMaskGenerator
from jepa.model import JEPA
from jepa.optim import set_lr
from jepa.surprise import future_mask_index
from jepa.train_step import autocast
from jepa.vit import gather_tokens


@dataclass
class FeatureCache:
    """Encoded clips, stored in float16: half the memory, and the encoders' outputs (after their
    final layer norm) sit well inside its range."""

    context: Tensor
    """(M, Nc, D): context-encoder tokens of the first context steps."""
    targets: Tensor
    """(M, Nt, D): target-encoder tokens of the later steps, before the loss's layer norm."""
    context_ids: Tensor
    """(Nc,) token indices of the context on the clip's grid."""
    target_ids: Tensor
    """(Nt,) token indices of the targets."""
    mask_index: int
    """The future mask config whose mask token asks the predictor for the future."""

    def __len__(self) -> int:
        return len(self.context)


def forecast_mask(model: JEPA, mask_cfgs: Sequence[MaskConfig]) -> tuple[int, Tensor, Tensor]:
    """(mask index, context ids, target ids) of the first future mask config."""
    index = future_mask_index(mask_cfgs)
    if index is None:
        raise ValueError("the predictor stage needs a future mask config (kind: future) in masks")
    mask = FutureMaskGenerator(model.token_grid, mask_cfgs[index])(1)
    return index, mask.context[0], mask.target[0]


def freeze_encoders(model: JEPA) -> None:
    model.encoder.requires_grad_(False)
    model.target_encoder.requires_grad_(False)


@torch.no_grad()
def encode_clips(model: JEPA, clips: Tensor, context_ids: Tensor, target_ids: Tensor,
                 precision: str = "auto") -> tuple[Tensor, Tensor]:
    """(context tokens, target tokens) of normalised clips (B, 3, T, H, W), as float16."""
    n = len(clips)
    with autocast(clips.device, precision):
        context = model.encoder(clips, keep=context_ids.expand(n, -1))
        targets = gather_tokens(model.target_encoder(clips), target_ids.expand(n, -1))
    return context.half(), targets.half()


def build_cache(model: JEPA, clip_batches: Iterable[Tensor], mask_cfgs: Sequence[MaskConfig],
                precision: str = "auto") -> FeatureCache:
    """Encode every batch of normalised clips with the (frozen) encoders."""
    index, context_ids, target_ids = forecast_mask(model, mask_cfgs)
    device = next(model.parameters()).device
    context_ids, target_ids = context_ids.to(device), target_ids.to(device)
    encoded = [encode_clips(model, clips, context_ids, target_ids, precision) for clips in clip_batches]
    if not encoded:
        raise ValueError("no clips to cache")
    return FeatureCache(torch.cat([c for c, _ in encoded]), torch.cat([t for _, t in encoded]),
                        context_ids, target_ids, index)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of the gradients over the process group, in one all-reduce (DDP's job, done by hand
    because the stage runs the predictor outside the DDP-wrapped model); a no-op alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def predictor_step(model: JEPA, cache: FeatureCache, rows: Tensor, optimizer: torch.optim.Optimizer, lr: float,
                   precision: str = "auto") -> dict[str, float]:
    """One optimizer step of the predictor on cached clips ``rows``: the regression loss, plus the
    error scales' likelihood when the predictor has them. The encoders must be frozen."""
    set_lr(optimizer, lr)
    b = len(rows)
    context, targets = cache.context[rows].float(), cache.targets[rows].float()
    with autocast(context.device, precision):
        loss, nll = model.prediction_losses(context, cache.context_ids.expand(b, -1), cache.target_ids.expand(b, -1),
                                            targets, model.token_grid, cache.mask_index)
    (loss if nll is None else loss + nll).backward()
    average_gradients(model.predictor.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"loss": loss.item(), "lr": lr}
    if nll is not None:
        out["error_nll"] = nll.item()
    return out
