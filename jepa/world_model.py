"""An action-conditioned world model: a frozen JEPA encoder, the AC predictor trained on its tokens,
and the spec of the environment they were trained for, saved and loaded as one folder.

Folder: ``encoder/`` (the encoder's own model folder, ``jepa.checkpoint`` format),
``ac_predictor.pt`` (predictor weights, state statistics included) and ``world_model.json`` (the
predictor and planner config, the env spec, the token grid). An ensemble (``jepa.ac_ensemble``)
adds its other members as ``ac_predictor.1.pt``, ``ac_predictor.2.pt``, ... and their count as
``members`` in the JSON. A model that reads its goal's state from the goal image
(``jepa.state_reader``) keeps that head in ``state_reader.pt``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.ac_ensemble import PredictorEnsemble, members_of
from jepa.ac_predictor import ACPredictor, layer_normed
from jepa.checkpoint import load_model, save_model
from jepa.config import ACModelConfig, PlannerConfig, RunConfig, from_dict
from jepa.model import JEPA, token_grid
from jepa.state_reader import StateReader
from jepa.transforms import clips_to_tensor

ENCODER_DIR = "encoder"
PREDICTOR_FILE = "ac_predictor.pt"
READER_FILE = "state_reader.pt"
SPEC_FILE = "world_model.json"


class WorldModel(nn.Module):
    """``encode`` frames into tokens, then imagine with ``predictor`` (see ``jepa.planner``)."""

    def __init__(self, jepa: JEPA, encoder_cfg: RunConfig, predictor: ACPredictor | PredictorEnsemble, cfg: ACModelConfig,
                 env: dict, planner: PlannerConfig, state_reader: StateReader | None = None):
        super().__init__()
        self.jepa, self.encoder_cfg, self.predictor = jepa.eval().requires_grad_(False), encoder_cfg, predictor
        self.cfg, self.env, self.planner = cfg, dict(env), planner
        self.state_reader = None
        if state_reader is not None:
            self.attach_state_reader(state_reader)

    def attach_state_reader(self, reader: StateReader) -> None:
        """Give the planner the goal's state, read from the goal image (``PlannerConfig.state_weight``)."""
        if self.predictor.state_dim == 0:
            raise ValueError("a state reader needs a predictor that imagines states (model.uses_state)")
        grid = self.token_grid
        if (reader.num_tokens, reader.embed_dim, reader.qpos_dim) != (grid[0] * grid[1], self.jepa.encoder.embed_dim,
                                                                     self.env["qpos_dim"]):
            raise ValueError(f"state reader reads {reader.num_tokens} tokens of {reader.embed_dim} into "
                             f"{reader.qpos_dim} coordinates; this model has {grid[0] * grid[1]} of "
                             f"{self.jepa.encoder.embed_dim} and {self.env['qpos_dim']}")
        self.state_reader = reader.eval().requires_grad_(False)

    @property
    def img_size(self) -> int:
        return self.encoder_cfg.model.img_size

    @property
    def token_grid(self) -> tuple[int, int]:
        """The encoder's token grid of one frame, before pooling."""
        return self.jepa.token_grid[1:]

    def encode(self, frames: np.ndarray | Tensor, batch: int = 256, pool: int | None = None) -> Tensor:
        """uint8 frames (B, H, W, 3), any square size -> layer-normed tokens (B, N, E): each frame
        alone (repeated into one tubelet), resized to the encoder's input as training saw it, the
        token grid average-pooled by ``pool`` (default ``cfg.pool``; 1 for the state reader's grid)."""
        return self.encode_pooled(frames, (self.cfg.pool if pool is None else pool,), batch)[0]

    @torch.no_grad()
    def encode_pooled(self, frames: np.ndarray | Tensor, pools: tuple[int, ...], batch: int = 256) -> tuple[Tensor, ...]:
        """``encode`` at several poolings from one encoder pass: one (B, N_p, E) tensor per pool."""
        frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames (B, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        device = next(self.jepa.parameters()).device
        out: list[list[Tensor]] = [[] for _ in pools]
        for chunk in frames.split(batch):
            x = clips_to_tensor(chunk[:, None], device)  # (b, 3, 1, H, W)
            if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
                x = F.interpolate(x[:, :, 0], size=(self.img_size, self.img_size), mode="bilinear",
                                  align_corners=False, antialias=True)[:, :, None]
            tokens = self.jepa.embed(x)
            for parts, pool in zip(out, pools):
                parts.append(pool_tokens(tokens, self.token_grid, pool))
        return tuple(torch.cat(parts) for parts in out)

    @torch.no_grad()
    def read_state(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 frames (B, H, W, 3), or their unpooled tokens (B, N, E) -> the configurations
        (B, qpos_dim) the state reader sees in them."""
        if self.state_reader is None:
            raise ValueError("this world model has no state reader: it cannot read a goal's state from an image")
        tokens = frames if torch.is_tensor(frames) and frames.is_floating_point() else self.encode(frames, pool=1)
        return self.state_reader(tokens)


def pool_tokens(tokens: Tensor, grid: tuple[int, int], pool: int) -> Tensor:
    """(B, h * w, E) -> layer-normed (B, (h / pool) * (w / pool), E)."""
    if pool > 1:
        b, _, e = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, e, *grid)
        tokens = F.avg_pool2d(x, pool).flatten(2).transpose(1, 2)
    return layer_normed(tokens)


def pooled_grid(encoder_cfg: RunConfig, pool: int) -> tuple[int, int]:
    h, w = token_grid(encoder_cfg.model)[1:]
    if h % pool or w % pool:
        raise ValueError(f"model.pool={pool} does not divide the encoder's {h}x{w} token grid")
    return h // pool, w // pool


def build_predictor(encoder: JEPA, encoder_cfg: RunConfig, cfg: ACModelConfig, env: dict) -> ACPredictor:
    return ACPredictor(encoder.encoder.embed_dim, pooled_grid(encoder_cfg, cfg.pool), env["action_low"],
                       env["action_high"], state_dim=env["state_dim"] if cfg.uses_state else 0, dim=cfg.dim,
                       depth=cfg.depth, num_heads=cfg.num_heads)


def member_file(index: int) -> str:
    return PREDICTOR_FILE if index == 0 else PREDICTOR_FILE.replace(".pt", f".{index}.pt")


def save_world_model(model: WorldModel, folder: str | Path) -> Path:
    folder = Path(folder)
    save_model(model.jepa, model.encoder_cfg, folder / ENCODER_DIR)
    members = members_of(model.predictor)
    for i, member in enumerate(members):
        torch.save(member.state_dict(), folder / member_file(i))
    spec = {"model": asdict(model.cfg), "planner": asdict(model.planner), "env": model.env,
            "grid": list(model.predictor.grid), "members": len(members)}
    if model.state_reader is not None:
        torch.save(model.state_reader.state_dict(), folder / READER_FILE)
        spec["state_reader"] = model.state_reader.spec()
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def is_world_model(folder: str | Path) -> bool:
    return (Path(folder) / SPEC_FILE).is_file()


def load_world_model(folder: str | Path, device: str | torch.device = "cpu") -> WorldModel:
    folder = Path(folder)
    spec = json.loads((folder / SPEC_FILE).read_text())
    jepa, encoder_cfg = load_model(folder / ENCODER_DIR, device)
    cfg = from_dict(ACModelConfig, spec["model"])
    members = []
    for i in range(spec.get("members", 1)):
        predictor = build_predictor(jepa, encoder_cfg, cfg, spec["env"])
        state = torch.load(folder / member_file(i), map_location="cpu", weights_only=True)
        state.setdefault("change_std", predictor.change_std)  # saved before the change_mse loss: unused
        predictor.load_state_dict(state, strict=True)
        members.append(predictor)
    predictor = members[0] if len(members) == 1 else PredictorEnsemble(members)
    reader = None
    if "state_reader" in spec:
        reader = StateReader(**spec["state_reader"])
        reader.load_state_dict(torch.load(folder / READER_FILE, map_location="cpu", weights_only=True), strict=True)
        reader = reader.to(device)
    return WorldModel(jepa, encoder_cfg, predictor.to(device).eval(), cfg, spec["env"],
                      from_dict(PlannerConfig, spec["planner"]), reader)


def ensemble(worlds: list[WorldModel]) -> WorldModel:
    """One world model planning with the average of ``worlds``' predictors: they must share the
    encoder (same weights), the env and the predictor config; the planner is the first's."""
    first = worlds[0]
    encoder = first.jepa.state_dict()
    for i, w in enumerate(worlds[1:], 1):
        if w.env != first.env:
            raise ValueError(f"world model {i} was trained for another environment than world model 0")
        if replace(w.cfg, encoder=first.cfg.encoder) != first.cfg:
            raise ValueError(f"world model {i} has another predictor config than world model 0: "
                             f"{asdict(w.cfg)} against {asdict(first.cfg)}")
        other = w.jepa.state_dict()
        if other.keys() != encoder.keys() or not all(torch.equal(other[k], encoder[k]) for k in encoder):
            raise ValueError(f"world model {i} has another encoder than world model 0: an ensemble's "
                             "predictors must read the same tokens")
    members = [m for w in worlds for m in members_of(w.predictor)]
    return WorldModel(first.jepa, first.encoder_cfg, PredictorEnsemble(members), first.cfg, first.env, first.planner,
                      first.state_reader)
