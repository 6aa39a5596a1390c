from dataclasses import replace

import torch

from jepa.config import MaskConfig, ModelConfig
from jepa.masks import sample_masks
from jepa.model import build_jepa

CFG = ModelConfig(arch="tiny", img_size=32, num_frames=8, patch_size=8, tubelet_size=2,
                  pred_depth=1, pred_embed_dim=32, pred_num_heads=4)
MASKS = [MaskConfig(8, 0.15), MaskConfig(2, 0.7)]


def _model_and_batch():
    torch.manual_seed(0)
    model = build_jepa(CFG, num_mask_configs=2)
    masks = sample_masks(model.token_grid, MASKS, 2, torch.Generator().manual_seed(0))
    return model, torch.randn(2, 3, 8, 32, 32), masks


def test_structure():
    model, _, _ = _model_and_batch()
    assert model.token_grid == (4, 4, 4)
    assert len(model.predictor.mask_tokens) == 2
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    for p, q in zip(model.encoder.parameters(), model.target_encoder.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_forward_loss_and_gradients():
    model, clips, masks = _model_and_batch()
    out = model(clips, masks)
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    assert out["target_std"].ndim == 0 and not out["target_std"].requires_grad
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_loss_is_mean_over_mask_configs():
    model, clips, masks = _model_and_batch()
    with torch.no_grad():
        both = model(clips, masks)["loss"]
        first = model(clips, masks[:1])["loss"]
        second = model(clips, masks[1:])["loss"]  # runs as config 0: same (zero) mask token at init
    assert torch.allclose(both, (first + second) / 2)


def test_embed_uses_target_encoder():
    model, clips, _ = _model_and_batch()
    with torch.no_grad():
        model.encoder.norm.bias.add_(1.0)
    z = model.embed(clips)
    assert z.shape == (2, 64, 192) and not z.requires_grad
    assert torch.allclose(z, model.target_encoder(clips))


def test_error_scale_head_learns_from_detached_errors():
    # error_nll trains the scale head (and the trunk under it) but never the predictions' output
    # layer: how wrong the model expects to be must not change what it predicts.
    torch.manual_seed(0)
    model = build_jepa(replace(CFG, pred_error_scale=True), num_mask_configs=2)
    _, clips, masks = _model_and_batch()
    out = model(clips, masks)
    assert out["error_nll"].ndim == 0
    out["error_nll"].backward()
    assert model.predictor.log_scale.weight.grad.abs().sum() > 0
    assert model.predictor.proj.weight.grad is None
