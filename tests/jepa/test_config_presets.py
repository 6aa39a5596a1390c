"""Every run config shipped in configs/ loads and validates; accumulation must divide exactly."""

from pathlib import Path

import pytest

from jepa.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOT_RUN_CONFIGS = {"serve.yaml"}  # read by ray_jobs.serve_app.load_serve_config


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in NOT_RUN_CONFIGS),
                         ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    t = cfg.train
    assert t.accumulation_steps >= 1
    if t.global_batch_size:
        assert t.global_batch_size == t.accumulation_steps * t.num_workers * t.batch_size


def test_reference_preset_is_the_v_jepa_2_recipe():
    cfg = load_config(CONFIGS / "vitl16.yaml")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.arch, m.num_frames, m.img_size, m.patch_size, cfg.data.fps) == ("large", 16, 256, 16, 4.0)
    assert (m.pred_depth, m.pred_embed_dim, m.activation_checkpointing) == (12, 384, True)
    assert (o.start_lr, o.lr, o.warmup_steps, o.schedule, o.ema_momentum) == (
        1e-4, 5.25e-4, 12000, "warmup_constant", 0.99925)
    assert (t.batch_size, t.global_batch_size, t.use_gpu) == (24, 3072, True)
    assert t.accumulation_steps == 3072 // (24 * t.num_workers)
    gpu = [load_config(CONFIGS / f"{n}.yaml").train.use_gpu for n in ("vitb", "vith", "vitg")]
    assert all(gpu)


def test_global_batch_must_be_a_multiple_of_the_per_step_batch():
    assert load_config(None, ["train.batch_size=2", "train.num_workers=2"]).train.accumulation_steps == 1
    cfg = load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=8"])
    assert cfg.train.accumulation_steps == 2
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=6"])
