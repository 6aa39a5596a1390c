"""Action-conditioned predictor (V-JEPA 2-AC style): the world model that plans.

A frozen encoder turns every frame into N tokens (layer-normed). Per time step t the predictor
reads one block of tokens ``[action a_t, state s_t (optional), frame t's N tokens]``; block-causal
attention lets a token see its own block and earlier ones, never a later one. The outputs at frame
t's tokens predict frame t+1's tokens, the world after taking a_t, as a change added to frame t's
tokens: between two agent steps most tokens barely move (the background), so the predictor starts
from "nothing moves" and learns what the action changes. The output at the state token predicts
s_{t+1}, so a rollout can feed its own states back.

Actions are rescaled from the env's bounds to [-1, 1] and states standardised inside the model
(buffers saved with it), so callers pass raw env values.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.rope import rope_tables_at, rotate, rotation
from jepa.vit import LN_EPS, Attention, Block, init_weights

KV = tuple[Tensor, Tensor]
"""One layer's cached keys and values, each (B, heads, L, head_dim)."""


class Prediction(NamedTuple):
    frames: Tensor
    """(B, T, N, E) predicted (layer-normed) tokens of each next frame."""
    states: Tensor | None
    """(B, T, S) predicted next states in env units, or None without a state token."""


def block_causal_mask(steps: int, tokens_per_step: int, device: torch.device | None = None) -> Tensor:
    """(L, L) bool, True where query i may attend key j: j's step is not after i's."""
    step = torch.arange(steps, device=device).repeat_interleave(tokens_per_step)
    return step[:, None] >= step[None, :]


class CausalAttention(Attention):
    """``jepa.vit.Attention`` that also takes a mask and past keys/values."""

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, past: KV | None) -> tuple[Tensor, KV]:
        B, L, D = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:  # a batch-1 cache serves every sample
            k, v = torch.cat((past[0].expand(B, -1, -1, -1), k), 2), torch.cat((past[1].expand(B, -1, -1, -1), v), 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(a.transpose(1, 2).reshape(B, L, D)), (k, v)


class CausalBlock(Block):
    """``jepa.vit.Block`` over ``CausalAttention``: takes a mask and past keys/values, returns its own."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__(dim, num_heads, mlp_ratio, attention=CausalAttention)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                past: KV | None = None) -> tuple[Tensor, KV]:
        a, kv = self.attn(self.norm1(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class ACPredictor(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        grid: tuple[int, int],
        action_low: list[float],
        action_high: list[float],
        state_dim: int = 0,
        dim: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.grid, self.num_heads = tuple(grid), num_heads
        self.num_tokens = grid[0] * grid[1]
        self.state_dim = state_dim
        self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("change_std", torch.ones(embed_dim))  # per channel, for the change_mse loss
        self.frame_in = nn.Linear(embed_dim, dim)
        self.action_in = nn.Linear(len(action_low), dim)
        self.state_in = nn.Linear(state_dim, dim) if state_dim else None
        self.kind = nn.Parameter(torch.zeros(3, dim))  # added to action, state and frame tokens
        self.blocks = nn.ModuleList(CausalBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.frame_out = nn.Linear(dim, embed_dim)
        self.state_out = nn.Linear(dim, state_dim) if state_dim else None
        init_weights(self, self.blocks)
        nn.init.zeros_(self.frame_out.weight)  # predicts "nothing moves" until it learns otherwise
        nn.init.zeros_(self.frame_out.bias)

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def tokens_per_step(self) -> int:
        return 1 + (self.state_dim > 0) + self.num_tokens

    def set_state_stats(self, mean: Tensor, std: Tensor) -> None:
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(1e-6))

    def set_change_stats(self, std: Tensor) -> None:
        """The spread of each token channel's one-step change in the training windows."""
        self.change_std.copy_(std.clamp_min(1e-4))

    def _embed(self, z: Tensor, actions: Tensor, states: Tensor | None) -> Tensor:
        """z (B, T, N, E), actions (B, T, A), states (B, T, S) -> block tokens (B, T * P, D)."""
        if z.shape[2] != self.num_tokens or actions.shape[-1] != self.action_dim:
            raise ValueError(f"expected {self.num_tokens} tokens and {self.action_dim}-D actions per step, got "
                             f"{z.shape[2]} and {actions.shape[-1]}")
        scaled = 2 * (actions - self.action_low) / (self.action_high - self.action_low) - 1
        parts = [(self.action_in(scaled) + self.kind[0]).unsqueeze(2)]
        if self.state_in is not None:
            if states is None:
                raise ValueError("this predictor reads a state per step; none given")
            parts.append((self.state_in((states - self.state_mean) / self.state_std) + self.kind[1]).unsqueeze(2))
        parts.append(self.frame_in(z) + self.kind[2])
        return torch.cat(parts, dim=2).flatten(1, 2)

    def _rope(self, first_step: int, steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Frame tokens at (t, row, col); action and state tokens at (t, -1, -1), off the grid."""
        h, w = self.grid
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        extra = self.tokens_per_step - self.num_tokens
        hw = torch.stack((torch.cat((rows.new_full((extra,), -1), rows)), torch.cat((cols.new_full((extra,), -1), cols))), -1)
        t = torch.arange(first_step, first_step + steps, device=device).repeat_interleave(len(hw))
        pos = torch.cat((t[:, None], hw.repeat(steps, 1)), -1).float()
        head_dim = self.blocks[0].attn.qkv.in_features // self.num_heads
        return rotation(*rope_tables_at(pos, head_dim), head_dim)

    def _read(self, x: Tensor, z: Tensor) -> Prediction:
        x = self.norm(x).unflatten(1, (z.shape[1], self.tokens_per_step))
        frames = z + self.frame_out(x[:, :, -self.num_tokens :])
        states = None
        if self.state_out is not None:
            states = self.state_out(x[:, :, 1]) * self.state_std + self.state_mean
        return Prediction(frames, states)

    def forward(self, z: Tensor, actions: Tensor, states: Tensor | None = None) -> Prediction:
        """Teacher forcing: true frames z (B, T, N, E) and a_t, s_t for t < T -> predictions of
        every next step t + 1, all in one pass."""
        steps = z.shape[1]
        x = self._embed(z, actions, states)
        cos, sin = self._rope(0, steps, x.device)
        mask = block_causal_mask(steps, self.tokens_per_step, x.device)
        for blk in self.blocks:
            x, _ = blk(x, cos, sin, mask)
        return self._read(x, z)

    def step(self, z: Tensor, actions: Tensor, states: Tensor | None, first_step: int,
             cache: list[KV] | None) -> tuple[Prediction, list[KV]]:
        """Append steps ``first_step...`` (z (B, T, N, E)) to ``cache`` (the keys and values of every
        earlier step; a batch-1 cache serves any B) and predict each of their next steps."""
        steps = z.shape[1]
        x = self._embed(z, actions, states)
        cos, sin = self._rope(first_step, steps, x.device)
        mask = None  # one new step sees all of itself and every cached step: no mask, so SDPA may take its flash path
        if steps > 1:
            mask = block_causal_mask(steps, self.tokens_per_step, x.device)
            if cache is not None:  # every earlier step is visible to every new token
                past = torch.ones(mask.shape[0], cache[0][0].shape[2], dtype=torch.bool, device=x.device)
                mask = torch.cat((past, mask), dim=1)
        new_cache = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, cos, sin, mask, None if cache is None else cache[i])
            new_cache.append(kv)
        return self._read(x, z), new_cache

    def rollout(self, z: Tensor, actions: Tensor, states: Tensor | None = None, steps: int = 1) -> Prediction:
        """Imagine ``steps`` steps past the context.

        z (B or 1, C, N, E): context frames; states (B or 1, C, S) with a state token;
        actions (B, C + steps - 1, A): one per context step, then one per imagined step but the last.
        The context's first C - 1 steps are encoded once (batch 1 when z is, shared by all B action
        samples, so their actions must agree); every later step only adds its own block to the cache.
        """
        C = z.shape[1]
        if actions.shape[1] != C + steps - 1:
            raise ValueError(f"{C} context steps and {steps} imagined steps take {C + steps - 1} actions, "
                             f"got {actions.shape[1]}")
        cache = None
        if C > 1:
            history = actions[: z.shape[0], : C - 1]
            _, cache = self.step(z[:, : C - 1], history, None if states is None else states[:, : C - 1], 0, cache)
        z_t, s_t = z[:, C - 1 :], None if states is None else states[:, C - 1 :]
        frames, out_states = [], []
        for k in range(steps):
            B = actions.shape[0]
            pred, cache = self.step(z_t.expand(B, -1, -1, -1), actions[:, C - 1 + k : C + k],
                                    None if s_t is None else s_t.expand(B, -1, -1), C - 1 + k, cache)
            z_t, s_t = pred.frames, pred.states
            frames.append(z_t)
            out_states.append(s_t)
        return Prediction(torch.cat(frames, 1), None if states is None else torch.cat(out_states, 1))


def layer_normed(z: Tensor) -> Tensor:
    """The targets' normalisation (no affine), applied to encoder tokens before the predictor sees them."""
    return F.layer_norm(z, z.shape[-1:])


def ac_losses(model: ACPredictor, z: Tensor, actions: Tensor, states: Tensor | None = None,
              rollout_steps: int = 2, loss: str = "l1") -> dict[str, Tensor]:
    """Teacher forcing over every step of a window plus a ``rollout_steps`` rollout from its first
    frame, on layer-normed tokens (z (B, T, N, E) already layer-normed): ``loss`` "l1", or
    "change_mse" (squared error over ``model.change_std``). With L1, the many tokens an action does
    not move pull every predicted change toward zero at full strength; the squared error in units
    of the change lets the moving ones dominate. ``teacher_l1`` is the teacher-forcing L1 whatever
    the loss, comparable with the copy baseline. A state token adds an L1 term on standardised
    states."""
    T = z.shape[1]
    if not 1 <= rollout_steps <= T - 1:
        raise ValueError(f"rollout_steps must be in [1, {T - 1}] for windows of {T} steps, got {rollout_steps}")
    if loss not in ("l1", "change_mse"):
        raise ValueError(f"loss must be l1 or change_mse, got {loss!r}")

    def frame_loss(pred: Tensor, target: Tensor) -> Tensor:
        err = pred - target
        return err.abs().mean() if loss == "l1" else (err / model.change_std).square().mean()

    s_in = None if states is None else states[:, :-1]
    tf = model(z[:, :-1], actions[:, :-1], s_in)
    teacher = frame_loss(tf.frames, z[:, 1:])
    roll = model.rollout(z[:, :1], actions[:, :rollout_steps], None if states is None else states[:, :1],
                         steps=rollout_steps)
    rollout = frame_loss(roll.frames, z[:, 1 : 1 + rollout_steps])
    out = {"teacher": teacher, "rollout": rollout, "loss": teacher + rollout,
           "teacher_l1": (tf.frames - z[:, 1:]).detach().abs().mean()}
    if states is not None:
        scale = model.state_std
        state = ((tf.states - states[:, 1:]) / scale).abs().mean() + ((roll.states - states[:, 1 : 1 + rollout_steps]) / scale).abs().mean()
        out["state"] = state
        out["loss"] = out["loss"] + state
    return out


class ACObjective(nn.Module):
    """``ac_losses`` as one module call, so a DDP wrapper sees the whole loss in its forward."""

    def __init__(self, predictor: ACPredictor, rollout_steps: int = 2, loss: str = "l1"):
        super().__init__()
        self.predictor, self.rollout_steps, self.loss = predictor, rollout_steps, loss

    def forward(self, z: Tensor, actions: Tensor, states: Tensor | None = None) -> dict[str, Tensor]:
        return ac_losses(self.predictor, z, actions, states, self.rollout_steps, self.loss)
