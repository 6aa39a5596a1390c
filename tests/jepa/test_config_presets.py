"""Every run config shipped in configs/ loads and builds a model whose token grid its clips fit
and its masks leave context and targets on (models built on the meta device: no weights, so even
ViT-g takes well under a second); the reference preset is the V-JEPA 2 recipe."""

from pathlib import Path

import pytest
import torch

from jepa.config import ConfigError, load_ac_config, load_config
from jepa.masks import ImageMaskGenerator, sample_masks
from jepa.model import build_jepa
from jepa.rope import axis_dim

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOT_RUN_CONFIGS = {"serve.yaml"}  # read by ray_jobs.serve_config.load_serve_config
AC_CONFIGS = sorted(CONFIGS.glob("*-ac.yaml"))  # `jepa train-ac` configs (ACRunConfig)
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in NOT_RUN_CONFIGS and p not in AC_CONFIGS)
MIN_KEEP = 4
"""Fewest context or target tokens a clip may be cut to: the reference I-JEPA mask collator's
`min_keep` (it redraws masks that keep fewer); our generators only promise one."""


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_config_builds_a_model_its_clips_and_masks_fit(path):
    cfg = load_config(path)  # a typo'd key or a wrong value in a shipped config fails here
    m, batch = cfg.model, cfg.train.batch_size
    with torch.device("meta"):
        model = build_jepa(m, num_mask_configs=cfg.num_mask_configs)
        # A training clip (a 1-frame one in image mode) goes through the encoder whole: no pixel
        # or frame left over, and as many tokens as the grid the masks are drawn on.
        z = model.embed(torch.empty(batch, 3, m.num_frames, m.img_size, m.img_size))
    grid = model.token_grid
    n_tokens = grid[0] * grid[1] * grid[2]
    assert model.encoder.token_grid(m.num_frames, m.img_size, m.img_size) == grid
    assert tuple(z.shape) == (batch, n_tokens, model.encoder.embed_dim)
    if m.num_frames > 1:
        assert grid == (m.num_frames // m.tubelet_size, m.img_size // m.patch_size, m.img_size // m.patch_size)

    # Widths split evenly into heads, and every head is wide enough for 3D RoPE to rotate some of
    # its dims by each of t, h and w: with head_dim < 6 attention would be blind to positions.
    for name, width, heads in (("encoder", model.encoder.embed_dim, model.encoder.num_heads),
                               ("predictor", m.pred_embed_dim, m.pred_num_heads)):
        assert width % heads == 0, f"{name}: width {width} is not divisible by {heads} heads"
        assert axis_dim(width // heads) >= 2, f"{name}: head dim {width // heads} leaves RoPE nothing to rotate"

    # Masks drawn on the real token grid at the real per-worker batch leave every clip context and
    # targets (MIN_KEEP tokens or more), for every mask config, after the cut to the batch minimum.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        if cfg.data.modality == "image":
            masks = [ImageMaskGenerator(grid, cfg.image_masks)(batch, g)]
        else:
            masks = sample_masks(grid, cfg.masks, batch, g)
        assert len(masks) == len(model.predictor.mask_tokens) == cfg.num_mask_configs
        for k, mb in enumerate(masks):
            assert mb.context.shape[0] == mb.target.shape[0] == batch
            kept = {"context": mb.context.shape[1], "target": mb.target.shape[1]}
            assert min(kept.values()) >= MIN_KEEP, (path.name, f"mask config {k}", grid, kept)
            assert mb.context.shape[1] + mb.target.shape[1] <= n_tokens
            assert int(mb.context.max()) < n_tokens and int(mb.target.max()) < n_tokens
            assert not any(set(c) & set(t) for c, t in zip(mb.context.tolist(), mb.target.tolist()))


def test_reference_preset_is_the_v_jepa_2_recipe():
    cfg = load_config(CONFIGS / "vitl16.yaml")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.arch, m.num_frames, m.img_size, m.patch_size, cfg.data.fps) == ("large", 16, 256, 16, 4.0)
    assert (m.pred_depth, m.pred_embed_dim, m.activation_checkpointing) == (12, 384, True)
    assert (o.start_lr, o.lr, o.warmup_steps, o.schedule, o.ema_momentum) == (
        1e-4, 5.25e-4, 12000, "warmup_constant", 0.99925)
    assert (t.batch_size, t.global_batch_size, t.use_gpu) == (24, 3072, True)
    # The deployment the header describes: 2 nodes x 8 GPUs, so 8 micro-batches reach 3072.
    assert (t.num_workers, t.accumulation_steps) == (16, 8)
    gpu = [load_config(CONFIGS / f"{n}.yaml").train.use_gpu for n in ("vitb", "vith", "vitg")]
    assert all(gpu)


def test_global_batch_must_be_a_multiple_of_the_per_step_batch():
    assert load_config(None, ["train.batch_size=2", "train.num_workers=2"]).train.accumulation_steps == 1
    cfg = load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=8"])
    assert cfg.train.accumulation_steps == 2
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=6"])


@pytest.mark.parametrize("path", AC_CONFIGS, ids=lambda p: p.name)
def test_ac_config_loads(path):
    cfg = load_ac_config(path)
    assert cfg.model.encoder.startswith("models:/") and cfg.data.dataset
    assert cfg.planner.replan_every <= cfg.planner.horizon
