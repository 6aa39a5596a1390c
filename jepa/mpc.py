"""Model predictive control with a world model: plan with CEM in representation space, execute the
first ``replan_every`` actions, look again, plan again (warm-started from the rest of the last plan).

The loop talks to the world through two callables, so the same code drives a simulator in
``jepa eval plan`` and a remote client of ``/v1/plan``; it never sees whether the goal was reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from jepa.config import PlannerConfig
from jepa.planner import Plan, cem, latent_energy
from jepa.world_model import WorldModel


@dataclass
class PlanCall:
    actions: np.ndarray
    """(horizon, A) the plan; the first ``replan_every`` rows are executed."""
    energy: list[float]
    seconds: float


@dataclass
class GoalView:
    tokens: Tensor
    """(N, E) the goal image's pooled tokens."""
    state: Tensor | None = None
    """(Q,) the configuration the model's state reader sees in the goal image, when the planner uses it."""


def view_goal(world: WorldModel, image: np.ndarray, cfg: PlannerConfig) -> GoalView:
    """What the planner compares imagined steps with: the goal image's tokens, and its state read
    from it when ``cfg.state_weight`` > 0."""
    if cfg.state_weight == 0:
        return GoalView(world.encode(image[None])[0])
    tokens, grid = world.encode_pooled(image[None], (world.cfg.pool, 1))  # one encoder pass for both
    return GoalView(tokens[0], world.read_state(grid)[0])


def plan_toward(world: WorldModel, observation: np.ndarray, goal: GoalView, state: np.ndarray | None,
                cfg: PlannerConfig, init_mean: Tensor | None = None, generator: torch.Generator | None = None) -> PlanCall:
    """One CEM plan from ``observation`` (H, W, 3) uint8 toward ``goal`` (``view_goal``)."""
    t0 = time.perf_counter()
    context = world.encode(observation[None])[None]  # (1, 1, N, E)
    states = None
    if world.cfg.uses_state:
        if state is None:
            raise ValueError("this world model reads the state (qpos, qvel) with each observation")
        states = torch.as_tensor(np.asarray(state, np.float32), device=context.device)[None, None]
    low, high = world.predictor.action_low, world.predictor.action_high
    energy = latent_energy(world.predictor, context, goal.tokens, states=states, over_steps=cfg.energy,
                           goal_state=goal.state, state_weight=cfg.state_weight,
                           angular=world.state_reader is not None and world.state_reader.angular)
    plan: Plan = cem(energy, low, high, cfg, init_mean=init_mean, generator=generator)
    return PlanCall(plan.actions.float().cpu().numpy(), plan.energy, time.perf_counter() - t0)


@dataclass
class MPCTrace:
    calls: list[PlanCall] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    """The frame each plan started from."""
    goal: GoalView | None = None
    """What every plan aimed at: the goal's tokens, and its state as read from the goal image."""


def warm_start(world: WorldModel, actions: np.ndarray, executed: int, horizon: int) -> Tensor:
    """The next search's starting mean: the plan's actions not yet executed, then the middle of
    the action range for the steps it does not cover."""
    centre = (world.predictor.action_low + world.predictor.action_high) / 2
    rest = torch.as_tensor(np.asarray(actions[executed:], np.float32), device=centre.device)
    return torch.cat((rest, centre.expand(max(0, horizon - len(rest)), -1)))[:horizon]


def run_mpc(world: WorldModel, goal_image: np.ndarray, observe: Callable[[], tuple[np.ndarray, np.ndarray | None]],
            act: Callable[[np.ndarray], None], budget: int, cfg: PlannerConfig, seed: int = 0) -> MPCTrace:
    """Spend ``budget`` agent steps: ``observe()`` -> (frame, state or None); ``act(action)`` takes
    one agent step (the caller holds it for the env's frameskip). Plan call k draws its samples
    from a generator seeded with ``seed + k``, so a client of ``/v1/plan`` sending those seeds and
    the ``warm_start`` it is given makes the same plans."""
    goal = view_goal(world, goal_image, cfg)
    trace, mean, done = MPCTrace(goal=goal), None, 0
    while done < budget:
        frame, state = observe()
        generator = torch.Generator().manual_seed(seed + len(trace.calls))
        call = plan_toward(world, frame, goal, state, cfg, mean, generator)
        trace.calls.append(call)
        trace.observations.append(frame)
        steps = min(cfg.replan_every, budget - done)
        for action in call.actions[:steps]:
            act(action)
        done += steps
        mean = warm_start(world, call.actions, steps, cfg.horizon)
    return trace
