"""Does a physics recipe's predictor learn the world's motion? A fast check, in one process.

`make physics` needs ~1 h per try; this trains the same model (configs/physics.yaml, or
overrides) in-process on videos rendered in memory (no codec, no Ray, no S3) and, every
``--eval-every`` steps, prints two measures:

- **pred/copy**: on held-out clips, the predictor's L1 to the future target features, divided by
  that of "nothing moves" (the last context step's target features copied forward); below 1 means
  it predicts motion. Also for the first predicted step alone, where motion is easiest to predict.
- **pair accuracy** (max and mean surprise) on a few violation pairs per type, scored exactly as
  `jepa eval surprise` scores them (by likelihood with ``model.pred_error_scale=true``); in brackets, the same with copy-forward as the predictor, in
  the model's own target features (what those features let a "nothing moves" model tell apart);
  in square brackets, the pixel extrapolator's; then the % of pairs whose two maxima tie (both
  in a window before the onset: the violation was not the video's most surprising moment) and
  the % right in the one window that first predicts a frame where the two videos differ (the
  predictor's, then copy-forward's in brackets).
  ``--score-steps 0,1`` scores the pairs once per value (0: every predicted step in a window's
  surprise; N: the first N, as ``--score-steps``).
- with ``--probe-videos N``, **probes** of the target encoder on N more videos' first clips (the
  tasks, probe and head grid of `jepa eval probe`; 60/20/20 split), test accuracy or R² per task;
  at step 0 that is the random initialisation, and pixels are probed once beside it.

    python bench/bench_physics_learning.py --steps 600 --eval-every 200
    python bench/bench_physics_learning.py --context-steps 7 --freeze-encoder
    python bench/bench_physics_learning.py --steps 300 --eval-every 150 --probe-videos 1500
    python bench/bench_physics_learning.py --freeze-encoder --future-only --cached-features --steps 1600 \
        model.pred_copy_context=false
    python bench/bench_physics_learning.py --init-from models:/jepa-physics@candidate --freeze-encoder \
        --cached-features --steps 5000 --batch-size 32 --pair-types continuity,permanence,solidity optim.lr=3e-4

With a frozen encoder and the future mask alone, ``--cached-features`` encodes every clip of the
training videos once and trains the predictor alone on those features: no encoder pass per step,
so a predictor-only run goes several times further in the same time. With ``--init-from`` it
goes on from a trained model (e.g. the one `make physics` registers): how much more would the
recipe's predictor stage give with more steps?
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa.config import MaskConfig, load_config  # noqa: E402
from jepa.masks import FutureMaskGenerator, sample_masks  # noqa: E402
from jepa.model import JEPA, build_jepa  # noqa: E402
from jepa.objective import normalize_targets  # noqa: E402
from jepa.optim import build_optimizer, lr_at  # noqa: E402
from jepa.predictor_stage import FeatureCache, build_cache, predictor_step  # noqa: E402
from jepa.probe import evaluate as evaluate_probe  # noqa: E402
from jepa.probe import pixel_features, train_probes  # noqa: E402
from jepa.surprise import Windows, future_mask_index, pair_correct, pixel_surprise_curve, surprise_curve  # noqa: E402
from jepa.train_step import train_step  # noqa: E402
from jepa.transforms import clips_to_tensor  # noqa: E402
from jepa.vit import gather_tokens  # noqa: E402
from pipelines.physics_pairs import PAIR_TYPES as ALL_PAIR_TYPES  # noqa: E402
from pipelines.physics_pairs import indexed_pair  # noqa: E402
from pipelines.physics_labels import PhysicsLabels, clip_labels, physics_tasks, sidecar_columns, task_targets  # noqa: E402
from pipelines.synth_physics import render_video, state_table, video_seed  # noqa: E402
from ray_jobs.physics_recipe import WORLD  # noqa: E402

PAIR_TYPES = ("continuity", "permanence", "inertia", "control")
"""Pair types scored by default (``--pair-types`` takes any of `physics_pairs.PAIR_TYPES`)."""


def _video(args: tuple[int, int]) -> np.ndarray:
    seed, index = args
    return render_video(WORLD, video_seed(seed, index))[2]


def _pair(args: tuple[str, int]) -> tuple[str, np.ndarray, np.ndarray, int]:
    kind, index = args
    p = indexed_pair(WORLD, 1, kind, index)
    return kind, p.possible, p.impossible, p.onset_frame if p.first_diff_frame is None else p.first_diff_frame


def render_all(n_videos: int, n_pairs: int, step: int, pair_types: tuple[str, ...] = PAIR_TYPES) -> tuple[torch.Tensor, list]:
    """uint8 training videos (N, T, H, W, 3) and (type, possible, impossible, first differing
    frame) pairs, every ``step``-th frame (the recipe's fps)."""
    with ProcessPoolExecutor(2) as pool:
        videos = list(pool.map(_video, [(0, i) for i in range(n_videos)], chunksize=20))
        pairs = list(pool.map(_pair, [(k, i) for k in pair_types for i in range(n_pairs)]))
    return (torch.from_numpy(np.stack(videos)[:, ::step].copy()),
            [(k, a[::step].copy(), b[::step].copy(), -(-first_diff // step)) for k, a, b, first_diff in pairs])


PROBE_SEED = 5
"""Run seed of the probe videos (the training videos' is 0, the pairs' their own)."""


def _probe_video(args: tuple[int, int, int]) -> tuple[np.ndarray, PhysicsLabels]:
    """A probe video's first clip at the recipe's fps and its labels, as `jepa eval probe` takes them."""
    index, step, frames = args
    scene, states, video = render_video(WORLD, video_seed(PROBE_SEED, index))
    labels = clip_labels(sidecar_columns(state_table(WORLD, scene, states)), frames, WORLD.fps / step)
    return video[: frames * step : step], labels


def render_probe_set(n: int, step: int, frames: int) -> tuple[np.ndarray, list[PhysicsLabels]]:
    with ProcessPoolExecutor(2) as pool:
        out = list(pool.map(_probe_video, [(i, step, frames) for i in range(n)], chunksize=20))
    return np.stack([clip for clip, _ in out]), [labels for _, labels in out]


@torch.no_grad()
def _features(encode, clips: np.ndarray) -> torch.Tensor:
    return torch.cat([encode(clips_to_tensor(torch.from_numpy(clips[i : i + 64]))).float() for i in range(0, len(clips), 64)])


def probe_scores(encode, clips: np.ndarray, labels: list[PhysicsLabels], model: JEPA) -> dict[str, float]:
    """Test metric per task of the val-selected probe head on ``encode``'s features (videos split
    60/20/20 by index)."""
    feats, split = _features(encode, clips), np.arange(len(clips)) % 5
    idx = {name: torch.as_tensor(np.flatnonzero(sel)) for name, sel in
           (("train", split < 3), ("val", split == 3), ("test", split == 4))}
    out = {}
    for task in physics_tasks(labels):
        y = task_targets(labels, task.name)
        fit = train_probes(feats[idx["train"]], y[idx["train"]], feats[idx["val"]], y[idx["val"]], task,
                           width=model.encoder.embed_dim, token_grid=model.token_grid)
        out[task.name] = evaluate_probe(fit, feats[idx["test"]], y[idx["test"]]).test.value
    return out


def random_clips(videos: torch.Tensor, n: int, frames: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(videos), (n,), generator=g).tolist()
    start = torch.randint(videos.shape[1] - frames + 1, (n,), generator=g).tolist()
    return clips_to_tensor(torch.stack([videos[i, s : s + frames] for i, s in zip(idx, start)]))


@torch.no_grad()
def cache_features(model: JEPA, videos: torch.Tensor, frames: int, masks: list[MaskConfig]) -> FeatureCache:
    """`jepa.predictor_stage.build_cache` of every tubelet-aligned clip of ``videos``."""
    starts = range(0, videos.shape[1] - frames + 1, model.encoder.tubelet_size)
    batches = (clips_to_tensor(torch.stack([v[s : s + frames] for v in videos[i : i + 16] for s in starts]))
               for i in range(0, len(videos), 16))
    return build_cache(model, batches, masks)


@torch.no_grad()
def pred_vs_copy(model: JEPA, clips: torch.Tensor, context_steps: int, mask_index: int) -> tuple[float, float]:
    """(all predicted steps, first predicted step): predictor L1 / copy-forward L1."""
    grid = model.token_grid
    m = FutureMaskGenerator(grid, MaskConfig(kind="future", context_steps=context_steps))(len(clips))
    pred = model.predictor(model.encoder(clips, keep=m.context), m.context, m.target, grid, mask_index=mask_index)
    full = normalize_targets(model.target_encoder(clips))
    target = gather_tokens(full, m.target)
    per_step = grid[1] * grid[2]
    copy = full[:, (context_steps - 1) * per_step : context_steps * per_step].repeat(1, grid[0] - context_steps, 1)
    ratio = lambda sl: float((pred[:, sl] - target[:, sl]).abs().mean() / (copy[:, sl] - target[:, sl]).abs().mean())
    return ratio(slice(None)), ratio(slice(0, per_step))


@torch.no_grad()
def copy_surprise(model: JEPA, video: torch.Tensor, windows: Windows, context_steps: int) -> np.ndarray:
    """Per window of ``windows`` (a surprise curve's): the L1 of "nothing moves", the last context
    step's target features copied forward. Pairs scored this way show what the target features
    alone can tell apart."""
    grid = model.token_grid
    clips = torch.stack([video[:, s : s + windows.window_frames] for s in windows.starts])
    f = normalize_targets(model.target_encoder(clips)).unflatten(1, (grid[0], grid[1] * grid[2]))
    scored = f[:, context_steps : context_steps + windows.scored // model.encoder.tubelet_size]
    return (scored - f[:, context_steps - 1 : context_steps]).abs().mean(dim=(1, 2, 3)).numpy()


@torch.no_grad()
def pair_accuracy(model: JEPA, pairs: list, context_steps: int, mask_index: int,
                  score_steps: int | None) -> dict[str, tuple[float, ...]]:
    """Per type: % of pairs where the impossible video's surprise is higher, by (max, mean) of the
    predictor's surprise, then of the copy-forward surprise, then of the pixel extrapolator's; last,
    % of pairs whose two predictor maxima tie (the max falls in a window before the onset, the same
    in both videos), and % right by the predictor's (then copy-forward's) surprise in the window
    that first predicts a frame where the videos differ (both futures the same up to there)."""
    scores: dict[str, list[list[float]]] = {}
    for kind, possible, impossible, first_diff in pairs:
        videos = [clips_to_tensor(torch.from_numpy(v)[None])[0] for v in (possible, impossible)]
        curves = [surprise_curve(model, v, context_steps=context_steps, mask_index=mask_index, score_steps=score_steps)
                  for v in videos]
        pred = [c.values for c in curves]
        copy = [copy_surprise(model, v, c.windows, context_steps) for v, c in zip(videos, curves)]
        pixel = [pixel_surprise_curve(v, c.windows).values for v, c in zip(videos, curves)]
        row = []
        for possible_s, impossible_s in (pred, copy, pixel):
            row += [float(pair_correct(possible_s.max(), impossible_s.max())),
                    float(pair_correct(possible_s.mean(), impossible_s.mean()))]
        w = curves[0].windows
        at = next((i for i, f in enumerate(w.predicted_from) if f + w.scored > first_diff), len(w.starts) - 1)
        row += [float(pred[0].max() == pred[1].max()), float(pair_correct(pred[0][at], pred[1][at])),
                float(pair_correct(copy[0][at], copy[1][at]))]
        scores.setdefault(kind, []).append(row)
    return {k: tuple(round(100 * float(x), 1) for x in np.mean(v, axis=0)) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/physics.yaml")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--videos", type=int, default=1500, help="rendered training videos (100 more are held out)")
    ap.add_argument("--pairs", type=int, default=24, help="pairs per type for the accuracy")
    ap.add_argument("--context-steps", type=int, help="override the future mask's context steps")
    ap.add_argument("--score-steps", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                    help="predicted token steps a window's surprise covers, one scoring each (0: all; e.g. 0,1)")
    ap.add_argument("--future-only", action="store_true", help="train with the future mask alone")
    ap.add_argument("--freeze-encoder", action="store_true",
                    help="keep the encoder as it starts, at random init or --init-from's (targets fixed): does the "
                         "predictor alone learn?")
    ap.add_argument("--cached-features", action="store_true",
                    help="with --freeze-encoder: encode the training clips once, train the predictor alone on the "
                         "future mask (as the recipe's predictor_stage)")
    ap.add_argument("--init-from", metavar="MODEL",
                    help="start from a trained model's weights (models:/NAME@ALIAS or a checkpoint folder; its "
                         "config must build the same model as --config and the overrides), e.g. to go on "
                         "training the predictor of a `make physics` model with --freeze-encoder --cached-features")
    ap.add_argument("--pair-types", type=lambda s: tuple(s.split(",")), default=PAIR_TYPES,
                    help=f"comma-separated pair types to score (default: {','.join(PAIR_TYPES)})")
    ap.add_argument("--probe-videos", type=int, default=0, help="probe the target encoder on this many videos (0: no probes)")
    ap.add_argument("--probe-context", action="store_true",
                    help="probe the context encoder too (the one trained by gradient; with optim.ema_momentum=1 the "
                         "targets stay at their random init and only it learns)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=5e-4")
    args = ap.parse_args(argv)
    if args.cached_features and not args.freeze_encoder:
        ap.error("--cached-features needs --freeze-encoder (features that do not change)")
    unknown = set(args.pair_types) - set(ALL_PAIR_TYPES)
    if unknown:
        ap.error(f"unknown pair types {sorted(unknown)}; expected some of {', '.join(ALL_PAIR_TYPES)}")
    if args.init_from and args.future_only:
        ap.error("--init-from keeps the trained model's masks; leave out --future-only (--cached-features trains "
                 "the future mask alone)")

    torch.manual_seed(args.seed)
    cfg = load_config(args.config, args.overrides)
    masks = [m for m in cfg.masks if m.kind == "future" or not args.future_only]
    if args.context_steps:
        masks = [dataclasses.replace(m, context_steps=args.context_steps) if m.kind == "future" else m for m in masks]
    cfg = dataclasses.replace(cfg, masks=masks)
    mask_index = future_mask_index(cfg.masks)
    if mask_index is None:
        raise SystemExit("the config has no future mask; surprise needs one")
    context_steps = cfg.masks[mask_index].context_steps
    print(f"masks {cfg.masks}; freeze_encoder={args.freeze_encoder}; precision {cfg.train.precision}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    trained = None
    if args.init_from:  # before rendering, so a wrong URI fails at once
        from ray_jobs.eval_runs import load_evaluated_model

        trained = load_evaluated_model(args.init_from).model.state_dict()

    t0 = time.time()
    videos, pairs = render_all(args.videos + 100, args.pairs, round(WORLD.fps / cfg.data.fps), args.pair_types)
    train, held = videos[:-100], videos[-100:]
    print(f"rendered {len(videos)} videos {tuple(videos.shape[1:])} and {len(pairs)} pairs in {time.time() - t0:.0f} s", flush=True)

    probe_set = None
    if args.probe_videos:
        t0 = time.time()
        probe_set = render_probe_set(args.probe_videos, round(WORLD.fps / cfg.data.fps), cfg.model.num_frames)
        print(f"rendered {args.probe_videos} probe clips in {time.time() - t0:.0f} s", flush=True)

    model = build_jepa(cfg.model, len(cfg.masks))
    if trained is not None:
        model.load_state_dict(trained)
        print(f"weights from {args.init_from}", flush=True)
    if args.freeze_encoder:
        model.encoder.requires_grad_(False)
    optimizer = build_optimizer(model, cfg.optim)
    momentum = 1.0 if args.freeze_encoder else cfg.optim.ema_momentum
    g = torch.Generator().manual_seed(args.seed + 1)
    held_clips = random_clips(held, 64, cfg.model.num_frames, torch.Generator().manual_seed(args.seed + 2))

    def evaluate(step: int) -> None:
        ratio, first = pred_vs_copy(model, held_clips, context_steps, mask_index)
        print(f"step {step:5d}  pred/copy {ratio:.3f} (first step {first:.3f})", flush=True)
        for score_steps in args.score_steps:
            acc = pair_accuracy(model, pairs, context_steps, mask_index, score_steps or None)
            cells = "  ".join(f"{k} {a:.0f}/{b:.0f} ({c:.0f}/{d:.0f}) [{e:.0f}/{f:.0f}] ties {t:.0f} onset {o:.0f} ({co:.0f})"
                              for k, (a, b, c, d, e, f, t, o, co) in acc.items())
            print(f"  {'all' if not score_steps else score_steps} predicted steps scored, pairs max/mean % "
                  f"(copy-forward's) [pixels'], % of max ties, % right at the onset window (copy-forward's): {cells}", flush=True)
        if probe_set is not None:
            encoders = {"target encoder": model.embed}
            if args.probe_context and step > 0:
                encoders["context encoder"] = model.encoder
            if step == 0:
                m = cfg.model
                encoders["pixels"] = lambda x: pixel_features(x, m.patch_size, m.tubelet_size)
            for name, encode in encoders.items():
                scores = probe_scores(encode, *probe_set, model)
                print(f"  probes, {name}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)

    cache = None
    if args.cached_features:
        t0 = time.time()
        cache = cache_features(model, train, cfg.model.num_frames, cfg.masks)
        print(f"cached the features of {len(cache)} clips in {time.time() - t0:.0f} s", flush=True)

    t0 = time.time()
    evaluate(0)
    for step in range(args.steps):
        lr = lr_at(step, cfg.optim, args.steps)
        if cache is not None:
            rows = torch.randint(len(cache), (args.batch_size,), generator=g)
            loss = predictor_step(model, cache, rows, optimizer, lr, cfg.train.precision)["loss"]
            rank = ""
        else:
            clips = random_clips(train, args.batch_size, cfg.model.num_frames, g)
            out = train_step(model, [(clips, sample_masks(model.token_grid, cfg.masks, args.batch_size, g))],
                             optimizer, lr, momentum, torch.device("cpu"), cfg.train.precision)
            loss, rank = out["loss"], f"  eff_rank {out['effective_rank']:.1f}"
        if (step + 1) % 50 == 0:
            print(f"step {step + 1:5d}  loss {loss:.4f}{rank}  {time.time() - t0:.0f} s", flush=True)
        if (step + 1) % args.eval_every == 0:
            evaluate(step + 1)


if __name__ == "__main__":
    main()
