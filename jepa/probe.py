"""Attentive probes on frozen features: what a representation knows, read out by a small head.

V-JEPA evaluates a frozen encoder by training a light head on its token features: one learned
query token cross-attends to all tokens (a pre-norm transformer block), then a linear layer maps
the pooled vector to the task's output. Only the head trains, so:

- features are computed once per clip (`pixel_features`, or an encoder's `embed`) and cached, and
  every epoch of every head reads the cache: the backbone never runs during training;
- a grid of (lr, weight decay) settings trains at once as independent heads (`ProbeBank`) on the
  same mini-batches; the best head on the validation split is reported on the test split with a
  bootstrap 95% interval over test examples (`jepa.stats.bootstrap`).

Given the token grid, the probe also sees each token's position (`token_positions`): our encoder
has RoPE and no position table, so its features need not say where a token is, and pixel tokens
cannot; an attention pool is blind to token order, so without positions it could not read out
where (or when) anything is.

Single-query attention is computed in the input space (see `AttentiveProbe.query_in`): the keys and
values of N tokens are never materialised, so a head costs O(B N D) per step instead of
O(B N D^2). That is what makes a grid of heads on 1536-d pixel tokens cheap on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.stats import Estimate, bootstrap

TaskKind = Literal["classification", "regression"]
RegressionLoss = Literal["mse", "smooth_l1"]

LN_EPS = 1e-6
INIT_STD = 0.02
POSITION_FREQS = (1.0, 2.0, 4.0)
"""Frequencies (half-periods per clip side) of the probe's token position features."""
# (lr, weight decay) pairs trained side by side. On a few hundred clips the heads that learn
# anything general need the higher rates (1e-2 won most position probes) and overfit within epochs
# at any decay; keeping each head's best val epoch (`train_probes`) handles the latter.
DEFAULT_GRID: tuple[tuple[float, float], ...] = tuple(
    (lr, wd) for lr in (3e-4, 1e-3, 3e-3, 1e-2) for wd in (0.01, 0.4)
)


@dataclass(frozen=True)
class ProbeTask:
    """What a probe predicts: `num_classes` classes (cross-entropy, scored by accuracy) or a
    `dim`-d real vector (scored by R^2; targets are standardised by the train split's mean/std)."""

    name: str
    kind: TaskKind
    num_classes: int = 0
    """Classification: labels are integers in [0, num_classes)."""
    dim: int = 1
    """Regression: values per example."""
    loss: RegressionLoss = "mse"
    """Regression loss on standardised targets (MSE matches the R^2 it is scored by)."""

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"task {self.name}: kind must be classification or regression, got {self.kind!r}")
        if self.kind == "classification" and self.num_classes < 2:
            raise ValueError(f"task {self.name}: classification needs num_classes >= 2, got {self.num_classes}")
        if self.kind == "regression" and self.dim < 1:
            raise ValueError(f"task {self.name}: regression needs dim >= 1, got {self.dim}")
        if self.loss not in ("mse", "smooth_l1"):
            raise ValueError(f"task {self.name}: loss must be mse or smooth_l1, got {self.loss!r}")

    @property
    def out_dim(self) -> int:
        return self.num_classes if self.kind == "classification" else self.dim

    @property
    def metric(self) -> str:
        """The figure heads are selected and reported by (higher is better)."""
        return "accuracy" if self.kind == "classification" else "r2"


# --- pixel baseline ---------------------------------------------------------------------------


def pixel_features(clips: Tensor, patch_size: int, tubelet_size: int) -> Tensor:
    """Raw pixels on an encoder's token grid: clips (B, C, T, H, W) -> (B, N, tubelet*p*p*C).

    Tokens are in the encoder's (t, h, w)-major order and each holds its cube flattened as
    (tubelet, p, p, C), so a probe sees the same tokens an encoder's patch embedding would
    (a single frame is repeated over one tubelet, as the encoder does).
    """
    if clips.ndim == 4:
        clips = clips.unsqueeze(2)  # (B, C, 1, H, W)
    if clips.shape[2] == 1:
        clips = clips.repeat(1, 1, tubelet_size, 1, 1)
    B, C, T, H, W = clips.shape
    t, p = tubelet_size, patch_size
    if T % t or H % p or W % p:
        raise ValueError(f"clip {T}x{H}x{W} is not divisible by tubelet {t} / patch {p}")
    x = clips.reshape(B, C, T // t, t, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', t, p, p, C)
    return x.reshape(B, (T // t) * (H // p) * (W // p), t * p * p * C)  # (B, N, t*p*p*C)


# --- the probe --------------------------------------------------------------------------------


def token_positions(grid: tuple[int, int, int], freqs: Sequence[float] = POSITION_FREQS) -> Tensor:
    """Where each token of a (T', H', W') grid is, in the encoder's (t, h, w)-major order, as probe
    input features (N, 3 + 6 * len(freqs)): the token centre's (t, y, x) in [0, 1], and their sines
    and cosines at a few frequencies.

    Pixel tokens carry no position, and a RoPE encoder (no position table) has no reason to write
    absolute position into its features; a pooling probe is blind to token order, so without these
    it cannot say where or when anything is. With them, attention-pooling the coordinates of the
    tokens a head attends to reads out the attended thing's position.
    """
    axes = [(torch.arange(n) + 0.5) / n for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    angles = math.pi * coords[:, :, None] * torch.tensor(freqs, dtype=torch.float32)  # (N, 3, F)
    return torch.cat([coords, angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)  # (N, 3 + 6F)


class AttentiveProbe(nn.Module):
    """One learned query cross-attends to the tokens (pre-norm block: attention + MLP, each with
    a residual), then a linear head: features (B, N, in_dim) -> (B, out_dim).

    `width` is the query's residual stream; keys and values project the tokens to it, so inputs of
    any size (e.g. 1536-d pixel tokens) share one head design. With `token_grid`, each layer-normed
    token is extended by its position features (`token_positions`) before the keys and values.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int | None = None, num_heads: int = 4,
                 mlp_ratio: float = 4.0, token_grid: tuple[int, int, int] | None = None):
        super().__init__()
        width = width or in_dim
        if width % num_heads:
            raise ValueError(f"probe width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        positions = token_positions(token_grid) if token_grid is not None else torch.zeros(0, 0)
        self.register_buffer("positions", positions, persistent=False)  # (N, P); P = 0 without a grid
        kv_dim = in_dim + positions.shape[1]
        self.query = nn.Parameter(torch.zeros(width))
        self.norm_kv = nn.LayerNorm(kv_dim, eps=LN_EPS)  # its affine also scales the position features
        self.q_proj = nn.Linear(width, width)
        # A key bias adds the same logit to every token of a head: softmax cancels it, so none.
        self.k_proj = nn.Linear(kv_dim, width, bias=False)
        self.v_proj = nn.Linear(kv_dim, width)
        self.o_proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width, eps=LN_EPS)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.norm_out = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.query, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, in_dim) -> (B, out_dim)."""
        return self.readout(attend(self.tokens(x), self.query_in()))

    def tokens(self, x: Tensor) -> Tensor:
        """Features (B, N, in_dim) -> layer-normed without affine (folded in below), with position
        features appended if the probe has a grid: (B, N, in_dim + P)."""
        x_hat = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
        if self.positions.shape[1] == 0:
            return x_hat
        if x.shape[1] != self.positions.shape[0]:
            raise ValueError(f"{x.shape[1]} tokens, but the probe's token grid has {self.positions.shape[0]}")
        return torch.cat([x_hat, self.positions.expand(x.shape[0], -1, -1)], dim=-1)

    # Multi-head attention from a single query factors through the input space. With the token
    # norm's affine (g, b), the logit of token n in head h is q_h . K_h (g * x_hat_n + b)
    # = (g * K_h^T q_h) . x_hat_n + const, and the constant (the same for every token) cancels in
    # the softmax; the head's output is V_h (g * sum_n a_hn x_hat_n + b) + c_h, since the weights
    # a_hn sum to 1. So the query is mapped into input space once (`query_in`), tokens are pooled
    # there (`attend`), and only the pooled (B, h, kv_dim) vectors are projected (`readout`):
    # standard attention, without forming (B, N, width) keys and values.

    def query_in(self) -> Tensor:
        """Each attention head's query as a vector over `tokens(x)` (affine-free): (h, kv_dim)."""
        h, width = self.num_heads, self.query.shape[0]
        d = width // h
        q = self.q_proj(self.query).view(h, d)  # (h, d)
        k = self.k_proj.weight.view(h, d, -1)  # (h, d, kv_dim)
        return torch.einsum("hd,hdi->hi", q, k) * self.norm_kv.weight / math.sqrt(d)  # (h, kv_dim)

    def readout(self, pooled: Tensor) -> Tensor:
        """Attention-pooled `tokens(x)` (B, h, kv_dim) -> (B, out_dim): norm affine, values,
        output projection, residual MLP and the linear head."""
        B, h, _ = pooled.shape
        width = self.query.shape[0]
        pooled = pooled * self.norm_kv.weight + self.norm_kv.bias  # (B, h, kv_dim) = sum_n a_hn LN(x)_n
        v = torch.einsum("bhi,hdi->bhd", pooled, self.v_proj.weight.view(h, width // h, -1))  # (B, h, d)
        v = v + self.v_proj.bias.view(h, -1)
        y = self.query + self.o_proj(v.reshape(B, width))  # (B, width)
        y = y + self.mlp(self.norm_mlp(y))
        return self.head(self.norm_out(y))  # (B, out_dim)


def attend(x_hat: Tensor, queries: Tensor) -> Tensor:
    """Softmax attention of `queries` (Q, D) over tokens x_hat (B, N, D), pooling the tokens
    themselves: (B, Q, D)."""
    attn = torch.einsum("bnd,qd->bqn", x_hat, queries).softmax(dim=-1)  # (B, Q, N)
    return attn @ x_hat  # (B, Q, D)


class ProbeBank(nn.Module):
    """H independent probes evaluated on the same batch: (B, N, D) -> (H, B, out_dim).

    Heads share nothing but their input; each gets its own optimizer param groups (`make_optimizer`),
    and since the training loss is a sum of per-head losses, each head's gradient is exactly that
    of its own loss. Every head starts from the same weights (seeded), so heads differ only by
    their (lr, weight decay): a controlled comparison, and a head trains the same alone or in a bank.
    For speed, the token norm and the attention of all heads' queries run as one batched op.
    """

    def __init__(self, in_dim: int, out_dim: int, num_probes: int, seed: int = 0, **probe_kwargs):
        super().__init__()
        probes = []
        for _ in range(num_probes):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                probes.append(AttentiveProbe(in_dim, out_dim, **probe_kwargs))
        self.probes = nn.ModuleList(probes)

    def forward(self, x: Tensor) -> Tensor:
        x_hat = self.probes[0].tokens(x)  # (B, N, D + P): the same for every head (they differ by affine)
        queries = [probe.query_in() for probe in self.probes]  # H x (h, D)
        pooled = attend(x_hat, torch.cat(queries)).split([len(q) for q in queries], dim=1)  # H x (B, h, D)
        return torch.stack([probe.readout(p) for probe, p in zip(self.probes, pooled)])  # (H, B, out_dim)

    def make_optimizer(self, grid: Sequence[tuple[float, float]]) -> torch.optim.AdamW:
        """AdamW with each head's own lr and weight decay; as in `jepa.optim`, no decay on biases,
        norms and other 1-D parameters."""
        if len(grid) != len(self.probes):
            raise ValueError(f"{len(grid)} (lr, wd) settings for {len(self.probes)} heads")
        groups = []
        for probe, (lr, wd) in zip(self.probes, grid):
            decay = [p for p in probe.parameters() if p.ndim > 1]
            no_decay = [p for p in probe.parameters() if p.ndim <= 1]
            groups += [{"params": decay, "lr": lr, "weight_decay": wd, "base_lr": lr},
                       {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr}]
        return torch.optim.AdamW(groups, foreach=True)  # one kernel per op over all heads' tensors


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warmup over `warmup` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- metrics ----------------------------------------------------------------------------------


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """pred, y (n,) class indices."""
    return float(np.mean(pred == y))


def r2_score(pred: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination, averaged over output dims: pred, y (n, dim). 1 is perfect,
    0 is predicting the mean; a constant column scores 0 (it has nothing to explain)."""
    pred, y = pred.reshape(len(pred), -1), y.reshape(len(y), -1)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    per_dim = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    return float(per_dim.mean())


def score(task: ProbeTask, pred: np.ndarray, y: np.ndarray) -> float:
    """`task.metric` of predictions in the task's units (class indices or original values)."""
    return accuracy(pred, y) if task.kind == "classification" else r2_score(pred, y)


# --- training and evaluation ------------------------------------------------------------------


@dataclass
class ProbeFit:
    """A trained grid of heads, the validation score of each and the chosen one."""

    task: ProbeTask
    bank: ProbeBank
    grid: list[tuple[float, float]]
    val_scores: list[float]
    """`task.metric` of each head on the validation split (at its kept epoch), in grid order."""
    best: int
    """Index of the head with the best validation score (the first on ties)."""
    y_mean: Tensor | None = None
    """Regression: the train split's target mean (dim,), to map predictions back to units."""
    y_std: Tensor | None = None
    train_loss: list[list[float]] = field(default_factory=list)
    """Per epoch, each head's mean training loss."""
    best_epochs: list[int] = field(default_factory=list)
    """The epoch (1-based) whose weights each head kept: its best on val, or the last."""

    @property
    def best_setting(self) -> tuple[float, float]:
        """(lr, weight decay) of the chosen head."""
        return self.grid[self.best]

    @property
    def best_val(self) -> float:
        return self.val_scores[self.best]

    @torch.no_grad()
    def predict_all(self, feats: Tensor, batch_size: int = 256) -> np.ndarray:
        """Every head's predictions (H, n, ...): class indices, or values in the target's units."""
        device = next(self.bank.parameters()).device
        self.bank.eval()
        outs = [self.bank(feats[i : i + batch_size].to(device, torch.float32))  # (H, B, out_dim)
                for i in range(0, len(feats), batch_size)]
        out = torch.cat(outs, dim=1) if outs else torch.empty(len(self.grid), 0, self.task.out_dim)  # (H, n, out_dim)
        if self.task.kind == "classification":
            return out.argmax(-1).cpu().numpy()  # (H, n)
        return (out.cpu() * self.y_std + self.y_mean).numpy()  # (H, n, dim)

    def predict(self, feats: Tensor, batch_size: int = 256) -> np.ndarray:
        """The best head's predictions: (n,) class indices or (n, dim) values."""
        return self.predict_all(feats, batch_size)[self.best]


def _as_targets(task: ProbeTask, y: Tensor | np.ndarray) -> Tensor:
    y = torch.as_tensor(np.asarray(y))
    if task.kind == "classification":
        y = y.long().reshape(-1)  # (n,)
        if len(y) and (y.min() < 0 or y.max() >= task.num_classes):
            raise ValueError(f"task {task.name}: labels outside [0, {task.num_classes})")
        return y
    return y.float().reshape(len(y), task.dim)  # (n, dim)


def _head_losses(task: ProbeTask, out: Tensor, y: Tensor) -> Tensor:
    """out (H, B, out_dim), y (B,) or standardised (B, dim) -> (H,) per-head mean losses."""
    H = out.shape[0]
    if task.kind == "classification":
        return F.cross_entropy(out.flatten(0, 1), y.repeat(H), reduction="none").view(H, -1).mean(1)
    err = F.mse_loss if task.loss == "mse" else F.smooth_l1_loss
    return err(out, y.expand_as(out), reduction="none").flatten(1).mean(1)


def train_probes(
    train_feats: Tensor,
    train_y: Tensor | np.ndarray,
    val_feats: Tensor,
    val_y: Tensor | np.ndarray,
    task: ProbeTask,
    grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    *,
    epochs: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    width: int | None = None,
    num_heads: int = 4,
    token_grid: tuple[int, int, int] | None = None,
    warmup_fraction: float = 0.1,
    keep_best_epoch: bool = True,
    device: str | torch.device = "cpu",
) -> ProbeFit:
    """Train one head per (lr, weight decay) in `grid` on cached features (n, N, D) and pick the
    best on the validation split.

    All heads see the same shuffled mini-batches (seeded) under a warmup + cosine schedule;
    features may be cached in a low-precision dtype, batches are cast to float32.
    `width` is the probes' residual width (default: the feature width D); `token_grid` (T', H', W')
    of the features' tokens gives the probes their positions (`token_positions`). With `keep_best_epoch`
    each head keeps its weights from the epoch it scored best on val (early stopping): on a few
    hundred clips heads overfit within epochs, and a head that learns nothing general then stays
    near the train mean (R^2 ~ 0) instead of reporting its overfit (R^2 < 0).
    """
    if len(train_feats) == 0 or len(val_feats) == 0:
        raise ValueError("train_probes needs at least one train and one validation example")
    grid = [(float(lr), float(wd)) for lr, wd in grid]
    y = _as_targets(task, train_y)
    y_mean = y_std = None
    if task.kind == "regression":
        y_mean, y_std = y.mean(0), y.std(0, unbiased=False).clamp_min(1e-8)  # (dim,)
        y = (y - y_mean) / y_std

    bank = ProbeBank(train_feats.shape[-1], task.out_dim, len(grid), seed=seed, width=width,
                     num_heads=num_heads, token_grid=token_grid).to(device)
    optimizer = bank.make_optimizer(grid)
    n = len(train_feats)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_fraction * total))
    order_rng = torch.Generator().manual_seed(seed)
    val_true = _as_targets(task, val_y).numpy()
    fit = ProbeFit(task, bank, grid, [-math.inf] * len(grid), 0, y_mean, y_std, best_epochs=[0] * len(grid))
    kept = [None] * len(grid)  # each head's best-epoch weights
    step = 0
    for epoch in range(1, epochs + 1):
        bank.train()
        order = torch.randperm(n, generator=order_rng)
        epoch_loss = torch.zeros(len(grid))
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb = train_feats[idx].to(device, torch.float32)  # (B, N, D)
            yb = y[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * cosine_factor(step, total, warmup)
            losses = _head_losses(task, bank(xb), yb)  # (H,)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each head's gradient is its own loss's
            optimizer.step()
            epoch_loss += losses.detach().cpu() * len(idx)
            step += 1
        fit.train_loss.append((epoch_loss / n).tolist())
        for h, pred in enumerate(fit.predict_all(val_feats)):
            val = score(task, pred, val_true)
            if val > fit.val_scores[h] or not keep_best_epoch:
                fit.val_scores[h], fit.best_epochs[h] = val, epoch
                if keep_best_epoch:
                    kept[h] = {k: v.detach().clone() for k, v in bank.probes[h].state_dict().items()}
    for probe, state in zip(bank.probes, kept):
        if state is not None:
            probe.load_state_dict(state)
    fit.best = int(np.argmax(fit.val_scores))
    return fit


@dataclass(frozen=True)
class ProbeEvaluation:
    """The chosen head on the test split: `task.metric` with its bootstrap interval over test
    examples, plus secondary figures (regression: `mae`, mean absolute error in target units)."""

    task: str
    metric: str
    test: Estimate
    extra: dict[str, Estimate] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "test": self.test.as_dict(),
                **{name: est.as_dict() for name, est in self.extra.items()}}


def evaluate(
    fit: ProbeFit, test_feats: Tensor, test_y: Tensor | np.ndarray, *, level: float = 0.95,
    resamples: int = 2000, seed: int = 0,
) -> ProbeEvaluation:
    """Score the validation-selected head on the test split, resampling test examples for the
    interval (the head is fixed: the interval is over which test clips were drawn)."""
    task = fit.task
    y = _as_targets(task, test_y).numpy()
    pred = fit.predict(test_feats)
    kw = {"level": level, "resamples": resamples, "seed": seed}
    if task.kind == "classification":
        est = bootstrap((pred == y).astype(np.float64), np.mean, **kw)
        return ProbeEvaluation(task.name, task.metric, est)
    pairs = np.concatenate([pred, y], axis=1)  # (n, 2 * dim): resample examples, not values
    d = task.dim
    est = bootstrap(pairs, lambda s: r2_score(s[:, :d], s[:, d:]), **kw)
    mae = bootstrap(np.abs(pred - y).mean(1), np.mean, **kw)  # per example, over dims
    return ProbeEvaluation(task.name, task.metric, est, {"mae": mae})
