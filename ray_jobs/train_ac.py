"""`jepa train-ac`: action-conditioned post-training of a frozen encoder as a Ray Train job.

Each worker loads the frozen encoder from the registry and its share of the episode windows
(`jepa ingest` of a `jepa synth mujoco` dataset), encodes every distinct frame once, then trains
the AC predictor on those tokens (DDP): teacher forcing plus a short rollout. With
``model.state_reader`` the same steps also train a state reader on the frames' unpooled tokens and
recorded configurations. Batches are drawn by a generator seeded with (seed, rank, step), so a
resumed run draws exactly what it would have. The registered model is a world-model folder:
encoder, predictor (and reader), env spec and planner defaults.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from jepa.ac_predictor import ACObjective
from jepa.checkpoint import load_train_state, save_train_state
from jepa.config import ACRunConfig, ConfigError, from_dict
from jepa.optim import build_optimizer, lr_at
from jepa.state_reader import StateReader
from jepa.train_step import autocast
from jepa.world_model import PREDICTOR_FILE, READER_FILE, WorldModel, build_predictor, save_world_model
from pipelines import storage
from pipelines.episode_shards import DATASET_JSON, SHARDS, decode_window
from pipelines.episodes import EnvSpec
from pipelines.planning_protocol import ANGULAR
from ray_jobs import tracking
from ray_jobs.eval_runs import load_evaluated_model
from ray_jobs.training.driver import TrainingJob, run_job
from ray_jobs.training.registration import gather
from ray_jobs.training.worker import WorkerSession


@dataclass
class EpisodeTokens:
    """A rank's training windows as indices into one table of encoded frames."""

    tokens: torch.Tensor
    """(U, N, E) float16: every distinct frame of the rank's windows, encoded once."""
    frame_ids: torch.Tensor
    """(W, T) int64 rows of ``tokens`` per window step."""
    actions: torch.Tensor
    """(W, T, A) float32: per agent step, the mean of its frameskip control actions (the
    recorder holds them constant, so this is the action taken)."""
    states: torch.Tensor
    """(W, T, S) float32."""
    unpooled: torch.Tensor | None = None
    """(U, N1, E) float16: the same frames on the encoder's whole grid, for a state reader."""
    frame_qpos: torch.Tensor | None = None
    """(U, Q) float32: each frame's configuration, for a state reader."""


def dataset_summary(dataset_uri: str) -> dict:
    try:
        return json.loads(storage.get_bytes(storage.join_uri(dataset_uri, DATASET_JSON)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{dataset_uri} holds no episode windows ({DATASET_JSON} missing): run "
                                f"`jepa ingest EPISODES --dataset {dataset_uri}` first") from None


def load_windows(dataset_uri: str, env: EnvSpec, rank: int, world: int, frames: int) -> list[tuple[int, Any]]:
    """This rank's windows: (episode_index, Window), shard files dealt round robin (or rows, when
    there are fewer files than ranks); each cut to its first ``frames`` steps when ``frames``."""
    uris = sorted(o.uri for o in storage.list_objects(storage.join_uri(dataset_uri, SHARDS), suffixes=(".parquet",)))
    if not uris:
        raise FileNotFoundError(f"no shards under {dataset_uri}/{SHARDS}")
    by_files = len(uris) >= world
    rows = []
    for i, uri in enumerate(uris):
        if by_files and i % world != rank:
            continue
        table = storage.get_table(uri).to_pylist()
        rows += table if by_files else table[rank::world]
    out = []
    for row in rows:
        w = decode_window(row, env)
        if frames:
            w.frames, w.actions, w.states = w.frames[:frames], w.actions[:frames], w.states[:frames]
        out.append((int(row["episode_index"]), w))
    return out


def encode_windows(model: WorldModel, windows: list[tuple[int, Any]], unpooled: bool = False) -> EpisodeTokens:
    index: dict[tuple[int, int], int] = {}
    frames, frame_ids = [], []
    for episode, w in windows:
        ids = []
        for k, frame in enumerate(w.frames):
            key = (episode, w.start + k)
            if key not in index:
                index[key] = len(frames)
                frames.append(frame)
            ids.append(index[key])
        frame_ids.append(ids)
    grids = model.encode_pooled(np.stack(frames), (model.cfg.pool, 1) if unpooled else (model.cfg.pool,))
    data = EpisodeTokens(grids[0].half(), torch.tensor(frame_ids),
                         torch.tensor(np.stack([w.actions.mean(1) for _, w in windows])),
                         torch.tensor(np.stack([w.states for _, w in windows])))
    if unpooled:
        data.unpooled = grids[1].half()
        data.frame_qpos = torch.zeros(len(frames), model.env["qpos_dim"])
        data.frame_qpos[data.frame_ids.flatten()] = data.states[..., : model.env["qpos_dim"]].flatten(0, 1)
    return data


class ReaderObjective(nn.Module):
    """The state reader's loss as a forward pass, so DDP averages its gradients."""

    def __init__(self, reader: StateReader):
        super().__init__()
        self.reader = reader

    def forward(self, tokens: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        return self.reader.loss(tokens, qpos)


def build_state_reader(world: WorldModel, data: EpisodeTokens, world_size: int) -> StateReader:
    h, w = world.token_grid
    reader = StateReader(h * w, world.jepa.encoder.embed_dim, world.env["qpos_dim"],
                         angular=ANGULAR.get(world.env["domain"], False))
    parts = gather((data.frame_qpos.sum(0), data.frame_qpos.square().sum(0), len(data.frame_qpos)), world_size)
    n = sum(p[2] for p in parts)
    mean = sum(p[0] for p in parts) / n
    reader.qpos_mean.copy_(mean)
    reader.qpos_std.copy_((sum(p[1] for p in parts) / n - mean**2).clamp_min(1e-12).sqrt())
    return reader


def change_sums(data: EpisodeTokens, chunk: int = 1024) -> tuple[torch.Tensor, int]:
    """Per channel, the sum of squared one-step token changes over the windows, and their count."""
    total, count = torch.zeros(data.tokens.shape[-1]), 0
    for ids in data.frame_ids.split(chunk):
        change = data.tokens[ids[:, 1:]].float() - data.tokens[ids[:, :-1]].float()
        total += change.square().sum(tuple(range(change.ndim - 1)))
        count += change[..., 0].numel()
    return total, count


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    session = WorkerSession(loop_config)
    cfg: ACRunConfig = from_dict(ACRunConfig, loop_config["config"])
    t = cfg.train
    torch.manual_seed(t.seed)

    encoder = load_evaluated_model(cfg.model.encoder)
    env = dataset_summary(cfg.data.dataset)["env"]
    predictor = build_predictor(encoder.model, encoder.cfg, cfg.model, env)
    world = WorldModel(encoder.model, encoder.cfg, predictor, cfg.model, env, cfg.planner)
    t0 = time.perf_counter()
    data = encode_windows(world, load_windows(cfg.data.dataset, EnvSpec.from_dict(env), session.rank, session.world,
                                              cfg.data.frames), unpooled=cfg.model.state_reader)
    session.print(f"rank {session.rank}: {len(data.frame_ids)} windows of {data.frame_ids.shape[1]} steps, "
                  f"{len(data.tokens)} frames encoded in {time.perf_counter() - t0:.0f}s")
    if session.logger:  # the same in the run, where it does not depend on worker logs reaching the driver
        session.logger.set_tag("jepa.rank0_data", f"{len(data.frame_ids)} windows of {data.frame_ids.shape[1]} "
                                                  f"steps, {len(data.tokens)} frames encoded")
    if cfg.model.uses_state:  # the same statistics on every rank: from all ranks' windows
        parts = gather((data.states.sum((0, 1)), (data.states ** 2).sum((0, 1)), data.states[..., 0].numel()), session.world)
        n = sum(p[2] for p in parts)
        mean = sum(p[0] for p in parts) / n
        predictor.set_state_stats(mean, (sum(p[1] for p in parts) / n - mean**2).clamp_min(0).sqrt())

    if cfg.model.loss == "change_mse":  # the same scale on every rank: from all ranks' windows
        parts = gather(change_sums(data), session.world)
        predictor.set_change_stats((sum(p[0] for p in parts) / sum(p[1] for p in parts)).sqrt())

    objective = ray.train.torch.prepare_model(ACObjective(predictor, cfg.model.rollout_steps, cfg.model.loss))
    reader = build_state_reader(world, data, session.world) if cfg.model.state_reader else None
    trained: nn.Module = predictor
    if reader is not None:
        reader_objective = ray.train.torch.prepare_model(ReaderObjective(reader))
        trained = nn.ModuleList([predictor, reader])  # one optimizer, one schedule, one checkpoint
    optimizer = build_optimizer(trained, cfg.optim)
    state = session.resume(lambda folder: _load(folder, predictor, reader, optimizer))
    t_last, steps_since = time.perf_counter(), 0
    for step in range(state.step, t.steps):
        rng = np.random.default_rng([t.seed, session.rank, step])
        pick = torch.as_tensor(rng.integers(0, len(data.frame_ids), t.batch_size))
        z = data.tokens[data.frame_ids[pick]].float().to(session.device)
        states = data.states[pick].to(session.device) if cfg.model.uses_state else None
        lr = lr_at(step, cfg.optim, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(session.device, t.precision):
            losses = objective(z, data.actions[pick].to(session.device), states)
        loss = losses["loss"]
        if reader is not None:
            frames = torch.as_tensor(rng.integers(0, len(data.unpooled), t.batch_size))
            with autocast(session.device, t.precision):
                losses["reader"] = reader_objective(data.unpooled[frames].float().to(session.device),
                                                    data.frame_qpos[frames].to(session.device))
            loss = loss + losses["reader"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step, state.clips_seen = step + 1, state.clips_seen + t.batch_size
        steps_since += 1
        if session.logger and session.logger.due(step):
            now = time.perf_counter()
            metrics = {k: float(v.detach()) for k, v in losses.items()}
            # what an action-blind model gets by predicting "nothing moves": the bar to beat
            metrics["copy_baseline"] = float((z[:, 1:] - z[:, :-1]).abs().mean())
            metrics["lr"], metrics["windows_per_s"] = lr, steps_since * t.batch_size * session.world / (now - t_last)
            t_last, steps_since = now, 0
            session.logger.log(metrics, step)
            session.print(f"step {step + 1}/{t.steps} loss {metrics['loss']:.4f} teacher {metrics['teacher']:.4f} "
                          f"rollout {metrics['rollout']:.4f} teacher L1 {metrics['teacher_l1']:.4f} "
                          f"(copy {metrics['copy_baseline']:.4f})"
                          + (f" reader {metrics['reader']:.4f}" if reader is not None else "") + f" lr {lr:.2e}")
        if session.checkpoint_due(state):
            session.save_checkpoint(state, {"step": state.step, "loss": float(losses["loss"])},
                                    save=lambda folder: _save(folder, predictor, reader, optimizer, state))

    if reader is not None:
        world.attach_state_reader(reader)
    session.finish(state, predictor, save_model=lambda folder: save_world_model(world, folder),
                   python_model=tracking.WorldModelPyfunc())


def _save(folder: str, predictor, reader, optimizer, state) -> None:
    torch.save(predictor.state_dict(), Path(folder) / PREDICTOR_FILE)
    if reader is not None:
        torch.save(reader.state_dict(), Path(folder) / READER_FILE)
    save_train_state(folder, optimizer, state)


def _load(folder: str, predictor, reader, optimizer):
    predictor.load_state_dict(torch.load(Path(folder) / PREDICTOR_FILE, map_location="cpu", weights_only=True))
    if reader is not None:
        reader.load_state_dict(torch.load(Path(folder) / READER_FILE, map_location="cpu", weights_only=True))
    return load_train_state(folder, optimizer)


@dataclass
class TrainACResult:
    run_id: str
    model_uri: str
    version: int


def train_ac(cfg: ACRunConfig) -> TrainACResult:
    """Train the AC predictor on `data.dataset` over the frozen `model.encoder`, log to MLflow and
    register the world model as `tracking.registered_model@alias`."""
    if not cfg.model.encoder:
        raise ConfigError("model.encoder: name the frozen encoder (models:/NAME@ALIAS from `jepa pretrain`)")
    if not cfg.data.dataset:
        raise ConfigError("data.dataset: name the episode windows (`jepa ingest` of an episode dataset)")
    summary = dataset_summary(cfg.data.dataset)  # fails here, before any worker starts
    if cfg.model.encoder.startswith("models:/"):
        tracking.resolve_model_version(cfg.model.encoder)
    job = TrainingJob(name="train-ac", worker_loop=train_loop_per_worker, config=cfg.to_dict(), train=cfg.train,
                      tracking=cfg.tracking, build_dataset=None, data_uri=cfg.data.dataset,
                      tags={"jepa.encoder": cfg.model.encoder, "jepa.env": f"{summary['env']['domain']}/{summary['env']['task']}"})
    trained = run_job(job)
    return TrainACResult(trained.run_id, trained.model_uri, trained.version)
