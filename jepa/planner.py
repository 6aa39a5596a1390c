"""Planning in representation space: the cross-entropy method (CEM) over action sequences.

Each iteration samples action sequences from a Gaussian (clipped to the env's bounds), scores all
of them with one batched call of an energy function, and refits the Gaussian to the lowest-energy
``elites``; the plan is the final mean, or the lowest-energy sequence scored (``select``). With a
world model the energy is the L1 distance between the representation the model imagines after the
sequence (or the closest, or the mean, of its imagined steps: ``PlannerConfig.energy``) and the
goal image's (``latent_energy``), plus, when the model reads its goal's state from the goal image,
a weighted distance between the imagined final state and that one. Model predictive control
executes the first ``replan_every`` actions of a plan and plans again from what it then sees;
nothing here reads the simulator's notion of success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from jepa.ac_predictor import ACPredictor
from jepa.config import PlanEnergy, PlannerConfig
from jepa.state_reader import state_distance

Energy = Callable[[Tensor], Tensor]
"""(S, H, A) action sequences -> (S,) energies, lower is better."""


@dataclass
class Plan:
    actions: Tensor
    """(H, A) the plan to execute: the final Gaussian's mean, or the lowest-energy sequence scored
    (``PlannerConfig.select``)."""
    energy: list[float]
    """Lowest energy found up to each iteration (non-increasing)."""


def cem(energy: Energy, low: Tensor, high: Tensor, cfg: PlannerConfig, init_mean: Tensor | None = None,
        generator: torch.Generator | None = None) -> Plan:
    """Minimise ``energy`` over (horizon, A) action sequences within [low, high].

    The noise is drawn on ``generator``'s device (CPU by default) and moved to the model's, so a
    seed gives the same plan on any device; a generator on the model's device keeps the loop off
    the host. The energy trace is read back once, at the end, not once per iteration."""
    half = (high - low) / 2
    mean = ((low + high) / 2).expand(cfg.horizon, -1).clone() if init_mean is None else init_mean.to(low).clone()
    std = (half * cfg.init_std).expand(cfg.horizon, -1).clone()
    trace, best = [], None
    noise_device = generator.device if generator is not None else mean.device
    for _ in range(cfg.iterations):
        noise = torch.randn((cfg.samples, *mean.shape), generator=generator, device=noise_device).to(mean.device)
        samples = (mean + std * noise).clamp(low, high)
        samples[0] = mean  # the mean competes, and so does the best sequence so far: never lost
        if best is not None:
            samples[1] = best
        scores = energy(samples)
        order = torch.topk(scores, cfg.elites, largest=False).indices
        elites, best = samples[order], samples[order[0]].clone()
        mean, std = elites.mean(0), elites.std(0).maximum(half * cfg.min_std)
        trace.append(scores[order[0]])
    return Plan(best if cfg.select == "best" else mean, torch.stack(trace).float().tolist())


def latent_energy(model: ACPredictor, context: Tensor, goal: Tensor, history: Tensor | None = None,
                  states: Tensor | None = None, over_steps: PlanEnergy = "final", goal_state: Tensor | None = None,
                  state_weight: float = 0.0, angular: bool = True) -> Energy:
    """Energy of action sequences under ``model``: mean L1 between an imagined frame's tokens and
    the goal's, for the last imagined frame or reduced over all of them (``over_steps``, see
    ``PlannerConfig.energy``). context (1, C, N, E) and goal (N, E) are layer-normed encoder
    tokens; ``history`` (C - 1, A) the actions that led through the context; ``states`` (1, C, S).
    With ``state_weight`` > 0, plus that times the largest per-coordinate distance (wrapped when
    ``angular``) from the imagined final configuration to ``goal_state`` (Q,), qpos being the
    first Q coordinates of a state."""
    C = context.shape[1]
    history = context.new_zeros(0, model.action_dim) if history is None else history
    if history.shape[0] != C - 1:
        raise ValueError(f"{C} context frames need {C - 1} history actions, got {history.shape[0]}")
    if state_weight > 0 and (goal_state is None or states is None):
        raise ValueError("an energy with a state term needs the goal's state and the current one")

    @torch.no_grad()
    def energy(samples: Tensor) -> Tensor:
        S, H, _ = samples.shape
        actions = torch.cat((history.expand(S, -1, -1), samples), 1)
        pred = model.rollout(context, actions, states, steps=H)
        energy = goal_energy(pred.frames, goal, over_steps)
        if state_weight > 0:
            imagined = pred.states[:, -1, : goal_state.shape[-1]]
            energy = energy + state_weight * state_distance(imagined, goal_state.to(imagined), angular)
        return energy

    return energy


def goal_energy(frames: Tensor, goal: Tensor, over_steps: PlanEnergy) -> Tensor:
    """Tokens of each sequence's steps (S, H, N, E) against the goal's (N, E) -> (S,) energies:
    mean L1 per step, reduced over the steps as ``PlannerConfig.energy`` says."""
    if over_steps == "final":
        return (frames[:, -1] - goal).abs().mean(dim=(1, 2))
    distances = (frames - goal).abs().mean(dim=(2, 3))  # (S, H)
    if over_steps == "min":
        return distances.min(dim=1).values
    if over_steps == "mean":
        return distances.mean(dim=1)
    raise ValueError(f"energy over steps: {over_steps!r} is not one of final, min, mean")
