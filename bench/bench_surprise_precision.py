"""Does bf16 autocast change what surprise decides? The same pairs scored in float32 and in bf16.

Scores ``--pairs`` rendered pairs per type (as ``bench_physics_learning`` renders them, at the
recipe's fps) with a model's surprise, once under each precision, and prints per type the max/mean
accuracy of each, how many pair outcomes differ, the largest relative change of a window's
surprise, and the time of each pass (one process, ``torch`` threads as set by the environment).

    python bench/bench_surprise_precision.py --model models:/jepa-physics@candidate
    python bench/bench_surprise_precision.py              # the recipe's model at its initial weights
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_physics_learning import PAIR_TYPES, render_all  # noqa: E402
from jepa.surprise import pair_correct, surprise_curve, surprise_mask  # noqa: E402
from jepa.train_step import autocast  # noqa: E402
from jepa.transforms import clips_to_tensor  # noqa: E402
from ray_jobs.physics_recipe import WORLD  # noqa: E402

CPU = torch.device("cpu")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="models:/NAME@ALIAS or a checkpoint folder (default: configs/physics.yaml at init)")
    ap.add_argument("--pairs", type=int, default=24, help="pairs per type")
    args = ap.parse_args(argv)

    if args.model:
        from ray_jobs.eval_runs import load_evaluated_model

        evaluated = load_evaluated_model(args.model)
        model, cfg = evaluated.model, evaluated.cfg
    else:
        from jepa.config import load_config
        from ray_jobs.eval_runs import random_init

        cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs/physics.yaml"))
        model = random_init(cfg)
    mask_index, context_steps, _ = surprise_mask(cfg.masks, model.token_grid[0])
    _, pairs = render_all(1, args.pairs, round(WORLD.fps / cfg.data.fps))
    videos = [(kind, [clips_to_tensor(torch.from_numpy(v)[None])[0] for v in (a, b)]) for kind, a, b in pairs]

    curves = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        with autocast(CPU, precision):
            curves[precision] = [[surprise_curve(model, v, context_steps=context_steps, mask_index=mask_index).values
                                  for v in pair] for _, pair in videos]
        print(f"{precision}: {time.perf_counter() - t0:.1f} s for {len(videos)} pairs", flush=True)

    # per precision and statistic: each pair's outcome (1 right, 0.5 tie, 0 wrong)
    outcome = {p: {stat: np.array([pair_correct(getattr(a, stat)(), getattr(b, stat)()) for a, b in curves[p]])
                   for stat in ("max", "mean")} for p in curves}
    kinds = np.array([k for k, _ in videos])
    print(f"{'type':<12} {'fp32 max/mean %':>16} {'bf16 max/mean %':>16} {'outcomes changed':>17} {'max rel. change':>16}")
    for kind in PAIR_TYPES:
        of = kinds == kind
        changed = sum(int((outcome["fp32"][stat][of] != outcome["bf16"][stat][of]).sum()) for stat in ("max", "mean"))
        rel = max(float(np.max(np.abs(curves["bf16"][i][j] - curves["fp32"][i][j]) / curves["fp32"][i][j]))
                  for i in np.flatnonzero(of) for j in range(2))
        cells = [f"{100 * outcome[p]['max'][of].mean():.0f}/{100 * outcome[p]['mean'][of].mean():.0f}"
                 for p in ("fp32", "bf16")]
        print(f"{kind:<12} {cells[0]:>16} {cells[1]:>16} {f'{changed} of {2 * of.sum()}':>17} {100 * rel:>15.2f}%")

if __name__ == "__main__":
    main()
