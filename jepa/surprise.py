"""Surprise: how badly the world model predicts what happens next.

A window of ``window_frames`` frames slides over the video. From its first ``context_steps``
token time steps the online encoder and predictor predict the target encoder's (layer-normed)
features of the remaining steps; a window's surprise is the mean L1 between the two. A model that
learned the world's physics is more surprised by a video that breaks them: for a matched pair
(possible, impossible) the score is right when the impossible video's max (or mean) is higher.

A predictor with an error scale head (``model.pred_error_scale``) also says how wrong it expects
feature of each prediction to be; its surprise is then the mean negative log-likelihood of the
errors under those scales (score "nll"): L1 weighed by the model's confidence, so a miss where the future was
plainly predictable (a ball that jumps in free flight) outweighs the usual misses at bounces. An
untrained head has scale 1 everywhere, where "nll" equals "l1".

The pixel baseline scores the same windows with a model that knows no physics beyond
"things keep moving": linear extrapolation of the last two context frames, L1 in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from jepa.config import MaskConfig
from jepa.masks import FutureMaskGenerator, MaskBatch
from jepa.model import JEPA
from jepa.objective import abs_error, laplace_nll
from jepa.vit import gather_tokens


@dataclass(frozen=True)
class Windows:
    """Where the sliding windows sit in a video of ``n_frames`` frames (all in frames)."""

    window_frames: int
    context_frames: int
    stride_frames: int
    n_frames: int
    scored_frames: int | None = None
    """Predicted frames a window's surprise covers, from the first on (None: all of them). The
    first frames after the context are the easiest to predict, so a broken law stands out most there."""

    def __post_init__(self) -> None:
        if not 0 < self.context_frames < self.window_frames:
            raise ValueError(f"need 0 < context_frames < window_frames, got {self.context_frames}, {self.window_frames}")
        if self.scored_frames is not None and not 0 < self.scored_frames <= self.window_frames - self.context_frames:
            raise ValueError(f"scored_frames must be in 1..{self.window_frames - self.context_frames} "
                             f"(the predicted frames), got {self.scored_frames}")
        if self.stride_frames < 1:
            raise ValueError(f"stride_frames must be >= 1, got {self.stride_frames}")
        if self.n_frames < self.window_frames:
            raise ValueError(f"a video of {self.n_frames} frames is shorter than one window ({self.window_frames})")

    @property
    def starts(self) -> list[int]:
        """First frame of each window."""
        return list(range(0, self.n_frames - self.window_frames + 1, self.stride_frames))

    @property
    def scored(self) -> int:
        """Predicted frames scored per window."""
        return self.scored_frames or self.window_frames - self.context_frames

    @property
    def predicted_from(self) -> list[int]:
        """First predicted frame of each window: the time a window's surprise belongs to."""
        return [s + self.context_frames for s in self.starts]


Score = Literal["l1", "nll"]


def default_score(model: JEPA) -> Score:
    """"nll" for a predictor with an error scale head (the surprise it was trained to give), else "l1"."""
    return "l1" if model.predictor.log_scale is None else "nll"


@dataclass
class SurpriseCurve:
    """Per-window surprise of one video, in window order."""

    values: np.ndarray  # (W,)
    windows: Windows
    score: Score = "l1"

    @property
    def max(self) -> float:
        return float(self.values.max())

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    def as_dict(self) -> dict:
        return {
            "surprise": [round(float(v), 6) for v in self.values],
            "predicted_from_frame": self.windows.predicted_from,
            "window_frames": self.windows.window_frames,
            "context_frames": self.windows.context_frames,
            "stride_frames": self.windows.stride_frames,
            "scored_frames": self.windows.scored,
            "max": self.max,
            "mean": self.mean,
            "score": self.score,
        }


def future_mask_index(mask_cfgs: Sequence[MaskConfig]) -> int | None:
    """Index of the model's first future mask config (its mask token asks for the future), if any."""
    return next((i for i, c in enumerate(mask_cfgs) if c.kind == "future"), None)


def surprise_mask(mask_cfgs: Sequence[MaskConfig], steps: int) -> tuple[int, int, str]:
    """(mask index, context time steps, mask kind) for surprise on clips of ``steps`` token time
    steps: the first future mask config if there is one, else mask token 0 with half the steps as
    context (multiblock masks never train future prediction, a weaker predictor of it)."""
    index = future_mask_index(mask_cfgs)
    if index is None:
        return 0, steps // 2, "multiblock"
    return index, mask_cfgs[index].context_steps or steps // 2, "future"


def _window_batches(video: Tensor, windows: Windows, batch_size: int):
    """video (C, F, H, W) -> batches of windows (B, C, T, H, W)."""
    starts = windows.starts
    for i in range(0, len(starts), batch_size):
        yield torch.stack([video[:, s : s + windows.window_frames] for s in starts[i : i + batch_size]])


@torch.no_grad()
def surprise_curve(
    model: JEPA,
    video: Tensor,
    *,
    context_steps: int,
    mask_index: int = 0,
    stride_frames: int | None = None,
    score_steps: int | None = None,
    score: Score | None = None,
    batch_size: int = 8,
) -> SurpriseCurve:
    """Per-window surprise of one normalised video (3, F, H, W) on the model's device.

    Windows are as long as the model's training clips; ``context_steps`` token time steps of each
    are context; ``mask_index`` picks the predictor's mask token (the future config's, ideally).
    The stride defaults to one tubelet; ``score_steps`` (default: all) keeps the first predicted
    token time steps in the score; ``score`` defaults to `default_score`.
    """
    score = score or default_score(model)
    if score == "nll" and model.predictor.log_scale is None:
        raise ValueError("score 'nll' needs a predictor with an error scale head (model.pred_error_scale: true)")
    frames, height, width = model.token_grid[0] * model.encoder.tubelet_size, *video.shape[-2:]
    tubelet = model.encoder.tubelet_size
    windows = Windows(frames, context_steps * tubelet, stride_frames or tubelet, video.shape[1],
                      scored_frames=score_steps * tubelet if score_steps else None)
    grid = model.encoder.token_grid(frames, height, width)
    future = FutureMaskGenerator(grid, MaskConfig(kind="future", context_steps=context_steps))
    scored_tokens = windows.scored // tubelet * grid[1] * grid[2]  # targets run in (T, H, W) order
    values = []
    for clips in _window_batches(video, windows, batch_size):
        m: MaskBatch = future(clips.shape[0]).to(clips.device)
        context = model.encoder(clips, keep=m.context)  # (B, Nc, D)
        target = gather_tokens(model.target_encoder(clips), m.target)  # (B, Nt, D)
        if score == "nll":
            pred, log_scale = model.predictor(context, m.context, m.target, grid, mask_index=mask_index,
                                              with_log_scale=True)
            error = laplace_nll(abs_error(pred, target), log_scale)  # (B, Nt, D)
        else:
            error = abs_error(model.predictor(context, m.context, m.target, grid, mask_index=mask_index), target)
        values.append(error[:, :scored_tokens].mean(dim=(1, 2)))
    return SurpriseCurve(torch.cat(values).cpu().numpy(), windows, score)


def pixel_surprise_curve(video: Tensor, windows_like: Windows) -> SurpriseCurve:
    """The same windows scored by linear extrapolation of the last two context frames: mean L1
    between the extrapolated and the real future frames of (3, F, H, W) ``video``."""
    w = replace(windows_like, n_frames=video.shape[1])
    values = []
    for s in w.starts:
        last, before = video[:, s + w.context_frames - 1], video[:, s + w.context_frames - 2]
        ahead = torch.arange(1, w.scored + 1, dtype=video.dtype, device=video.device)
        guess = last[:, None] + ahead.view(1, -1, 1, 1) * (last - before)[:, None]  # (3, Tf, H, W)
        real = video[:, s + w.context_frames : s + w.context_frames + w.scored]
        values.append(float((guess - real).abs().mean()))
    return SurpriseCurve(np.asarray(values), w)


def pair_correct(possible: np.ndarray, impossible: np.ndarray) -> np.ndarray:
    """Per pair: 1 where the impossible video scored higher, 0.5 on a tie, 0 otherwise."""
    possible, impossible = np.asarray(possible, float), np.asarray(impossible, float)
    return (impossible > possible) + 0.5 * (impossible == possible)
