"""Held-out evidence that pretraining learned: JEPA loss of the trained model vs the same
architecture at initialisation, on the same held-out clips and masks, plus the collapse signal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jepa.config import RunConfig
from jepa.masks import sample_masks
from jepa.model import JEPA, build_jepa
from jepa.train_step import evaluate_loss
from jepa.transforms import clips_to_tensor
from pipelines.direct_clips import clip_dataset

# What "the model learned" means (README): held-out JEPA loss at least this far below the same
# architecture at initialisation, with target features that have not collapsed.
MIN_IMPROVEMENT = 0.20
MIN_TARGET_STD = 0.05


@dataclass
class HeldOutReport:
    clips: int
    loss_init: float
    loss_trained: float
    target_std_init: float
    target_std_trained: float

    @property
    def improvement(self) -> float:
        """Relative drop of the held-out loss: 0.2 means 20% below the untrained model."""
        return 1.0 - self.loss_trained / self.loss_init

    def as_metrics(self) -> dict[str, float]:
        return {
            "heldout_loss_init": self.loss_init,
            "heldout_loss": self.loss_trained,
            "heldout_improvement": self.improvement,
            "heldout_target_std_init": self.target_std_init,
            "heldout_target_std": self.target_std_trained,
        }


def load_held_out_clips(uris: list[str], cfg: RunConfig, clips_per_video: int = 2) -> np.ndarray:
    m = cfg.model
    ds = clip_dataset(uris * clips_per_video, num_frames=m.num_frames, fps=cfg.data.fps,
                      size=m.img_size, seed=cfg.train.seed + 1, decode_cpus=cfg.data.decode_cpus)
    ds.context.enable_progress_bars = False
    return np.stack([row["clip"] for row in ds.take_all()])  # (N, T, H, W, 3)


def _mean_loss(model: JEPA, clips: np.ndarray, cfg: RunConfig, batch_size: int) -> tuple[float, float]:
    rng = torch.Generator().manual_seed(12345)  # same masks for every model compared
    device = torch.device("cpu")
    losses, stds = [], []
    for i in range(0, len(clips), batch_size):
        x = clips_to_tensor(clips[i : i + batch_size], device)
        masks = sample_masks(model.token_grid, cfg.masks, x.shape[0], rng)
        out = evaluate_loss(model, x, masks, device)
        losses.append(out["loss"] * x.shape[0])
        stds.append(out["target_std"] * x.shape[0])
    return sum(losses) / len(clips), sum(stds) / len(clips)


def held_out_report(trained: JEPA, cfg: RunConfig, clips: np.ndarray, batch_size: int = 8) -> HeldOutReport:
    torch.manual_seed(cfg.train.seed)  # the exact initial weights training started from
    initial = build_jepa(cfg.model, num_mask_configs=len(cfg.masks)).eval()
    loss0, std0 = _mean_loss(initial, clips, cfg, batch_size)
    loss1, std1 = _mean_loss(trained.eval(), clips, cfg, batch_size)
    return HeldOutReport(len(clips), loss0, loss1, std0, std1)
