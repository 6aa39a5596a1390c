"""On-disk model format shared by training, evaluation and serving: a folder with
`config.json` (the resolved run config) and `model.pt` (encoder, target encoder and predictor
state dicts, the same three-network layout as the V-JEPA 2 release, without the DDP prefix).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from jepa.config import RunConfig, from_dict
from jepa.model import JEPA, build_jepa
# The V-JEPA 2 release layout (facebookresearch/vjepa2 .pt files): see jepa/vjepa2.py.
from jepa.vjepa2 import export_vjepa2, load_vjepa2  # noqa: F401

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
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
    model = build_jepa(cfg.model, num_mask_configs=len(cfg.masks))
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    missing = set(NETWORKS) - set(weights)
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE} lacks {sorted(missing)}")
    for name in NETWORKS:
        getattr(model, name).load_state_dict(weights[name], strict=True)
    return model.to(device).eval(), cfg
