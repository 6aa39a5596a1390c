"""Checkpoint round trip: a run saved and restored continues exactly like an uninterrupted one."""

import copy
import json

import torch

from jepa.checkpoint import TRAIN_STATE_FILE, TrainState, load_checkpoint, load_model, save_checkpoint
from jepa.config import load_config
from jepa.masks import sample_masks
from jepa.model import build_jepa
from jepa.optim import build_optimizer
from jepa.train_step import train_step

CPU = torch.device("cpu")
TINY = ["model.img_size=32", "model.num_frames=4", "model.patch_size=8", "model.pred_depth=1",
        "model.pred_embed_dim=64", "model.pred_num_heads=2"]


def _batch(model, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 3, 4, 32, 32, generator=g), sample_masks(model.token_grid, CFG.masks, 2, g))]


CFG = load_config("configs/tiny.yaml", TINY)


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    model = build_jepa(CFG.model, len(CFG.masks))
    opt = build_optimizer(model, CFG.optim)
    for step in range(2):
        train_step(model, _batch(model, step), opt, 1e-3, 0.99, CPU)
    save_checkpoint(model, opt, CFG, tmp_path, TrainState(step=2, clips_seen=4, extra={"mlflow_run_id": "abc"}))
    saved_params = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    draw = torch.rand(3)  # RNG stream right after the save

    uninterrupted = train_step(model, _batch(model, 2), opt, 1e-3, 0.99, CPU)

    torch.manual_seed(123)  # a fresh process: other initial weights and RNG state
    resumed = build_jepa(CFG.model, len(CFG.masks))
    resumed_opt = build_optimizer(resumed, CFG.optim)
    state = load_checkpoint(tmp_path, resumed, resumed_opt)
    assert (state.step, state.clips_seen, state.extra) == (2, 4, {"mlflow_run_id": "abc"})
    assert torch.equal(torch.rand(3), draw)
    assert all(torch.equal(v, saved_params[k]) for k, v in resumed.state_dict().items())
    got = resumed_opt.state_dict()
    assert got["param_groups"] == saved_opt["param_groups"]
    for i, s in saved_opt["state"].items():
        assert all(torch.equal(s[k], got["state"][i][k]) for k in s)

    again = train_step(resumed, _batch(resumed, 2), resumed_opt, 1e-3, 0.99, CPU)
    assert again["loss"] == uninterrupted["loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_a_training_checkpoint_is_a_model_folder(tmp_path):
    model = build_jepa(CFG.model, len(CFG.masks))
    save_checkpoint(model, build_optimizer(model, CFG.optim), CFG, tmp_path, TrainState(step=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pt", TRAIN_STATE_FILE]
    loaded, cfg = load_model(tmp_path)
    assert cfg == CFG and json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == CFG.train.steps
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
