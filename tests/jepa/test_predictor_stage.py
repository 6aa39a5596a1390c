import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from jepa.config import MaskConfig, ModelConfig, OptimConfig
from jepa.model import build_jepa
from jepa.optim import build_optimizer
from jepa.predictor_stage import average_gradients, build_cache, forecast_mask, freeze_encoders, predictor_step
from jepa.vit import gather_tokens

MASKS = [MaskConfig(8, 0.15), MaskConfig(kind="future", context_steps=3)]


def _model(error_scale: bool = True):
    torch.manual_seed(0)
    cfg = ModelConfig(img_size=32, num_frames=8, patch_size=8, pred_depth=1, pred_embed_dim=64, pred_num_heads=2,
                      pred_error_scale=error_scale)
    return build_jepa(cfg, num_mask_configs=len(MASKS))


def _clips(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 4, 2, 2, generator=g), size=(8, 32, 32), mode="trilinear")


def test_cache_holds_the_encoders_features_of_the_future_mask():
    model = _model()
    clips = _clips(3)
    cache = build_cache(model, [clips[:2], clips[2:]], MASKS)
    grid = model.token_grid  # (4, 4, 4): 3 context steps of 16 tokens, 1 target step
    assert cache.mask_index == 1 and len(cache) == 3
    assert cache.context.shape == (3, 3 * 16, 192) and cache.targets.shape == (3, 16, 192)
    assert cache.context.dtype == torch.float16
    assert cache.context_ids.tolist() == list(range(48)) and cache.target_ids.tolist() == list(range(48, 64))
    with torch.no_grad():
        context = model.encoder(clips, keep=cache.context_ids.expand(3, -1))
        targets = gather_tokens(model.target_encoder(clips), cache.target_ids.expand(3, -1))
    torch.testing.assert_close(cache.context.float(), context, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(cache.targets.float(), targets, atol=2e-2, rtol=1e-2)
    assert grid == (4, 4, 4)


def test_forecast_mask_needs_a_future_mask():
    with pytest.raises(ValueError, match="future mask"):
        forecast_mask(_model(), [MaskConfig(8, 0.15), MaskConfig(2, 0.7)])


@pytest.mark.parametrize("error_scale", [True, False])
def test_predictor_step_trains_the_predictor_alone_and_fits_a_cache(error_scale):
    model = _model(error_scale)
    freeze_encoders(model)
    cache = build_cache(model, [_clips(8)], MASKS)
    encoders = copy.deepcopy((model.encoder.state_dict(), model.target_encoder.state_dict()))
    predictor = copy.deepcopy(model.predictor.state_dict())
    opt = build_optimizer(model, OptimConfig())
    rows = torch.arange(8)
    steps = [predictor_step(model, cache, rows, opt, 1e-3) for _ in range(40)]
    assert ("error_nll" in steps[0]) == error_scale
    assert sum(s["loss"] for s in steps[-5:]) / 5 < 0.8 * steps[0]["loss"], [s["loss"] for s in steps]
    for before, network in zip(encoders, (model.encoder, model.target_encoder)):
        for name, value in network.state_dict().items():
            assert torch.equal(value, before[name]), name
    assert any(not torch.equal(v, predictor[k]) for k, v in model.predictor.state_dict().items())


def _average_in_group(rank: int, world: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        a, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))
        a.grad, b.grad = torch.full((2, 3), float(rank)), torch.full((4,), 10.0 * rank)
        unused = torch.nn.Parameter(torch.zeros(1))  # no grad on any rank: left alone
        average_gradients([a, unused, b])
        out[rank] = (a.grad.clone(), b.grad.clone(), unused.grad)
    finally:
        dist.destroy_process_group()


def test_average_gradients_is_the_mean_over_the_group():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_average_in_group, args=(2, port, out), nprocs=2)
        results = dict(out)
    for a, b, unused in results.values():
        assert torch.equal(a, torch.full((2, 3), 0.5)) and torch.equal(b, torch.full((4,), 5.0)) and unused is None
