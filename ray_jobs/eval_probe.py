"""`jepa eval probe`: what can be read out of the frozen encoder? Attentive probes on ground truth.

One clip per video of a physics dataset (the first `num_frames` frames at the model's `fps`) is
labelled from its sidecar (`pipelines.physics_labels`): ball count, mean speed, ball 0's final
position. Videos split 60/20/20 into train/val/test by a hash of their key within the dataset
(stable across runs, copies of the dataset, and `max_videos`). Three encoders are compared on the
same clips and splits: the trained target encoder, the same architecture at its random
initialisation (what training added), and raw pixels on the same token grid (what needs no
encoder at all). For each, features are extracted once and cached; a grid of (lr, weight decay)
heads trains on the cache (`jepa.probe`); the best on val is reported on test with a bootstrap 95%
interval over test videos.

The probe's train split may contain videos the encoder was pretrained on; that is the usual frozen
evaluation protocol (the labels were never seen), but it is worth knowing when comparing datasets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from jepa.config import RunConfig
from jepa.model import JEPA
from jepa.probe import DEFAULT_GRID, ProbeTask, evaluate, pixel_features, train_probes
from jepa.stats import Estimate
from jepa.transforms import clips_to_tensor
from pipelines import storage
from pipelines.keys import stable_hash
from pipelines.physics_labels import PhysicsLabels, list_physics_videos, physics_tasks, task_targets, video_labels
from pipelines.video import VideoDecodeError, decode_clip
from ray_jobs.eval_runs import EvaluatedModel, Table, load_evaluated_model, log_evaluation, random_init

log = logging.getLogger(__name__)

ENCODERS = ("trained", "random-init", "pixel")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2)
"""train and val shares; the test split gets the rest."""
SPLIT_SALT = "probe"
EPOCHS = 20
BATCH_SIZE = 32
FEATURE_BATCH = 16
DECODE_THREADS = 4
TORCH_THREADS = 1
"""Default torch threads for features and probes. Both are small-batch work, and on a busy 2-core
machine (Ray workers beside it) OpenMP's spin-waiting made them 10-20x slower at 2 threads than at 1
(ViT-tiny features: 0.9 s per clip instead of 0.05 s)."""


@dataclass(frozen=True)
class ProbeResult:
    """The validation-selected head of one task on one encoder's features."""

    task: str
    encoder: str
    metric: str
    lr: float
    weight_decay: float
    val: float
    """`metric` of the chosen head on the validation split."""
    epoch: int
    """The epoch whose weights the chosen head kept (its best on val)."""
    test: Estimate
    """`metric` on the test split with its bootstrap 95% interval over test videos."""
    extra: dict[str, Estimate] = field(default_factory=dict)
    """Secondary test figures: `mae` (mean absolute error, target units) for regression."""

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "encoder": self.encoder, "metric": self.metric, "lr": self.lr,
                "weight_decay": self.weight_decay, "val": self.val, "epoch": self.epoch, "test": self.test.as_dict(),
                **{name: est.as_dict() for name, est in self.extra.items()}}


@dataclass
class ProbeReport:
    model: str
    dataset: str
    settings: dict[str, Any]
    """Clip (num_frames, fps, img_size), probe training (epochs, batch size, grid, width) and the
    videos per split."""
    results: list[ProbeResult]
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock time of each stage: decode, features.<encoder>, probes.<encoder>, total."""

    def result(self, task: str, encoder: str) -> ProbeResult:
        return next(r for r in self.results if r.task == task and r.encoder == encoder)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "settings": self.settings,
                "results": [r.as_dict() for r in self.results], "seconds": self.seconds}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per task x encoder (for a table or a DataFrame)."""
        rows = []
        for r in self.results:
            row = {"task": r.task, "encoder": r.encoder, "metric": r.metric, "lr": r.lr,
                   "weight_decay": r.weight_decay, "val": r.val, "epoch": r.epoch, "test": r.test.value,
                   "test_low": r.test.low, "test_high": r.test.high, "n_test": r.test.n}
            for name, est in r.extra.items():
                row |= {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high}
            rows.append(row)
        return rows

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: probe.<task>.<encoder>.<metric> (+ .low/.high, .val)."""
        out = {}
        for r in self.results:
            key = f"probe.{r.task}.{r.encoder}.{r.metric}"
            out |= {key: r.test.value, f"{key}.low": r.test.low, f"{key}.high": r.test.high, f"{key}.val": r.val}
            for name, est in r.extra.items():
                k = f"probe.{r.task}.{r.encoder}.{name}"
                out |= {k: est.value, f"{k}.low": est.low, f"{k}.high": est.high}
        return out

    def table(self) -> Table:
        encoders = [e for e in ENCODERS if any(r.encoder == e for r in self.results)]
        tasks = list(dict.fromkeys(r.task for r in self.results))
        shown = "trained" if "trained" in encoders else encoders[0]  # whose chosen head is listed
        table = Table(["task", "metric", *encoders, f"{shown} head (lr, wd)"])
        for task in tasks:
            head = self.result(task, shown)
            table.rows.append([task, head.metric, *[str(self.result(task, e).test) for e in encoders],
                               f"{head.lr:g}, {head.weight_decay:g}"])
        return table

    def markdown(self) -> str:
        s = self.settings
        videos = ", ".join(f"{s['videos'][k]} {k}" for k in SPLITS)
        grid = ", ".join(f"({lr:g}, {wd:g})" for lr, wd in s["grid"])
        majority = ", ".join(f"{v:.3f} on {k}" for k, v in s["majority_class_accuracy"].items()) or "n/a"
        return (f"# Attentive probes: {self.model}\n\n"
                f"Dataset: `{self.dataset}` ({videos} videos). First clip of each video: {s['num_frames']} "
                f"frames at {s['fps']} fps, {s['img_size']} px. An attentive probe per (lr, wd) in {grid} "
                f"trains {s['epochs']} epochs on frozen features, keeping its best epoch on val; the best "
                f"head on val is reported on test with a bootstrap 95% interval (accuracy for num_balls, "
                f"R^2 for the regressions; 0 = predicting the train mean). Always answering the most "
                f"common class scores {majority}.\n\n"
                f"{self.table().markdown()}\n")


# --- data -------------------------------------------------------------------------------------


def relative_key(uri: str, dataset_uri: str) -> str:
    """A video's key inside the dataset (`sub/physics_000001.mp4`): the split hashes this, so a
    copied or moved dataset splits the same way."""
    if storage.is_s3(uri):
        prefix = storage.parse_uri(dataset_uri)[1].rstrip("/")
        key = storage.parse_uri(uri)[1]
        return key[len(prefix):].lstrip("/") if prefix and key.startswith(prefix) else key
    try:
        return Path(uri).resolve().relative_to(Path(dataset_uri).resolve()).as_posix()
    except ValueError:
        return Path(uri).name


def split_of(key: str, fractions: tuple[float, float] = SPLIT_FRACTIONS) -> str:
    """train, val or test by a stable hash of the key (no RNG: adding videos moves none)."""
    u = stable_hash(f"{SPLIT_SALT}:{key}") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


@dataclass
class ProbeData:
    """Decoded first clips of the usable videos, their labels and split."""

    uris: list[str]
    clips: np.ndarray  # (n, T, H, W, 3) uint8
    labels: list[PhysicsLabels]
    split: np.ndarray  # (n,) str
    skipped: int = 0

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_probe_data(
    dataset_uri: str, cfg: RunConfig, *, max_videos: int | None = None, threads: int = DECODE_THREADS,
    progress: bool = True,
) -> ProbeData:
    """Decode the first clip of each video and read its labels, in `threads` threads (object reads
    and FFmpeg's decoding overlap); videos that fail to decode are skipped with a warning."""
    uris = list_physics_videos(dataset_uri)
    if max_videos is not None:
        uris = uris[:max_videos]
    if not uris:
        raise FileNotFoundError(f"{dataset_uri}: no .mp4 videos with .state.parquet sidecars")
    m, fps = cfg.model, cfg.data.fps

    def load(uri: str) -> tuple[np.ndarray, PhysicsLabels] | None:
        try:
            clip = decode_clip(storage.get_bytes(uri), m.num_frames, fps, m.img_size, start_s=0.0)
            return clip, video_labels(uri, m.num_frames, fps)
        except (VideoDecodeError, FileNotFoundError) as err:
            log.warning("skipping %s: %s", uri, err)
            return None

    with ThreadPoolExecutor(threads) as pool:
        loaded = list(tqdm(pool.map(load, uris), total=len(uris), desc="decode", unit="video", disable=not progress))
    kept = [(uri, item) for uri, item in zip(uris, loaded) if item is not None]
    if not kept:
        raise ValueError(f"{dataset_uri}: none of {len(uris)} videos could be decoded")
    split = np.array([split_of(relative_key(uri, dataset_uri)) for uri, _ in kept])
    return ProbeData(
        uris=[uri for uri, _ in kept],
        clips=np.stack([item[0] for _, item in kept]),
        labels=[item[1] for _, item in kept],
        split=split,
        skipped=len(uris) - len(kept),
    )


# --- features ---------------------------------------------------------------------------------


Encode = Callable[[Tensor], Tensor]
"""Normalised clips (B, 3, T, H, W) -> tokens (B, N, D)."""


def feature_extractors(model: JEPA, cfg: RunConfig, device: str | torch.device) -> dict[str, Callable[[], Encode]]:
    """encoder name -> a factory of its `Encode`; factories, so the random-init model is only built
    (and held) while its features are extracted."""
    m = cfg.model
    return {
        "trained": lambda: model.to(device).embed,
        "random-init": lambda: random_init(cfg).to(device).embed,
        "pixel": lambda: lambda x: pixel_features(x, m.patch_size, m.tubelet_size),
    }


@torch.inference_mode()
def extract_features(
    encode: Encode, clips: np.ndarray, *, batch_size: int = FEATURE_BATCH,
    device: str | torch.device = "cpu", desc: str = "features", progress: bool = True,
) -> Tensor:
    """uint8 clips (n, T, H, W, 3) -> float16 tokens (n, N, D) on the CPU: the probes' cache.
    Half precision halves it (pixel tokens are 1536-d); probes cast batches back to float32, and
    their layer norm makes fp16's ~3 significant digits ample."""
    out = []
    for i in tqdm(range(0, len(clips), batch_size), desc=desc, unit="batch", disable=not progress):
        x = clips_to_tensor(clips[i : i + batch_size], device)  # (B, 3, T, H, W)
        out.append(encode(x).to("cpu", torch.float16))  # (B, N, D)
    return torch.cat(out)


# --- the evaluation ---------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (None: unchanged), then restore the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def majority_accuracy(data: ProbeData, tasks: list[ProbeTask]) -> dict[str, float]:
    """Test accuracy of always answering the train split's most common class, per classification
    task: the floor a probe's accuracy is read against (R^2 has its own: 0)."""
    out = {}
    for task in tasks:
        if task.kind == "classification":
            y = task_targets(data.labels, task.name)
            majority = np.bincount(y[data.indices("train")]).argmax()
            out[task.name] = float(np.mean(y[data.indices("test")] == majority))
    return out


def probe_encoder(
    feats: Tensor, data: ProbeData, tasks: list[ProbeTask], encoder: str, *,
    grid: list[tuple[float, float]], epochs: int, batch_size: int, width: int, token_grid: tuple[int, int, int],
    seed: int, device: str | torch.device, progress: bool = True,
) -> list[ProbeResult]:
    """Train and score each task's grid of probes on one encoder's cached features."""
    idx = {s: torch.as_tensor(data.indices(s)) for s in SPLITS}
    results = []
    for task in tqdm(tasks, desc=f"probes {encoder}", unit="task", disable=not progress):
        y = task_targets(data.labels, task.name)
        fit = train_probes(feats[idx["train"]], y[idx["train"]], feats[idx["val"]], y[idx["val"]], task, grid,
                           epochs=epochs, batch_size=batch_size, seed=seed, width=width, token_grid=token_grid,
                           device=device)
        ev = evaluate(fit, feats[idx["test"]], y[idx["test"]], seed=seed)
        lr, wd = fit.best_setting
        results.append(ProbeResult(task.name, encoder, task.metric, lr, wd, fit.best_val,
                                   fit.best_epochs[fit.best], ev.test, ev.extra))
    return results


def evaluate_probes(
    model: EvaluatedModel | str,
    dataset_uri: str,
    *,
    max_videos: int | None = None,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    grid: list[tuple[float, float]] | None = None,
    encoders: tuple[str, ...] = ENCODERS,
    progress: bool = True,
    device: str = "cpu",
    threads: int | None = TORCH_THREADS,
) -> ProbeReport:
    """Probe the trained encoder, its random initialisation and raw pixels on the physics labels
    of `dataset_uri` (s3:// or a folder). `model` is an `EvaluatedModel` or what
    `load_evaluated_model` takes (models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint folder).
    `threads`: torch CPU threads while it runs (None: leave the process's setting)."""
    with torch_threads(threads):
        return _evaluate_probes(model, dataset_uri, max_videos=max_videos, epochs=epochs, batch_size=batch_size,
                                grid=grid, encoders=encoders, progress=progress, device=device)


def _evaluate_probes(
    model: EvaluatedModel | str, dataset_uri: str, *, max_videos: int | None, epochs: int, batch_size: int,
    grid: list[tuple[float, float]] | None, encoders: tuple[str, ...], progress: bool, device: str,
) -> ProbeReport:
    t0 = time.perf_counter()
    evaluated = model if isinstance(model, EvaluatedModel) else load_evaluated_model(model, device)
    cfg = evaluated.cfg
    grid = [tuple(g) for g in (grid or DEFAULT_GRID)]
    unknown = set(encoders) - set(ENCODERS)
    if unknown:
        raise ValueError(f"unknown encoders {sorted(unknown)}; expected some of {', '.join(ENCODERS)}")

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    data = load_probe_data(dataset_uri, cfg, max_videos=max_videos, progress=progress)
    seconds["decode"] = time.perf_counter() - t
    counts = {s: int((data.split == s).sum()) for s in SPLITS}
    if min(counts.values()) == 0:
        raise ValueError(f"{dataset_uri}: {counts} videos per split; every split needs at least one "
                         f"(use more videos)")
    tasks = physics_tasks(data.labels)
    width = evaluated.model.encoder.embed_dim  # the same probe size on every encoder (pixels too)
    # Every encoder's tokens (pixels too) lie on the model's grid; probes get their positions from it.

    results: list[ProbeResult] = []
    extractors = feature_extractors(evaluated.model, cfg, device)
    for encoder in encoders:
        t = time.perf_counter()
        feats = extract_features(extractors[encoder](), data.clips, device=device, desc=f"features {encoder}",
                                 progress=progress)  # (n, N, D)
        seconds[f"features.{encoder}"] = time.perf_counter() - t
        t = time.perf_counter()
        results += probe_encoder(feats, data, tasks, encoder, grid=grid, epochs=epochs, batch_size=batch_size,
                                 width=width, token_grid=evaluated.model.token_grid, seed=cfg.train.seed,
                                 device=device, progress=progress)
        seconds[f"probes.{encoder}"] = time.perf_counter() - t
        del feats
    seconds["total"] = time.perf_counter() - t0

    m = cfg.model
    settings = {"num_frames": m.num_frames, "fps": cfg.data.fps, "img_size": m.img_size, "epochs": epochs,
                "batch_size": batch_size, "grid": [list(g) for g in grid], "probe_width": width,
                "token_grid": list(evaluated.model.token_grid),
                "videos": counts, "skipped": data.skipped, "split_salt": SPLIT_SALT,
                "majority_class_accuracy": majority_accuracy(data, tasks)}
    return ProbeReport(evaluated.label, dataset_uri, settings, results, seconds)


def figures(report: ProbeReport) -> dict[str, Any]:
    """Test metric per task and encoder, with the 95% intervals; dashed: the most common class's
    accuracy, or R^2 = 0."""
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for r in report.results))
    encoders = [e for e in ENCODERS if any(r.encoder == e for r in report.results)]
    fig = Figure(figsize=(3.2 * len(tasks), 3.2), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        est = [report.result(task, e).test for e in encoders]
        err = [[e.value - e.low for e in est], [e.high - e.value for e in est]]
        ax.bar(encoders, [e.value for e in est], yerr=err, capsize=3, color=["C0", "C1", "C2"][: len(est)])
        floor = report.settings.get("majority_class_accuracy", {}).get(task, 0.0)  # R^2: 0 = the train mean
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(report.result(task, encoders[0]).metric)
    return {"probe/test_metrics.png": fig}


def record(evaluated: EvaluatedModel, report: ProbeReport) -> str:
    """Log the report as an MLflow evaluation run linked to the model version; returns its id."""
    s = report.settings
    params = {"dataset_uri": report.dataset, "epochs": s["epochs"], "batch_size": s["batch_size"],
              "grid": str(s["grid"]), "num_frames": s["num_frames"], "fps": s["fps"], "img_size": s["img_size"],
              **{f"videos_{k}": v for k, v in s["videos"].items()}}
    return log_evaluation(evaluated, "probe", params=params, metrics=report.metrics(), result=report.as_dict(),
                          report_md=report.markdown(), figures=figures(report))
