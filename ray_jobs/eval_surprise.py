"""`jepa eval surprise`: does the world model find physically impossible videos more surprising?

Every matched pair (possible, impossible; `jepa synth physics --pairs`) is scored by three
scorers on the same windows: the trained model, the same architecture at random initialisation,
and a pixel model (linear extrapolation). A pair is right when the impossible video's surprise,
max or mean over its windows, is higher; accuracies per type come with bootstrap 95% intervals.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from jepa.stats import Estimate, bootstrap
from jepa.surprise import (
    Score, SurpriseCurve, default_score, pair_correct, pixel_surprise_curve, surprise_curve, surprise_mask,
)
from jepa.train_step import autocast
from jepa.transforms import clips_to_tensor
from pipelines.physics_pairs import read_pairs
from pipelines.storage import get_bytes
from pipelines.video import decode_video
from ray_jobs.eval_runs import EvaluatedModel, Table, log_evaluation, random_init

SCORERS = ("trained", "random-init", "pixel")
STATISTICS = ("max", "mean")
VIOLATIONS = ("permanence", "continuity", "constancy", "solidity", "inertia")
EXAMPLE_TYPES_PLOTTED = 6


@dataclass
class PairScores:
    pair_id: str
    type: str
    onset_s: float
    scores: dict[str, dict[str, tuple[float, float]]]
    """scorer -> statistic -> (possible, impossible)."""
    curves: dict[str, tuple[SurpriseCurve, SurpriseCurve]] | None = None
    """The trained model's (possible, impossible) curves, kept for a few example pairs."""


@dataclass
class SurpriseReport:
    model: str
    pairs_uri: str
    settings: dict[str, Any]
    accuracy: dict[str, dict[str, dict[str, Estimate]]]
    """type -> scorer -> statistic -> pairwise accuracy."""
    violation_average: dict[str, dict[str, float]]
    """scorer -> statistic -> mean accuracy over the violation types present."""
    examples: list[PairScores] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pairs": self.pairs_uri,
            "settings": self.settings,
            "accuracy": {t: {s: {k: e.as_dict() for k, e in stats.items()} for s, stats in scorers.items()}
                         for t, scorers in self.accuracy.items()},
            "violation_average": self.violation_average,
        }

    def metrics(self) -> dict[str, float]:
        out = {}
        for t, scorers in self.accuracy.items():
            for s, stats in scorers.items():
                for k, e in stats.items():
                    key = f"surprise_acc.{t}.{s}.{k}"
                    out |= {key: e.value, f"{key}.low": e.low, f"{key}.high": e.high}
        for s, stats in self.violation_average.items():
            out |= {f"surprise_acc.violations.{s}.{k}": v for k, v in stats.items()}
        return out

    def table(self) -> Table:
        table = Table(["type", "pairs", *[f"{s} {k}" for s in SCORERS for k in STATISTICS]])
        for t, scorers in self.accuracy.items():
            n = next(iter(scorers["trained"].values())).n
            table.rows.append([t, n, *[_pct(scorers[s][k]) for s in SCORERS for k in STATISTICS]])
        table.rows.append(["violations (mean)", "", *[f"{100 * self.violation_average[s][k]:.1f}"
                                                       for s in SCORERS for k in STATISTICS]])
        return table

    def markdown(self) -> str:
        s = self.settings
        return (f"# Surprise on violation pairs: {self.model}\n\n"
                f"Pairs: `{self.pairs_uri}`. Windows of {s['window_frames']} frames at {s['fps']} fps, "
                f"{s['context_frames']} of context, the next {s['scored_frames']} scored, stride "
                f"{s['stride_frames']}; predictor mask: {s['mask']}; surprise: {s['score']}; precision: {s['precision']}.\n"
                f"Pairwise accuracy (%) with bootstrap 95% intervals; a pair is right when the impossible "
                f"video's surprise (max or mean over windows) is higher, ties count half.\n\n"
                f"{self.table().markdown()}\n")


def _pct(e: Estimate) -> str:
    return f"{100 * e.value:.1f} [{100 * e.low:.0f}, {100 * e.high:.0f}]"


def _decode_pair(row: dict[str, Any], fps: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(decode_video(get_bytes(row[k]), fps, size) for k in ("possible_uri", "impossible_uri"))


def evaluate_surprise(
    evaluated: EvaluatedModel,
    pairs_uri: str,
    *,
    max_pairs: int | None = None,
    stride_frames: int | None = None,
    score_steps: int | None = None,
    score: Score | None = None,
    examples_per_type: int = 1,
    precision: str = "auto",
    progress: bool = True,
) -> SurpriseReport:
    """Score every pair (or the first ``max_pairs`` of each type) with the three scorers. Both
    networks run under ``precision`` (as ``train.precision``; bf16 halves the time on CPUs with
    native bf16 and flips a few close pairs: docs/evaluation.md) and give the same ``score``
    (default: the trained model's `default_score`)."""
    cfg = evaluated.cfg
    rows = read_pairs(pairs_uri).to_pylist()
    if max_pairs is not None:
        taken: Counter[str] = Counter()
        kept = []
        for r in rows:
            if taken[r["type"]] < max_pairs:
                taken[r["type"]] += 1
                kept.append(r)
        rows = kept
    if not rows:
        raise FileNotFoundError(f"{pairs_uri}/pairs.parquet lists no pairs")
    mask_index, context_steps, mask_kind = surprise_mask(cfg.masks, evaluated.model.token_grid[0])
    device = next(evaluated.model.parameters()).device
    models = {"trained": evaluated.model, "random-init": random_init(cfg).to(device)}
    score = score or default_score(evaluated.model)

    def curves_of(video: np.ndarray) -> dict[str, SurpriseCurve]:
        x = clips_to_tensor(video[None], device)[0]  # (3, F, H, W)
        with autocast(device, precision):
            curves = {name: surprise_curve(m, x, context_steps=context_steps, mask_index=mask_index,
                                           stride_frames=stride_frames, score_steps=score_steps, score=score)
                      for name, m in models.items()}
        curves["pixel"] = pixel_surprise_curve(x, curves["trained"].windows)
        return curves

    results: list[PairScores] = []
    shown: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:
        decoded = pool.map(lambda r: _decode_pair(r, cfg.data.fps, cfg.model.img_size), rows)
        for row, (possible, impossible) in tqdm(zip(rows, decoded), total=len(rows), desc="surprise",
                                                unit="pair", disable=not progress):
            a, b = curves_of(possible), curves_of(impossible)
            keep = shown.get(row["type"], 0) < examples_per_type
            shown[row["type"]] = shown.get(row["type"], 0) + keep
            results.append(PairScores(
                row["pair_id"], row["type"], float(row["onset_s"]),
                {s: {"max": (a[s].max, b[s].max), "mean": (a[s].mean, b[s].mean)} for s in SCORERS},
                (a["trained"], b["trained"]) if keep else None,
            ))
    windows = results[0].curves[0].windows
    settings = {"fps": cfg.data.fps, "window_frames": windows.window_frames, "context_frames": windows.context_frames,
                "scored_frames": windows.scored, "stride_frames": windows.stride_frames, "mask": mask_kind, "score": score,
                "precision": precision, "pairs": len(results)}
    return _summarise(evaluated.label, pairs_uri, settings, results)


def _summarise(model: str, pairs_uri: str, settings: dict[str, Any], results: list[PairScores]) -> SurpriseReport:
    types = sorted({r.type for r in results}, key=lambda t: (VIOLATIONS + ("control",) + (t,)).index(t))
    accuracy: dict[str, dict[str, dict[str, Estimate]]] = {}
    for t in types:
        of_type = [r for r in results if r.type == t]
        accuracy[t] = {s: {k: bootstrap(pair_correct(*np.array([r.scores[s][k] for r in of_type]).T))
                           for k in STATISTICS} for s in SCORERS}
    violations = [t for t in types if t in VIOLATIONS]
    average = {s: {k: float(np.mean([accuracy[t][s][k].value for t in violations])) if violations else float("nan")
                   for k in STATISTICS} for s in SCORERS}
    return SurpriseReport(model, pairs_uri, settings, accuracy, average, [r for r in results if r.curves])


def figures(report: SurpriseReport) -> dict[str, Any]:
    """The accuracy-with-intervals bar chart and the surprise-over-time plot of the example pairs."""
    from matplotlib.figure import Figure

    bars = Figure(figsize=(10, 3.2 * len(STATISTICS)), layout="constrained")
    types = list(report.accuracy)
    for ax, k in zip(bars.subplots(len(STATISTICS), 1, squeeze=False)[:, 0], STATISTICS):
        width = 0.8 / len(SCORERS)
        for i, s in enumerate(SCORERS):
            est = [report.accuracy[t][s][k] for t in types]
            x = np.arange(len(types)) + (i - (len(SCORERS) - 1) / 2) * width
            err = [[e.value - e.low for e in est], [e.high - e.value for e in est]]
            ax.bar(x, [e.value for e in est], width, yerr=err, capsize=3, label=s)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(types)), types)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"pairwise accuracy ({k})")
        ax.legend(loc="lower right", fontsize=8)

    examples = report.examples[:EXAMPLE_TYPES_PLOTTED]
    curves = Figure(figsize=(4 * len(examples), 3), layout="constrained")
    fps = report.settings["fps"]
    for ax, ex in zip(curves.subplots(1, max(1, len(examples)), squeeze=False)[0], examples):
        for curve, role in zip(ex.curves, ("possible", "impossible")):
            ax.plot(np.array(curve.windows.predicted_from) / fps, curve.values, marker=".", label=role)
        ax.axvline(ex.onset_s, color="grey", linestyle="--", linewidth=1, label="onset")
        ax.set_title(ex.pair_id, fontsize=9)
        ax.set_xlabel("first predicted frame (s)")
    if examples:
        curves.axes[0].set_ylabel(f"surprise ({report.settings['score']})")
        curves.axes[0].legend(fontsize=8)
    return {"surprise/accuracy.png": bars, "surprise/surprise_over_time.png": curves}


def record(evaluated: EvaluatedModel, report: SurpriseReport) -> str:
    """Log the report as an MLflow evaluation run linked to the model version; returns its id."""
    return log_evaluation(evaluated, "surprise", params={"pairs_uri": report.pairs_uri, **report.settings},
                          metrics=report.metrics(), result=report.as_dict(), report_md=report.markdown(),
                          figures=figures(report))
