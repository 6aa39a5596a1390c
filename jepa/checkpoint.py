"""On-disk model format shared by training, evaluation and serving: a folder with
`config.json` (the resolved run config) and `model.pt` (encoder, target encoder and predictor
state dicts, the same three-network layout as the V-JEPA 2 release, without the DDP prefix).

A training checkpoint is the same folder plus `train_state.pt`: what resuming needs beyond the
weights (optimizer state, the step to continue from, RNG states, data position, caller extras).
`load_model` reads the model part of either.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa.config import RunConfig, from_dict
from jepa.model import JEPA, build_jepa
# The V-JEPA 2 release layout (facebookresearch/vjepa2 .pt files): see jepa/vjepa2.py.
from jepa.vjepa2 import export_vjepa2, load_vjepa2  # noqa: F401

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
NETWORKS = ("encoder", "target_encoder", "predictor")


def save_model(model: JEPA, cfg: RunConfig, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    weights = {name: getattr(model, name).state_dict() for name in NETWORKS}
    torch.save(weights, folder / WEIGHTS_FILE)
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[JEPA, RunConfig]:
    """Rebuild the model from its config and load all three networks strictly."""
    folder = Path(folder)
    cfg = from_dict(RunConfig, json.loads((folder / CONFIG_FILE).read_text()))
    model = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    missing = set(NETWORKS) - set(weights)
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks {sorted(missing)}")
    for name in NETWORKS:
        getattr(model, name).load_state_dict(weights[name], strict=True)
    return model.to(device).eval(), cfg


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run continues from."""

    step: int
    """Optimizer steps completed; training continues at this (0-based) step index."""
    clips_seen: int = 0
    """Clips consumed by each worker (micro-batches x batch size): the data-stream position."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Caller bookkeeping saved as is (e.g. the MLflow run id)."""


def rng_state() -> dict[str, Any]:
    """RNG states of this process: Python, NumPy, torch CPU and (if present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(folder: str | Path, optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """`train_state.pt`: optimizer, step, data position, this process's RNG states and
    `state.extra`; any model's checkpoint (JEPA or another job's) pairs it with its weights."""
    path = Path(folder) / TRAIN_STATE_FILE
    torch.save(
        {"step": state.step, "clips_seen": state.clips_seen, "extra": state.extra,
         "optimizer": optimizer.state_dict(), "rng": rng_state()},
        path,
    )
    return path


def load_train_state(folder: str | Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True) -> TrainState:
    """Load `train_state.pt` into an already built `optimizer` and, unless told not to, restore
    the RNG states; returns where to continue."""
    # The RNG states hold Python/NumPy tuples, which weights_only refuses; the file is our own.
    train = torch.load(Path(folder) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(train["optimizer"])
    if restore_rng:
        set_rng_state(train["rng"])
    return TrainState(step=train["step"], clips_seen=train["clips_seen"], extra=train["extra"])


def save_checkpoint(
    model: JEPA, optimizer: torch.optim.Optimizer, cfg: RunConfig, folder: str | Path, state: TrainState
) -> Path:
    """The model folder (`config.json`, `model.pt`) plus `train_state.pt`."""
    folder = save_model(model, cfg, folder)
    save_train_state(folder, optimizer, state)
    return folder


def load_checkpoint(
    folder: str | Path, model: JEPA, optimizer: torch.optim.Optimizer, restore_rng: bool = True
) -> TrainState:
    """Load a `save_checkpoint` folder into an already built `model` and `optimizer` (on their
    device) and, unless told not to, restore the RNG states; returns where to continue."""
    folder = Path(folder)
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    for name in NETWORKS:
        getattr(model, name).load_state_dict(weights[name], strict=True)
    return load_train_state(folder, optimizer, restore_rng)
