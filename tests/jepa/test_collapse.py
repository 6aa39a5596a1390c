"""Collapse diagnostics: effective rank of the target features and the warning built on it."""

import time

import pytest
import torch

from jepa.config import MaskConfig, ModelConfig
from jepa.masks import sample_masks
from jepa.model import build_jepa
from jepa.objective import collapse_warning, effective_rank, feature_std, normalize_targets
from jepa.train_step import evaluate_loss

D = 192


def _rank(x: torch.Tensor) -> float:
    return effective_rank(x).item()


def test_random_features_use_almost_every_dimension():
    healthy = normalize_targets(torch.randn(4, 256, D, generator=torch.Generator().manual_seed(0)))
    rank = _rank(healthy)
    assert 0.85 * D < rank <= D
    metrics = {"target_std": feature_std(healthy).item(), "effective_rank": rank}
    assert collapse_warning(metrics, D) is None


def test_rank_one_and_constant_features_are_collapsed():
    g = torch.Generator().manual_seed(1)
    line = torch.randn(4, 64, 1, generator=g) * torch.randn(1, 1, D, generator=g) + 3.0  # every token on a line
    assert _rank(line) == pytest.approx(1.0, abs=1e-3)
    constant = torch.randn(1, 1, D, generator=g).expand(4, 64, D)
    assert _rank(constant) == 0.0
    assert _rank(normalize_targets(constant)) == 0.0  # rounding left by centring is not structure

    message = collapse_warning({"target_std": 0.0, "effective_rank": 0.0}, D)
    assert message.startswith("representation collapse") and "std 0" in message and "rank 0" in message


def test_dimensional_collapse_is_caught_by_rank_alone():
    """Features spread over 2 of 192 dims keep a large std; only the rank reveals the collapse."""
    g = torch.Generator().manual_seed(2)
    few = normalize_targets(torch.randn(512, 2, generator=g) @ torch.randn(2, D, generator=g))
    std, rank = feature_std(few).item(), _rank(few)
    assert std > 0.5 and rank < 2.5
    message = collapse_warning({"target_std": std, "effective_rank": rank}, D)
    assert "effective rank" in message and "target feature std" not in message


def test_warning_thresholds_and_missing_metrics():
    assert collapse_warning({"target_std": 0.04}, D).startswith("representation collapse")
    assert collapse_warning({"target_std": 0.06}, D) is None
    assert collapse_warning({"effective_rank": 3.0}, D) is not None  # < 2% of 192 = 3.84
    assert collapse_warning({"effective_rank": 3.0}, D, rank_floor_fraction=0.01) is None
    assert collapse_warning({"target_std": float("nan")}, D) is not None
    assert collapse_warning({"loss": 0.1}, D) is None


def test_cost_is_bounded_by_the_token_subsample():
    """A batch 16x larger costs about the same: at most 1024 evenly spaced tokens are used."""
    small = torch.randn(1, 1024, D)
    big = torch.randn(16, 1024, D)
    effective_rank(small)  # warm-up (LAPACK workspace)

    def best_of(x, n=3):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            effective_rank(x)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best_of(big) < 4 * best_of(small) + 0.05
    assert _rank(big) <= D and effective_rank(big, max_tokens=16).item() <= 16


def test_model_reports_effective_rank_and_it_is_deterministic():
    model = build_jepa(ModelConfig(img_size=32, num_frames=4, patch_size=8, pred_depth=1), 2)
    masks = sample_masks(model.token_grid, [MaskConfig(8, 0.15), MaskConfig(2, 0.7)], 2,
                         torch.Generator().manual_seed(0))
    clips = torch.randn(2, 3, 4, 32, 32)
    rng_before = torch.get_rng_state()
    first = evaluate_loss(model, clips, masks, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the subsample draws no random numbers
    assert 1.0 < first["effective_rank"] <= 192
    assert evaluate_loss(model, clips, masks, torch.device("cpu")) == first
