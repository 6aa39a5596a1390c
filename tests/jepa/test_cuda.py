"""The GPU path of `jepa/`: bf16 autocast on CUDA, DDP over NCCL with gradient accumulation, and
checkpoints written from a GPU run. Skipped where no CUDA device is present (CI); run on a GPU
machine with `pytest tests/jepa/test_cuda.py`."""

import copy
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from jepa.checkpoint import load_model, save_model
from jepa.config import MaskConfig, ModelConfig, OptimConfig, RunConfig
from jepa.masks import MaskBatch, sample_masks
from jepa.model import build_jepa
from jepa.optim import build_optimizer
from jepa.train_step import evaluate_loss, train_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
MODEL = ModelConfig(arch="tiny", img_size=64, num_frames=8, patch_size=16, pred_depth=2, pred_embed_dim=96,
                    pred_num_heads=3)
MASKS = [MaskConfig(8, 0.15), MaskConfig(2, 0.7)]


def _model_and_batch(batch_size: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = build_jepa(MODEL, len(MASKS))
    g = torch.Generator().manual_seed(seed)
    clips = torch.randn(batch_size, 3, MODEL.num_frames, MODEL.img_size, MODEL.img_size, generator=g)
    return model, clips, sample_masks(model.token_grid, MASKS, batch_size, g)


def test_bf16_loss_on_cuda_matches_float32_on_cpu():
    model, clips, masks = _model_and_batch()
    cpu = evaluate_loss(model, clips, masks, torch.device("cpu"))["loss"]
    gpu = evaluate_loss(model.to(CUDA), clips, masks, CUDA)["loss"]
    assert abs(gpu - cpu) / cpu < 0.03, (gpu, cpu)  # bf16 matmuls, float32 everything else


def test_bf16_training_on_cuda_keeps_float32_weights_and_lowers_the_loss():
    model, clips, masks = _model_and_batch()
    model.to(CUDA)
    optimizer = build_optimizer(model, OptimConfig())
    losses = [train_step(model, [(clips, masks)], optimizer, 3e-3, 0.99, CUDA)["loss"] for _ in range(20)]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.9 * losses[0], losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_with_accumulation_matches_one_large_batch():
    """2 accumulated micro-batches of 2 under DDP (NCCL, `no_sync` on the first) take the same
    optimizer step as one batch of 4 without DDP, to within bf16 rounding."""
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0)
    try:
        base, clips, masks = _model_and_batch(batch_size=4)
        plain, ddp_model = copy.deepcopy(base).to(CUDA), copy.deepcopy(base).to(CUDA)
        ddp = DistributedDataParallel(ddp_model, device_ids=[0])
        assert dist.get_backend() == "nccl"
        # SGD: the update is proportional to the gradient (AdamW's first step is ~lr * sign(grad)).
        sgd = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (plain, ddp_model)]
        halves = [(clips[i:i + 2], [MaskBatch(m.context[i:i + 2], m.target[i:i + 2]) for m in masks]) for i in (0, 2)]
        whole = train_step(plain, [(clips, masks)], sgd[0], 0.1, 0.99, CUDA)
        accumulated = train_step(ddp, halves, sgd[1], 0.1, 0.99, CUDA)
        assert abs(whole["loss"] - accumulated["loss"]) < 0.02 * whole["loss"]
        # the same update to within bf16 rounding, over the whole model; a lost micro-batch
        # gradient (no_sync misused) would be off by about half the update
        start, a, b = (torch.cat([p.detach().flatten().float().cpu() for p in m.parameters()])
                       for m in (base, plain, ddp_model))
        assert (a - b).norm() < 0.02 * (a - start).norm(), ((a - b).norm(), (a - start).norm())
    finally:
        dist.destroy_process_group()


def test_checkpoint_written_from_cuda_loads_on_cpu(tmp_path):
    model, clips, masks = _model_and_batch()
    model.to(CUDA)
    train_step(model, [(clips, masks)], build_optimizer(model, OptimConfig()), 1e-3, 0.99, CUDA)
    save_model(model, RunConfig(model=MODEL, masks=MASKS), tmp_path)
    loaded, _ = load_model(tmp_path)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert q.device.type == "cpu"
        assert torch.equal(p.cpu(), q), name


def test_a_plan_step_on_cuda_matches_the_cpu_for_the_same_seed():
    """The planner on a GPU: the seed's noise comes from a CPU generator either way, the state and
    warm start follow the model to its device, and the plan comes back as numpy."""
    from bench.bench_plan_step import build
    from jepa.config import PlannerConfig
    from jepa.mpc import plan_toward, view_goal, warm_start

    cfg = PlannerConfig(samples=32, elites=4, iterations=3, horizon=2, replan_every=1)
    rng = np.random.default_rng(0)
    observation, goal_image = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    state = rng.standard_normal(7).astype(np.float32)
    calls = {}
    for device in ("cpu", "cuda"):
        world = build("tiny", torch.device(device))
        goal = view_goal(world, goal_image, cfg)
        calls[device] = plan_toward(world, observation, goal, state, cfg, generator=torch.Generator().manual_seed(3))
        assert warm_start(world, calls[device].actions, 1, 2).device.type == device
    np.testing.assert_allclose(calls["cuda"].actions, calls["cpu"].actions, atol=1e-3)
    assert calls["cuda"].energy[-1] == pytest.approx(calls["cpu"].energy[-1], rel=1e-3)
