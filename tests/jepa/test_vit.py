import typing

import pytest
import torch

from jepa.config import Arch, ConfigError, ModelConfig
from jepa.vit import ENCODER_PRESETS, VisionTransformer, build_encoder

# Parameter counts of the reference encoders (3D tubelet patch embed, patch 16, tubelet 2), millions.
EXPECTED_PARAMS_M = {"tiny": 5.6, "small": 21.9, "base": 86.2, "large": 303.9, "huge": 631.6, "giant": 1012.2}


@pytest.mark.parametrize("arch", list(ENCODER_PRESETS))
def test_preset_shape_and_size(arch):
    cfg = ModelConfig(arch=arch, img_size=32, num_frames=4, patch_size=16, tubelet_size=2)
    device = torch.device("meta") if arch in ("large", "huge", "giant") else torch.device("cpu")
    with device:
        enc = build_encoder(cfg)
        out = enc(torch.randn(2, 3, 4, 32, 32))
    assert out.shape == (2, 2 * 2 * 2, ENCODER_PRESETS[arch].embed_dim)
    n = sum(p.numel() for p in enc.parameters()) / 1e6
    assert n == pytest.approx(EXPECTED_PARAMS_M[arch], rel=0.01)


def test_giant_is_the_22_head_xformers_variant():
    p = ENCODER_PRESETS["giant"]
    assert (p.embed_dim, p.depth, p.num_heads) == (1408, 40, 22)
    with torch.device("meta"):
        enc = VisionTransformer(*p)
    assert enc.blocks[0].mlp.fc1.out_features == 6144


def test_reference_parameter_names():
    enc = VisionTransformer(embed_dim=48, depth=2, num_heads=2)
    names = set(enc.state_dict())
    expected = {"patch_embed.proj.weight", "blocks.1.attn.qkv.bias", "blocks.1.mlp.fc2.weight", "norm.weight"}
    assert expected <= names
    assert enc.patch_embed.proj.weight.shape == (48, 3, 2, 16, 16)


def _small_encoder(**kw):
    torch.manual_seed(0)
    return VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, **kw)


def test_keep_all_equals_no_mask_and_follows_positions():
    enc = _small_encoder()
    x = torch.randn(2, 3, 4, 16, 16)  # grid 2x2x2
    full = enc(x)
    ids = torch.arange(8).repeat(2, 1)
    assert torch.allclose(enc(x, keep=ids), full, atol=1e-5)
    perm = torch.stack([torch.randperm(8), torch.randperm(8)])
    expected = torch.gather(full, 1, perm[..., None].expand(-1, -1, 48))
    assert torch.allclose(enc(x, keep=perm), expected, atol=1e-5)


def test_context_subset_changes_features():
    enc = _small_encoder()
    x = torch.randn(1, 3, 4, 16, 16)
    keep = torch.tensor([[0, 3, 5]])
    sub = enc(x, keep=keep)
    assert sub.shape == (1, 3, 48)
    assert not torch.allclose(sub, enc(x)[:, [0, 3, 5]], atol=1e-4)


def test_image_is_one_repeated_tubelet():
    enc = _small_encoder()
    img = torch.randn(2, 3, 16, 16)
    expected = enc(img.unsqueeze(2).repeat(1, 1, 2, 1, 1))
    assert torch.allclose(enc(img), expected) and torch.allclose(enc(img.unsqueeze(2)), expected)


def test_activation_checkpointing_same_grads():
    x = torch.randn(2, 3, 4, 16, 16)
    grads = []
    for ckpt in (False, True):
        enc = _small_encoder(activation_checkpointing=ckpt)
        enc(x).square().mean().backward()
        grads.append(enc.blocks[0].attn.qkv.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rejects_indivisible_clip():
    with pytest.raises(ValueError, match="not divisible"):
        _small_encoder()(torch.randn(1, 3, 3, 16, 16))


def test_unknown_arch_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="model.arch: 'colossal' is not one of tiny, small"):
        build_encoder(ModelConfig(arch="colossal"))


def test_every_arch_choice_has_a_preset():
    assert tuple(ENCODER_PRESETS) == typing.get_args(Arch)
