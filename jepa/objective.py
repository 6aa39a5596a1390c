"""JEPA regression loss and collapse diagnostics."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

RANK_TOKENS = 1024
"""Tokens (rows) `effective_rank` looks at, at most: bounds its cost whatever the batch."""


def normalize_targets(features: Tensor) -> Tensor:
    """Per-token layer norm without affine: removes the scale the EMA target could drift in."""
    return F.layer_norm(features, (features.shape[-1],))


def jepa_loss(pred: Tensor, target_tokens: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 (or, with ``kind="mse"``, squared error) between predictions and layer-normed
    target features, both (B, Nt, D)."""
    err = pred - normalize_targets(target_tokens)
    if kind == "l1":
        return err.abs().mean()
    if kind == "mse":
        return err.square().mean()
    raise ValueError(f"loss must be l1 or mse, got {kind!r}")


def abs_error(pred: Tensor, target_tokens: Tensor) -> Tensor:
    """|prediction - layer-normed target| per feature (B, Nt, D), in float32."""
    return (pred.float() - normalize_targets(target_tokens.float())).abs()


def laplace_nll(error: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise negative log-likelihood (less a constant) of an absolute ``error`` under a
    Laplace distribution of scale ``exp(log_scale)``: ``error / scale + log_scale``. Least at
    the scale equal to the error, so a head trained on it learns how wrong its predictions
    usually are, feature by feature and place by place."""
    return error * torch.exp(-log_scale.float()) + log_scale.float()


def feature_std(features: Tensor) -> Tensor:
    """Std of each feature dim across all tokens (..., D), averaged over dims.

    On layer-normed targets a healthy encoder sits near 1; it falls to 0 when every token maps
    to the same vector (representation collapse), which the loss alone does not reveal.
    """
    return features.detach().flatten(0, -2).float().std(dim=0).mean()


@torch.no_grad()
def effective_rank(features: Tensor, max_tokens: int = RANK_TOKENS) -> Tensor:
    """How many directions the features (..., D) really use: exp of the entropy of the normalised
    singular values of the centred (tokens, D) matrix (Roy & Vetterli, 2007). Between 1 (every
    token on one line: collapsed) and min(tokens, D) (spread evenly over all dims); 0 when all
    tokens are the same vector. Catches dimensional collapse that `feature_std` misses: features
    can keep a large std while living in a handful of dimensions.

    Cost: at most `max_tokens` rows, taken evenly spaced (deterministic, no RNG drawn), so one
    SVD of a (<= 1024, D) float32 matrix, O(1024 * D * min(1024, D)) flops whatever the batch:
    ~0.2 GFLOP at D=192 (tens of ms on one CPU thread), ~2 GFLOP at D=1408 (ViT-g), negligible
    next to a training step on a GPU.
    """
    x = features.detach().flatten(0, -2).float()  # (n, D)
    if x.shape[0] > max_tokens:
        rows = torch.linspace(0, x.shape[0] - 1, max_tokens, device=x.device).round().long()
        x = x[rows]  # (max_tokens, D)
    scale = x.norm()
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)  # (min(n, D),) descending
    # What is left after centring identical rows is float rounding, not structure: count it as
    # nothing, and drop singular values at rounding level as numpy's matrix_rank does.
    if x.shape[0] < 2 or s[0] <= 1e-5 * scale:
        return torch.zeros((), device=x.device)
    s = s[s > s[0] * max(x.shape) * torch.finfo(s.dtype).eps]
    p = s / s.sum()
    return torch.exp(-(p * p.log()).sum())


def collapse_warning(
    metrics: Mapping[str, float],
    embed_dim: int,
    std_floor: float = 0.05,
    rank_floor_fraction: float = 0.02,
) -> str | None:
    """A message when `metrics` (from `train_step` / `evaluate_loss`) show collapsed target
    features, else None. Collapsed means the per-dim `target_std` of the layer-normed targets
    is under `std_floor` (healthy: near 1), or their `effective_rank` is under
    `rank_floor_fraction * embed_dim` (an untrained ViT-tiny on smooth clips sits near 0.1 of
    its width, random features near 1). A metric that is missing is not checked."""
    problems = []
    std = metrics.get("target_std")
    if std is not None and not std >= std_floor:  # `not >=` also catches NaN
        problems.append(f"target feature std {std:.3g} < {std_floor:g} (healthy: about 1)")
    rank = metrics.get("effective_rank")
    floor = rank_floor_fraction * embed_dim
    if rank is not None and not rank >= floor:
        problems.append(f"effective rank {rank:.3g} of {embed_dim} dims < {floor:.3g} "
                        f"({rank_floor_fraction:.0%} of the width)")
    if not problems:
        return None
    return ("representation collapse: " + "; ".join(problems) + ". The target encoder maps "
            "different clips to (nearly) the same features, so a low loss means nothing; "
            "check the learning rate, EMA momentum and masks.")
