"""Surprise scoring on toy inputs: window arithmetic, no peeking at the future, the pixel baseline,
pairwise scoring and the bootstrap intervals reported with it."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from jepa.config import MaskConfig, ModelConfig
from jepa.model import build_jepa
from jepa.objective import normalize_targets
from jepa.stats import bootstrap
from jepa.surprise import (
    Windows, future_mask_index, pair_correct, pixel_surprise_curve, surprise_curve, surprise_mask,
)  # fmt: skip
from jepa.vit import gather_tokens

TINY = ModelConfig(arch="tiny", img_size=32, num_frames=8, patch_size=16, pred_depth=1, pred_embed_dim=32,
                   pred_num_heads=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_jepa(TINY, num_mask_configs=2).eval()


def test_windows_cover_the_video_at_the_stride():
    w = Windows(window_frames=16, context_frames=8, stride_frames=2, n_frames=32)
    assert w.starts == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert w.predicted_from == [8, 10, 12, 14, 16, 18, 20, 22, 24]
    with pytest.raises(ValueError, match="shorter than one window"):
        Windows(16, 8, 2, n_frames=15)
    with pytest.raises(ValueError):
        Windows(16, 16, 2, n_frames=32)


def test_surprise_is_the_l1_of_predicted_to_target_features(model):
    video = torch.randn(3, 12, 32, 32, generator=torch.Generator().manual_seed(1))
    curve = surprise_curve(model, video, context_steps=2, mask_index=1, stride_frames=2)
    assert len(curve.values) == 3 and curve.max >= curve.mean
    grid = model.token_grid  # (4, 2, 2): steps 0-1 context, 2-3 targets
    per_step = grid[1] * grid[2]
    ctx, tgt = torch.arange(2 * per_step)[None], torch.arange(2 * per_step, 4 * per_step)[None]
    for i, start in enumerate((0, 2, 4)):
        clip = video[None, :, start : start + 8]
        with torch.no_grad():
            pred = model.predictor(model.encoder(clip, keep=ctx), ctx, tgt, grid, mask_index=1)
            target = normalize_targets(gather_tokens(model.target_encoder(clip), tgt))
        assert curve.values[i] == pytest.approx(float((pred - target).abs().mean()), rel=1e-5)


def test_score_steps_keeps_the_first_predicted_steps(model):
    video = torch.randn(3, 12, 32, 32, generator=torch.Generator().manual_seed(4))
    curve = surprise_curve(model, video, context_steps=2, mask_index=1, score_steps=1)
    assert curve.windows.scored == 2 and curve.as_dict()["scored_frames"] == 2
    grid = model.token_grid
    per_step = grid[1] * grid[2]
    ctx, tgt = torch.arange(2 * per_step)[None], torch.arange(2 * per_step, 4 * per_step)[None]
    clip = video[None, :, :8]
    with torch.no_grad():
        pred = model.predictor(model.encoder(clip, keep=ctx), ctx, tgt, grid, mask_index=1)
        target = normalize_targets(gather_tokens(model.target_encoder(clip), tgt))
    first = float((pred - target)[:, :per_step].abs().mean())
    assert curve.values[0] == pytest.approx(first, rel=1e-5)
    assert first != pytest.approx(float((pred - target).abs().mean()), rel=1e-3)
    with pytest.raises(ValueError, match="scored_frames"):
        surprise_curve(model, video, context_steps=2, score_steps=3)


def test_nll_weighs_errors_by_the_predicted_scale(model):
    torch.manual_seed(0)
    scaled = build_jepa(replace(TINY, pred_error_scale=True), num_mask_configs=2).eval()
    video = torch.randn(3, 12, 32, 32, generator=torch.Generator().manual_seed(5))
    l1 = surprise_curve(scaled, video, context_steps=2, mask_index=1, score="l1")
    nll = surprise_curve(scaled, video, context_steps=2, mask_index=1)
    assert nll.score == "nll" and nll.as_dict()["score"] == "nll"
    assert np.allclose(nll.values, l1.values, rtol=1e-5)  # untrained head: scale 1 everywhere
    with torch.no_grad():
        scaled.predictor.log_scale.bias.fill_(math.log(2.0))  # "my errors are twice as large"
    halved = surprise_curve(scaled, video, context_steps=2, mask_index=1)
    assert np.allclose(halved.values, l1.values / 2 + math.log(2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="error scale"):
        surprise_curve(model, video, context_steps=2, mask_index=1, score="nll")


def test_predictions_never_see_the_frames_they_predict(model):
    """Changing only a window's predicted frames changes the target, never the prediction."""
    outputs = []
    hook = model.predictor.register_forward_hook(lambda mod, args, out: outputs.append(out.clone()))
    try:
        video = torch.randn(3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
        changed = video.clone()
        changed[:, 4:] = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
        a = surprise_curve(model, video, context_steps=2)
        b = surprise_curve(model, changed, context_steps=2)
    finally:
        hook.remove()
    assert torch.equal(outputs[0], outputs[1])
    assert a.values[0] != b.values[0]


def test_pixel_baseline_extrapolates_linear_motion_exactly():
    ramp = torch.arange(32, dtype=torch.float32).view(1, 32, 1, 1).expand(3, 32, 4, 4) * 0.01
    windows = Windows(16, 8, 2, 32)
    assert np.allclose(pixel_surprise_curve(ramp, windows).values, 0.0, atol=1e-6)
    jumped = ramp.clone()
    jumped[:, 20:] += 1.0
    values = pixel_surprise_curve(jumped, windows).values
    first_predicted = np.array(windows.predicted_from)
    last_predicted = first_predicted + 7
    sees_jump = (first_predicted <= 20) & (20 <= last_predicted)
    assert (values[sees_jump] > 0.1).all()
    assert np.allclose(values[last_predicted < 20], 0.0, atol=1e-6)
    first_only = pixel_surprise_curve(jumped, Windows(16, 8, 2, 32, scored_frames=2)).values
    assert (first_only[(first_predicted <= 20) & (20 <= first_predicted + 1)] > 0.1).all()
    assert np.allclose(first_only[first_predicted + 1 < 20], 0.0, atol=1e-6)
    assert np.allclose(first_only[first_predicted > 20], 0.0, atol=1e-6)  # the jump is behind them


def test_pair_scoring_and_future_mask_lookup():
    assert pair_correct([1.0, 2.0, 3.0], [2.0, 1.0, 3.0]).tolist() == [1.0, 0.0, 0.5]
    masks = [MaskConfig(), MaskConfig(kind="future", context_steps=2)]
    assert future_mask_index(masks) == 1 and future_mask_index(masks[:1]) is None
    assert surprise_mask(masks, 8) == (1, 2, "future")
    assert surprise_mask(masks[:1], 8) == (0, 4, "multiblock")
    assert surprise_mask([MaskConfig(kind="future")], 8) == (0, 4, "future")  # context_steps 0: half


def test_bootstrap_interval_brackets_the_value_and_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = bootstrap(rng.random(50) < 0.8), bootstrap(rng.random(2000) < 0.8)
    for est in (small, large):
        assert est.low <= est.value <= est.high
    assert large.high - large.low < small.high - small.low
    assert 0.75 < large.value < 0.85 and large.low > 0.75 - 0.05
    assert bootstrap(np.ones(10)).as_dict() == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 10}
    with pytest.raises(ValueError):
        bootstrap(np.array([]))
