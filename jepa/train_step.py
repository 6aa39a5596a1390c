"""One optimisation step of V-JEPA pretraining, and the matching held-out loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa.ema import ema_update
from jepa.masks import MaskBatch
from jepa.optim import set_lr


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (as the reference trains); full float32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    model: nn.Module,
    clips: Tensor,
    masks: list[MaskBatch],
    optimizer: torch.optim.Optimizer,
    lr: float,
    momentum: float,
    device: torch.device,
) -> dict[str, float]:
    """Update `model` (a JEPA, possibly DDP-wrapped) on normalised clips (B, 3, T, H, W).

    bf16 needs no loss scaling, and the reference clips no gradients.
    """
    set_lr(optimizer, lr)
    clips = clips.to(device, non_blocking=True)
    masks = [m.to(device, non_blocking=True) for m in masks]
    with _autocast(device):
        out = model(clips, masks)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    jepa = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    ema_update(jepa.target_encoder, jepa.encoder, momentum)
    return {"loss": out["loss"].item(), "lr": lr, "target_std": out["target_std"].item()}


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, clips: Tensor, masks: list[MaskBatch], device: torch.device
) -> dict[str, float]:
    """The training loss and collapse statistic on held-out clips, without updating anything."""
    clips = clips.to(device, non_blocking=True)
    masks = [m.to(device, non_blocking=True) for m in masks]
    with _autocast(device):
        out = model(clips, masks)
    return {"loss": out["loss"].item(), "target_std": out["target_std"].item()}
