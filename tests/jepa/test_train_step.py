import copy

import pytest
import torch
import torch.nn.functional as F

from jepa.config import MaskConfig, ModelConfig, OptimConfig
from jepa.masks import MaskBatch, sample_masks
from jepa.model import JEPA, build_jepa
from jepa.optim import build_optimizer
from jepa.predictor import Predictor
from jepa.train_step import autocast, emulated_bf16, evaluate_loss, train_step
from jepa.vit import VisionTransformer

CPU = torch.device("cpu")
MASKS = [MaskConfig(8, 0.15), MaskConfig(2, 0.7)]


def _tiny_jepa() -> JEPA:
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=192, depth=4, num_heads=3, patch_size=8)  # tiny width, fewer blocks
    predictor = Predictor(192, pred_embed_dim=96, depth=2, num_heads=4, num_mask_tokens=2)
    return JEPA(encoder, predictor, encoder.token_grid(8, 32, 32))


def test_loss_decreases_on_a_fixed_batch():
    model = _tiny_jepa()
    opt = build_optimizer(model, OptimConfig())
    # Spatially smooth clips, so masked tokens are predictable from their neighbours.
    clips = F.interpolate(torch.randn(4, 3, 2, 2, 2), size=(8, 32, 32), mode="trilinear")
    masks = sample_masks(model.token_grid, MASKS, 4, torch.Generator().manual_seed(0))
    losses = [train_step(model, [(clips, masks)], opt, 1e-3, 0.99925, CPU)["loss"] for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.85 * losses[0], losses


def test_bf16_precision_trains_on_cpu_and_auto_stays_float32_there():
    """train.precision=bf16 autocasts on a CPU too (the physics recipe's setting); auto and fp32 keep
    float32 there."""
    x, w = torch.randn(2, 8), torch.randn(8, 8)
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):
        with autocast(CPU, precision):
            assert (x @ w).dtype == torch.float32

    clips = F.interpolate(torch.randn(4, 3, 2, 2, 2), size=(8, 32, 32), mode="trilinear")
    masks = sample_masks(_tiny_jepa().token_grid, MASKS, 4, torch.Generator().manual_seed(0))
    first = {}
    for precision in ("fp32", "bf16"):
        model = _tiny_jepa()
        opt = build_optimizer(model, OptimConfig())
        losses = [train_step(model, [(clips, masks)], opt, 1e-3, 0.99925, CPU, precision)["loss"] for _ in range(30)]
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast model
        assert sum(losses[-5:]) / 5 < 0.85 * losses[0], (precision, losses)
        first[precision] = losses[0]
    assert first["bf16"] == pytest.approx(first["fp32"], rel=0.02)


def test_emulated_bf16_is_read_from_the_cpu_flags(tmp_path):
    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert emulated_bf16(CPU, "bf16", str(plain))
    assert not emulated_bf16(CPU, "bf16", str(native))
    assert not emulated_bf16(CPU, "auto", str(plain)) and not emulated_bf16(CPU, "fp32", str(plain))
    assert not emulated_bf16(torch.device("cuda"), "bf16", str(plain))
    assert not emulated_bf16(CPU, "bf16", str(tmp_path / "missing"))  # flags unknown: no warning


def test_train_step_updates_and_reports():
    model = build_jepa(ModelConfig(img_size=32, num_frames=4, patch_size=8, pred_depth=1), 2)
    before = copy.deepcopy(model.state_dict())
    opt = build_optimizer(model, OptimConfig())
    clips = torch.randn(2, 3, 4, 32, 32)
    masks = sample_masks(model.token_grid, MASKS, 2, torch.Generator().manual_seed(0))
    held_out = evaluate_loss(model, clips, masks, CPU)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    metrics = train_step(model, [(clips, masks)], opt, lr=2e-4, momentum=0.5, device=CPU)
    assert set(metrics) == {"loss", "lr", "target_std", "effective_rank"} and metrics["lr"] == 2e-4
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["loss"] == held_out["loss"]
    assert opt.param_groups[0]["lr"] == 2e-4
    w = "blocks.0.attn.qkv.weight"
    online, target = model.encoder.state_dict()[w], model.target_encoder.state_dict()[w]
    old = before["encoder." + w]
    assert not torch.equal(online, old)
    assert torch.allclose(target, 0.5 * old + 0.5 * online, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_error_scales_train_beside_the_predictions():
    torch.manual_seed(0)
    model = build_jepa(ModelConfig(img_size=32, num_frames=4, patch_size=8, pred_depth=1, pred_error_scale=True), 2)
    opt = build_optimizer(model, OptimConfig())
    clips = torch.randn(2, 3, 4, 32, 32)
    masks = sample_masks(model.token_grid, MASKS, 2, torch.Generator().manual_seed(0))
    metrics = train_step(model, [(clips, masks)], opt, lr=1e-3, momentum=1.0, device=CPU)
    assert set(metrics) == {"loss", "lr", "target_std", "effective_rank", "error_nll"}
    # scale 1 at init: the likelihood term is the L1 itself (plus log 1)
    assert metrics["error_nll"] == pytest.approx(metrics["loss"], rel=1e-4)
    assert model.predictor.log_scale.bias.abs().sum() > 0  # the step moved the scales too


def test_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_jepa(ModelConfig(img_size=32, num_frames=4, patch_size=8, pred_depth=1), 2)
        plain = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        opt, plain_opt = build_optimizer(ddp, OptimConfig()), build_optimizer(plain, OptimConfig())
        masks = sample_masks(model.token_grid, MASKS, 2, torch.Generator().manual_seed(0))
        old = model.target_encoder.norm.weight.clone()
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            clips = torch.randn(2, 3, 4, 32, 32, generator=g)
            metrics = train_step(ddp, [(clips, masks)], opt, 1e-3, 0.5, CPU)
            expected = train_step(plain, [(clips, masks)], plain_opt, 1e-3, 0.5, CPU)
            assert metrics == pytest.approx(expected, rel=1e-5), (metrics, expected)
        assert metrics["loss"] > 0
        assert not torch.equal(model.target_encoder.norm.weight, old)  # EMA reached the unwrapped module
        # one rank under DDP takes the very steps of the unwrapped model: same AdamW update, same EMA
        for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-6), name
    finally:
        dist.destroy_process_group()


def _rows(masks, rows):
    return [MaskBatch(m.context[rows], m.target[rows]) for m in masks]


def test_accumulating_two_micro_batches_equals_one_batch_of_their_union():
    base = build_jepa(ModelConfig(img_size=32, num_frames=4, patch_size=8, pred_depth=1), 2)
    whole, accumulated = copy.deepcopy(base), copy.deepcopy(base)
    clips = torch.randn(4, 3, 4, 32, 32)
    masks = sample_masks(base.token_grid, MASKS, 4, torch.Generator().manual_seed(0))  # equal counts per row
    # SGD: the update is proportional to the gradient. (AdamW's first step is ~lr * sign(grad), which
    # turns float rounding in near-zero gradients into lr-sized differences.)
    opt_whole = torch.optim.SGD([p for p in whole.parameters() if p.requires_grad], lr=1.0)
    opt_acc = torch.optim.SGD([p for p in accumulated.parameters() if p.requires_grad], lr=1.0)
    m1 = train_step(whole, [(clips, masks)], opt_whole, 1.0, 0.9, CPU)
    m2 = train_step(accumulated, [(clips[:2], _rows(masks, slice(0, 2))), (clips[2:], _rows(masks, slice(2, 4)))],
                    opt_acc, 1.0, 0.9, CPU)
    assert abs(m1["loss"] - m2["loss"]) < 1e-5
    for (name, a), b in zip(whole.state_dict().items(), accumulated.state_dict().values()):
        # target encoder included: one EMA update each. float32 sums taken in another order (another
        # torch build or thread count) move the 5th decimal; a lost micro-batch would move the 1st.
        assert torch.allclose(a, b, atol=2e-5), name
    assert not torch.equal(whole.encoder.state_dict()["blocks.0.attn.qkv.weight"],
                           base.encoder.state_dict()["blocks.0.attn.qkv.weight"])


def test_compiled_blocks_train_like_eager_ones():
    """`train.compile` (regional torch.compile) on a tiny config: the same losses as the eager model
    over a few steps on the same seeds, the same held-out loss after them, and the same state-dict
    names. (Weights are not compared element by element: Adam turns a float-rounding difference in
    a near-zero gradient into a step of up to lr.)"""
    from jepa.model import compile_blocks

    eager, compiled = _tiny_jepa(), compile_blocks(_tiny_jepa())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = sample_masks(eager.token_grid, MASKS, 2, torch.Generator().manual_seed(0))  # one shape: one compile
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        opt = build_optimizer(model, OptimConfig())
        losses[name] = [train_step(model, [(clips, masks)], opt, 1e-3, 0.99, CPU)["loss"] for _ in range(3)]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4), losses
    held_out = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = sample_masks(eager.token_grid, MASKS, 2, torch.Generator().manual_seed(3))
    after = [evaluate_loss(m, held_out, masks, CPU)["loss"] for m in (eager, compiled)]
    assert after[1] == pytest.approx(after[0], rel=1e-3), after
