"""The goal-reaching protocol `jepa eval plan` scores planners on (DeepMind Control, CPU rendering).

For a held-out seed: reset the environment, roll a uniform-random policy for ``goal_steps`` agent
steps (each action held ``frameskip`` control steps; for the slow point mass one draw is held for
all of them, ``GOAL_HOLD``), and take that frame as the goal image and its configuration as the
goal. Reset to the same initial state; the agent then has ``budget`` agent steps. Success = the
configuration is within tolerance of the goal at any control step: every joint angle within
0.05 rad (wrapped to (-pi, pi]) for reacher, both coordinates within 0.02 for point_mass. Only the
evaluation reads the configuration; planners see frames (and the state when their model reads one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipelines.mujoco_record import ENVS, load_env, physics_state

TOLERANCE = {"reacher": 0.05, "point_mass": 0.02}
"""Largest per-coordinate distance to the goal that counts as reached."""
ANGULAR = {"reacher": True, "point_mass": False}
"""Whether the configuration is joint angles (distances wrap around the circle)."""
GOAL_HOLD = {"reacher": 1, "point_mass": 25}
"""Agent steps each random draw is held, in the goal rollout and the random baseline. With a draw
per agent step the damped point mass ends about a tolerance from its start; one push for all 25
steps carries it several tolerances away."""


@dataclass(frozen=True)
class Protocol:
    env: str = "reacher"
    goal_steps: int = 25
    """Agent steps of the random policy that leads to the goal."""
    budget: int = 50
    """Agent steps the planner gets."""
    frameskip: int = 5
    img_size: int = 64
    seed_base: int = 1_000_000
    """Evaluation seeds are seed_base + episode: far from the recorder's training seeds."""

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"unknown env {self.env!r}; choose from {', '.join(ENVS)}")


@dataclass
class Goal:
    seed: int
    image: np.ndarray
    """(H, W, 3) uint8 goal frame."""
    qpos: np.ndarray
    start_distance: float
    """Largest per-coordinate distance from the initial configuration to the goal."""


def distance(env_name: str, qpos: np.ndarray, goal: np.ndarray) -> float:
    d = np.asarray(qpos, np.float64) - goal
    if ANGULAR[env_name]:
        d = (d + np.pi) % (2 * np.pi) - np.pi
    return float(np.abs(d).max())


def render(p: Protocol, env) -> np.ndarray:
    """The frame the recorder would have drawn: same camera, same size."""
    return np.ascontiguousarray(env.physics.render(p.img_size, p.img_size, camera_id=ENVS[p.env][2]))


def fresh_env(p: Protocol, seed: int):
    env = load_env(p.env, seed)
    env.reset()
    return env


def random_policy(p: Protocol, env, rng: np.random.Generator, steps: int) -> Iterator[np.ndarray]:
    """``steps`` agent-step actions, a uniform draw every ``GOAL_HOLD`` of them: the goals' policy."""
    spec = env.action_spec()
    for k in range(steps):
        if k % GOAL_HOLD[p.env] == 0:
            action = rng.uniform(spec.minimum, spec.maximum)
        yield action


def make_goal(p: Protocol, episode: int) -> Goal:
    seed = p.seed_base + episode
    env = fresh_env(p, seed)
    start = env.physics.data.qpos.copy()
    for action in random_policy(p, env, np.random.default_rng(seed), p.goal_steps):
        for _ in range(p.frameskip):
            env.step(action)
    qpos = env.physics.data.qpos.copy()
    return Goal(seed, render(p, env), qpos, distance(p.env, start, qpos))


@dataclass
class Outcome:
    success: bool
    final_distance: float
    best_distance: float
    steps_to_success: int | None
    """Control steps until the goal was first reached."""


class Episode:
    """One attempt at a goal: ``step(action)`` holds it ``frameskip`` control steps, checking
    success after each; the planner reads ``observation()`` (and ``state()``)."""

    def __init__(self, p: Protocol, goal: Goal):
        self.p, self.goal = p, goal
        self.env = fresh_env(p, goal.seed)
        self.control_steps, self.best, self.reached_at = 0, distance(p.env, self.env.physics.data.qpos, goal.qpos), None

    def observation(self) -> np.ndarray:
        return render(self.p, self.env)

    def state(self) -> np.ndarray:
        return physics_state(self.env)

    def step(self, action: np.ndarray) -> None:
        """One agent step: ``action`` held for ``frameskip`` control steps."""
        for _ in range(self.p.frameskip):
            self.control(action)

    def control(self, action: np.ndarray) -> None:
        """One control step."""
        self.env.step(action)
        self.control_steps += 1
        d = distance(self.p.env, self.env.physics.data.qpos, self.goal.qpos)
        self.best = min(self.best, d)
        if self.reached_at is None and d <= TOLERANCE[self.p.env]:
            self.reached_at = self.control_steps

    def outcome(self) -> Outcome:
        final = distance(self.p.env, self.env.physics.data.qpos, self.goal.qpos)
        return Outcome(self.reached_at is not None, final, self.best, self.reached_at)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate: sane at 0% and 100%, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
