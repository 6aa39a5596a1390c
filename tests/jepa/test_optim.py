import math

import pytest
from torch import nn

from jepa.config import ConfigError, OptimConfig
from jepa.optim import build_optimizer, lr_at, set_lr
from jepa.predictor import Predictor


def test_no_decay_on_biases_and_1d_params():
    model = nn.ModuleDict({"pred": Predictor(16, 8, 1, 2), "frozen": nn.Linear(2, 2).requires_grad_(False)})
    opt = build_optimizer(model, OptimConfig(weight_decay=0.04))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert any(p is model["pred"].mask_tokens[0] for p in decay["params"])  # 3-D, decayed like the reference
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable
    assert opt.defaults["betas"] == (0.9, 0.999)


def test_warmup_constant():
    cfg = OptimConfig(start_lr=1e-4, lr=5e-4, warmup_steps=100, schedule="warmup_constant")
    assert lr_at(0, cfg, 1000) == pytest.approx(1e-4)
    assert lr_at(50, cfg, 1000) == pytest.approx(3e-4)
    assert lr_at(100, cfg, 1000) == pytest.approx(5e-4)
    assert lr_at(10_000, cfg, 1000) == pytest.approx(5e-4)


def test_cosine():
    cfg = OptimConfig(start_lr=0.0, lr=1e-3, final_lr=1e-5, warmup_steps=10, schedule="cosine")
    assert lr_at(5, cfg, 110) == pytest.approx(5e-4)
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 110) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(85, cfg, 110) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(110, cfg, 110) == pytest.approx(1e-5)
    assert lr_at(500, cfg, 110) == pytest.approx(1e-5)


def test_unknown_schedule_and_set_lr():
    with pytest.raises(ConfigError, match="optim.schedule: 'step' is not one of warmup_constant, cosine"):
        lr_at(0, OptimConfig(schedule="step"), 10)
    opt = build_optimizer(nn.Linear(2, 2), OptimConfig())
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]


def test_predictor_lr_scale():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "predictor": Predictor(4, 8, 1, 2)})
    opt = build_optimizer(model, OptimConfig(predictor_lr_scale=3.0))
    set_lr(opt, 0.01)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for p in model["encoder"].parameters()} == {0.01}
    assert all(lr_of[id(p)] == pytest.approx(0.03) for p in model["predictor"].parameters())
    assert len(lr_of) == sum(1 for _ in model.parameters())
