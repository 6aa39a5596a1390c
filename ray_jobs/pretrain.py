"""`jepa pretrain`: V-JEPA pretraining as a Ray Train job.

What is specific to V-JEPA lives here: the worker loop (the JEPA model, masks, `train_step`,
collapse diagnostics) and what the job registers (the JEPA pyfunc). Resuming, checkpoints with
the data position, restarts, rank-0 logging and registration come from `ray_jobs.training`;
the dataset from `pipelines.training_data`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch

from jepa.checkpoint import TrainState, load_checkpoint, save_checkpoint, save_model
from jepa.config import RunConfig, from_dict
from jepa.masks import MaskBatch, masks_from_flags
from jepa.model import JEPA, build_jepa, compile_blocks
from jepa.objective import collapse_warning
from jepa.optim import build_optimizer, lr_at
from jepa.predictor_stage import FeatureCache, build_cache, freeze_encoders, predictor_step
from jepa.train_step import train_step
from jepa.transforms import clips_to_tensor
from pipelines.training_data import training_dataset
from ray_jobs import tracking
from ray_jobs.init_from import check_init_from, load_init_weights
from ray_jobs.training.driver import TrainingJob, run_job
from ray_jobs.training.worker import BatchStream, WorkerSession


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    session = WorkerSession(loop_config)
    cfg: RunConfig = from_dict(RunConfig, loop_config["config"])
    t, accum = cfg.train, cfg.train.accumulation_steps

    torch.manual_seed(t.seed)
    plain = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    if cfg.model.init_from and session.rank == 0 and ray.train.get_checkpoint() is None:
        load_init_weights(plain, cfg)  # the other ranks get these weights from DDP's broadcast
    if t.compile:
        compile_blocks(plain)
    model = ray.train.torch.prepare_model(plain)
    optimizer = build_optimizer(plain, cfg.optim)
    state = session.resume(lambda folder: load_checkpoint(folder, plain, optimizer))
    clips = session.batches(state)

    stage_start, cache = cfg.joint_steps, None
    t_last, steps_since = time.perf_counter(), 0
    for step in range(state.step, t.steps):
        if step < stage_start:
            micro_batches = [_micro_batch(clips, session, step) for _ in range(accum)]
            metrics = train_step(model, micro_batches, optimizer, lr_at(step, cfg.optim, stage_start),
                                 cfg.optim.ema_momentum, session.device, t.precision)
            state.clips_seen += accum * t.batch_size
            clips_per_step = accum * t.batch_size
        else:
            if cache is None:
                cache, rows = _start_predictor_stage(plain, optimizer, clips, session, state, cfg, step)
                t_last, steps_since = time.perf_counter(), 0
            batch = torch.randint(len(cache), (cfg.predictor_stage.batch_size,), generator=rows, device=rows.device)
            metrics = predictor_step(plain, cache, batch, optimizer,
                                     lr_at(step - stage_start, cfg.optim, cfg.predictor_stage.steps), t.precision)
            clips_per_step = cfg.predictor_stage.batch_size
        state.step = step + 1
        steps_since += 1
        if session.logger and session.logger.due(step):
            now = time.perf_counter()
            metrics["clips_per_s"] = steps_since * clips_per_step * session.world / (now - t_last)
            t_last, steps_since = now, 0
            _log_step(session, metrics, step, plain.encoder.embed_dim)
        if session.checkpoint_due(state):
            session.save_checkpoint(state, {"step": state.step, "loss": metrics["loss"]},
                                    save=lambda folder: save_checkpoint(plain, optimizer, cfg, folder, state))

    session.finish(state, plain, save_model=lambda folder: save_model(plain.cpu(), cfg, folder),
                   python_model=tracking.JepaPyfunc(),
                   signature=tracking.model_signature(cfg, plain.encoder.embed_dim))


def _micro_batch(clips: BatchStream, session: WorkerSession, step: int) -> tuple[torch.Tensor, list[MaskBatch]]:
    batch = clips.next()  # clip: (B, T, H, W, 3) uint8, target_masks: (B, K, N) bool
    if batch is None:
        raise RuntimeError(f"rank {session.rank} ran out of clips at step {step}: too many undecodable videos?")
    # masks were drawn in the data pipeline; images also carry context flags (I-JEPA)
    masks = masks_from_flags(batch["target_masks"], batch.get("context_masks"))
    return clips_to_tensor(batch["clip"], session.device), masks


def _start_predictor_stage(plain: JEPA, optimizer: torch.optim.Optimizer, clips: BatchStream, session: WorkerSession,
                           state: TrainState, cfg: RunConfig, step: int) -> tuple[FeatureCache, torch.Generator]:
    """Freeze the encoders and encode this rank's cache from its data stream. Entering the stage
    (not resuming within it), the predictor starts with fresh optimizer moments."""
    freeze_encoders(plain)
    if step == cfg.joint_steps:
        optimizer.state.clear()
    batches = -(-cfg.predictor_stage.cache_clips // cfg.train.batch_size)
    session.print(f"rank {session.rank}: predictor stage from step {step + 1}: encoding "
                  f"{batches * cfg.train.batch_size} clips with the frozen encoders")
    start = time.perf_counter()
    cache = build_cache(plain, (_micro_batch(clips, session, step)[0] for _ in range(batches)), cfg.masks,
                        cfg.train.precision)
    state.clips_seen += batches * cfg.train.batch_size
    session.print(f"rank {session.rank}: {len(cache)} clips encoded in {time.perf_counter() - start:.0f} s")
    rows = torch.Generator(device=session.device).manual_seed(hash((cfg.train.seed, session.rank, step)) & (2**63 - 1))
    return cache, rows


def _log_step(session: WorkerSession, metrics: dict[str, float], step: int, embed_dim: int) -> None:
    session.logger.log(metrics, step)
    if "target_std" not in metrics:  # a predictor-stage step: the targets are frozen
        nll = f" error_nll {metrics['error_nll']:.4f}" if "error_nll" in metrics else ""
        session.print(f"step {step + 1}/{session.train.steps} (predictor) loss {metrics['loss']:.4f}{nll} "
                      f"lr {metrics['lr']:.2e} clips/s {metrics['clips_per_s']:.1f}")
        return
    session.print(f"step {step + 1}/{session.train.steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                  f"target_std {metrics['target_std']:.3f} eff_rank {metrics['effective_rank']:.1f}/{embed_dim} "
                  f"clips/s {metrics['clips_per_s']:.1f}")
    if warning := collapse_warning(metrics, embed_dim):
        session.print(f"WARNING at step {step + 1}: {warning}")
        session.logger.set_tag("jepa.collapse_warning", f"step {step + 1}: {warning}")


@dataclass
class PretrainResult:
    run_id: str
    model_uri: str
    version: int
    held_out: list[str]
    """Sources kept out of training (by key hash), for evaluation; none in shard mode."""


def pretrain(cfg: RunConfig) -> PretrainResult:
    """Train on `data.dataset` (shards) or `data.source` (raw videos or images), log to MLflow and
    register the model. `train.run_name` names the run: relaunching with it resumes (README)."""
    check_init_from(cfg)
    held_out: list[str] = []

    def build_dataset(start: int):
        dataset, held_out[:] = training_dataset(cfg, start)
        return dataset

    job = TrainingJob(name="pretrain", worker_loop=train_loop_per_worker, config=cfg.to_dict(), train=cfg.train,
                      tracking=cfg.tracking, build_dataset=build_dataset, data_uri=cfg.data.dataset or cfg.data.source,
                      tags={"jepa.arch": cfg.model.arch})
    trained = run_job(job)
    tracking.log_loss_curve(trained.run_id)  # plots/loss_curve.png: loss, target_std, effective_rank by step
    return PretrainResult(trained.run_id, trained.model_uri, trained.version, list(held_out))
