"""I-JEPA multiblock-2D masks and the image-mode config."""

import numpy as np
import pytest
import torch

from jepa.config import ConfigError, ImageMaskConfig, load_config
from jepa.masks import ImageMaskGenerator, cut_to_batch_minimum, masks_from_flags
from jepa.model import token_grid

GRID = (1, 14, 14)


def _blocks_of(flags: np.ndarray) -> np.ndarray:
    return flags.reshape(GRID[1:])


def test_targets_are_four_blocks_of_15_to_20_percent():
    gen = ImageMaskGenerator(GRID, ImageMaskConfig())
    g = torch.Generator().manual_seed(0)
    n = GRID[1] * GRID[2]
    fractions = []
    for _ in range(20):
        target, context = gen.flags(8, g)
        frac = target.float().mean(dim=1)
        fractions.append(frac)
        # a union of 4 blocks each 15-20% (rounded to tokens): between one block and four
        assert (frac >= 0.1).all() and (frac <= 4 * 0.2 + 0.05).all()
    mean = torch.cat(fractions).mean().item()
    assert 0.3 < mean < 0.7, mean  # overlaps make the union well under 4 x 17.5%
    assert n == target.shape[1]


def test_context_is_inside_the_context_block_and_disjoint_from_targets():
    gen = ImageMaskGenerator(GRID, ImageMaskConfig(context_scale=(0.5, 0.6)))
    g = torch.Generator().manual_seed(1)
    target, context = gen.flags(16, g)
    assert not (target & context).any()
    assert context.any(dim=1).all()
    for row in context:
        cells = np.argwhere(_blocks_of(row.numpy()))
        top, left = cells.min(0)
        bottom, right = cells.max(0)
        # the bounding box of the context fits in a square block of at most 60% of the grid
        side = int(round(np.sqrt(0.6 * 14 * 14)))
        assert bottom - top < side + 1 and right - left < side + 1
    # and it is not the complement of the targets: some non-target tokens are outside the block
    assert ((~target) & (~context)).any()


def test_full_context_block_gives_the_complement():
    gen = ImageMaskGenerator(GRID, ImageMaskConfig(context_scale=(1.0, 1.0)))
    target, context = gen.flags(4, torch.Generator().manual_seed(2))
    assert torch.equal(context, ~target)


def test_batch_minimum_cut_and_flags_path():
    gen = ImageMaskGenerator(GRID, ImageMaskConfig())
    g = torch.Generator().manual_seed(3)
    target, context = gen.flags(6, g)
    m = cut_to_batch_minimum(target, context)
    assert m.context.shape == (6, int(context.sum(1).min()))
    assert m.target.shape == (6, int(target.sum(1).min()))
    for i in range(6):
        assert context[i, m.context[i]].all() and target[i, m.target[i]].all()
        assert (m.context[i].diff() > 0).all()
    (via_flags,) = masks_from_flags(target[:, None], context[:, None])
    assert torch.equal(via_flags.context, m.context) and torch.equal(via_flags.target, m.target)
    # calling the generator is that cut of its flags: the context stays the block minus the targets
    # (not their complement, larger in this draw: its context block is smaller than the grid)
    called = gen(6, torch.Generator().manual_seed(3))
    assert torch.equal(called.context, m.context) and torch.equal(called.target, m.target)
    assert called.context.shape[1] < int((~target).sum(1).min())


def test_video_flags_path_unchanged():
    target = torch.tensor([[True, False, False, True], [False, False, True, True]])
    (m,) = masks_from_flags(target[:, None])
    assert m.context.tolist() == [[1, 2], [0, 1]] and m.target.tolist() == [[0, 3], [2, 3]]


def test_same_seed_same_masks_and_grid_checks():
    gen = ImageMaskGenerator(GRID, ImageMaskConfig())
    a = gen.flags(3, torch.Generator().manual_seed(5))
    b = gen.flags(3, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = gen.flags(3, torch.Generator().manual_seed(6))  # the generator decides, not a constant
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="1, H, W"):
        ImageMaskGenerator((2, 4, 4), ImageMaskConfig())


def test_tiny_grid_keeps_context():
    gen = ImageMaskGenerator((1, 4, 4), ImageMaskConfig())
    target, context = gen.flags(32, torch.Generator().manual_seed(6))
    assert target.any(1).all() and context.any(1).all() and not (target & context).any()


def test_image_mode_config():
    cfg = load_config("configs/ijepa_tiny.yaml")
    assert cfg.data.modality == "image" and cfg.num_mask_configs == 1
    assert token_grid(cfg.model) == (1, 8, 8)
    assert load_config(None).data.modality == "video"
    with pytest.raises(ConfigError, match="data.modality"):
        load_config(None, ["data.modality=audio"])
    with pytest.raises(ConfigError, match="model.num_frames"):
        load_config(None, ["data.modality=image"])
    with pytest.raises(ConfigError, match="image_masks.target_scale"):
        load_config(None, ["image_masks.target_scale=0.2"])


def test_image_model_forward_on_one_frame_clips():
    from jepa.model import build_jepa
    from jepa.transforms import clips_to_tensor

    cfg = load_config("configs/ijepa_tiny.yaml", ["model.img_size=32", "model.pred_depth=1"])
    torch.manual_seed(0)
    model = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    assert model.token_grid == (1, 4, 4)
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 32, 32, 3), dtype=np.uint8)
    clips = clips_to_tensor(images)
    target, context = ImageMaskGenerator(model.token_grid, cfg.image_masks).flags(2, torch.Generator().manual_seed(0))
    masks = masks_from_flags(target[:, None], context[:, None])
    with torch.no_grad():
        out = model(clips, masks)
        # a 1-frame clip is the image repeated over one tubelet (as the reference encodes images)
        repeated = model(clips.repeat(1, 1, cfg.model.tubelet_size, 1, 1), masks)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    assert torch.equal(out["loss"], repeated["loss"])
