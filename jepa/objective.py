"""JEPA regression loss and a collapse diagnostic."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def normalize_targets(features: Tensor) -> Tensor:
    """Per-token layer norm without affine: removes the scale the EMA target could drift in."""
    return F.layer_norm(features, (features.shape[-1],))


def jepa_loss(pred: Tensor, target_tokens: Tensor) -> Tensor:
    """Mean L1 between predictions and layer-normed target features, both (B, Nt, D)."""
    return (pred - normalize_targets(target_tokens)).abs().mean()


def feature_std(features: Tensor) -> Tensor:
    """Std of each feature dim across all tokens (..., D), averaged over dims.

    On layer-normed targets a healthy encoder sits near 1; it falls to 0 when every token maps
    to the same vector (representation collapse), which the loss alone does not reveal.
    """
    return features.detach().flatten(0, -2).float().std(dim=0).mean()
