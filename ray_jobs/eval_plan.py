"""`jepa eval plan`: how often does planning with the world model reach a goal image?

Three policies on the same goals (``pipelines.planning_protocol``), episodes spread over Ray tasks:
- ``world-model``: CEM + MPC in the model's representation space (``jepa.mpc``);
- ``random``: a uniform-random action every agent step (the floor);
- ``simulator-cem``: CEM whose energy is the true distance to the goal after simulating each
  candidate in a copy of the simulator (a ceiling: a perfect model with a perfect energy).
Reported per policy: success rate with a 95% Wilson interval, the final and best distances, and the
planning time per call. Rollout strips and energy traces go to the MLflow evaluation run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from jepa.config import PlannerConfig
from pipelines.planning_protocol import (GOAL_HOLD, TOLERANCE, Episode, Outcome, Protocol, distance, make_goal,
                                         random_policy, wilson_interval)
from pipelines.ray_tasks import finished
from ray_jobs.eval_runs import ModelRef, Table, log_evaluation

POLICIES = ("world-model", "random", "simulator-cem")
SIMULATOR_CEM = PlannerConfig(samples=100, elites=10, iterations=5, horizon=5, replan_every=5)
"""The ceiling's CEM: fewer samples than the model's (simulating is the slow part on a CPU), and
still far above it."""
EPISODES_PER_TASK = 5
STRIP_EPISODES = 4
"""Episodes whose rollout strips (observation at each plan, then the goal) are logged."""


@dataclass
class EpisodeResult:
    episode: int
    policy: str
    outcome: Outcome
    start_distance: float
    plan_seconds: list[float] = field(default_factory=list)
    energies: list[list[float]] = field(default_factory=list)
    strip: list[np.ndarray] = field(default_factory=list)


def load_world(uri: str):
    from pathlib import Path

    from jepa.world_model import is_world_model, load_world_model
    from ray_jobs import tracking

    ref = ModelRef.of(uri)
    folder = tracking.download_checkpoint(uri) if ref.version is not None else Path(uri)
    if not is_world_model(folder):
        raise ValueError(f"{uri} has no action head: it is not a `jepa train-ac` model, so it cannot plan")
    return load_world_model(folder), ref


def world_model_episode(world, p: Protocol, cfg: PlannerConfig, episode: int, keep_strip: bool) -> EpisodeResult:
    from jepa.mpc import run_mpc

    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    uses_state = world.cfg.uses_state
    trace = run_mpc(world, goal.image, lambda: (ep.observation(), ep.state() if uses_state else None), ep.step,
                    p.budget, cfg, seed=goal.seed)
    return EpisodeResult(episode, "world-model", ep.outcome(), goal.start_distance,
                         [c.seconds for c in trace.calls], [c.energy for c in trace.calls],
                         [*trace.observations, goal.image] if keep_strip else [])


def random_episode(p: Protocol, episode: int) -> EpisodeResult:
    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    for action in random_policy(p, ep.env, np.random.default_rng([goal.seed, 1]), p.budget):
        ep.step(action)
    return EpisodeResult(episode, "random", ep.outcome(), goal.start_distance)


def simulator_cem_episode(p: Protocol, episode: int) -> EpisodeResult:
    import torch

    from jepa.planner import cem

    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    physics = ep.env.physics
    spec = ep.env.action_spec()
    low, high = torch.tensor(spec.minimum, dtype=torch.float32), torch.tensor(spec.maximum, dtype=torch.float32)
    cfg, generator = SIMULATOR_CEM, torch.Generator().manual_seed(goal.seed)
    result = EpisodeResult(episode, "simulator-cem", ep.outcome(), goal.start_distance)

    def energy(samples: torch.Tensor) -> torch.Tensor:
        start = physics.get_state().copy()
        out = torch.empty(len(samples))
        for i, sequence in enumerate(samples.numpy()):
            physics.set_state(start)
            for action in sequence:
                physics.set_control(action)
                for _ in range(p.frameskip):
                    physics.step()
            out[i] = distance(p.env, physics.data.qpos, goal.qpos)
        physics.set_state(start)
        physics.forward()
        return out

    done = 0
    while done < p.budget:
        t0 = time.perf_counter()
        plan = cem(energy, low, high, cfg, generator=generator)
        result.plan_seconds.append(time.perf_counter() - t0)
        result.energies.append(plan.energy)
        steps = min(cfg.replan_every, p.budget - done)
        for action in plan.actions[:steps].numpy():
            ep.step(action)
        done += steps
    result.outcome = ep.outcome()
    return result


def run_episodes(model_uri: str | None, policy: str, p: Protocol, cfg: PlannerConfig, episodes: list[int],
                 strips: int = 0) -> list[EpisodeResult]:
    """A Ray task's share: ``episodes`` under ``policy`` (the world model loaded once per task)."""
    world = load_world(model_uri)[0] if policy == "world-model" else None
    out = []
    for e in episodes:
        if policy == "world-model":
            out.append(world_model_episode(world, p, cfg, e, keep_strip=e < strips))
        elif policy == "random":
            out.append(random_episode(p, e))
        else:
            out.append(simulator_cem_episode(p, e))
    return out


@dataclass
class PlanReport:
    model: str
    settings: dict[str, Any]
    results: dict[str, list[EpisodeResult]]

    def summary(self, policy: str) -> dict[str, Any]:
        rs = self.results[policy]
        wins = sum(r.outcome.success for r in rs)
        low, high = wilson_interval(wins, len(rs))
        seconds = [s for r in rs for s in r.plan_seconds]
        return {"episodes": len(rs), "successes": wins, "success": wins / max(1, len(rs)), "low": low, "high": high,
                "final_distance_median": float(np.median([r.outcome.final_distance for r in rs])),
                "best_distance_median": float(np.median([r.outcome.best_distance for r in rs])),
                "plan_seconds_mean": float(np.mean(seconds)) if seconds else None}

    def table(self) -> Table:
        unit = "rad" if self.settings["env"] == "reacher" else "m"
        t = Table(["policy", "episodes", "success", "95% interval", f"final dist. ({unit}, median)",
                   f"best dist. ({unit}, median)", "plan s/call"])
        for policy in self.results:
            s = self.summary(policy)
            t.rows.append([policy, s["episodes"], f"{s['success']:.0%}", f"[{s['low']:.0%}, {s['high']:.0%}]",
                           f"{s['final_distance_median']:.3f}", f"{s['best_distance_median']:.3f}",
                           "-" if s["plan_seconds_mean"] is None else f"{s['plan_seconds_mean']:.2f}"])
        return t

    def markdown(self) -> str:
        st = self.settings
        return (f"## Planning: {self.model} on {st['env']}\n\n{self.table().markdown()}\n\n"
                f"Goal: the frame after {st['goal_steps']} random agent steps, a draw held for "
                f"{GOAL_HOLD[st['env']]} (start-to-goal distance median "
                f"{st['start_distance_median']:.2f}); budget {st['budget']} agent steps of {st['frameskip']} control "
                f"steps; success = every coordinate within {st['tolerance']} of the goal at any control step. "
                f"World-model CEM: {st['planner']}.\n")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings,
                "policies": {p: self.summary(p) for p in self.results},
                "episodes": {p: [{"episode": r.episode, **asdict(r.outcome), "start_distance": r.start_distance}
                                 for r in rs] for p, rs in self.results.items()}}

    def metrics(self) -> dict[str, float]:
        out = {}
        for policy in self.results:
            s = self.summary(policy)
            key = policy.replace("-", "_")
            out |= {f"{key}.success": s["success"], f"{key}.success_low": s["low"], f"{key}.success_high": s["high"],
                    f"{key}.final_distance": s["final_distance_median"]}
            if s["plan_seconds_mean"] is not None:
                out[f"{key}.plan_seconds"] = s["plan_seconds_mean"]
        return out


def evaluate_plan(model_uri: str, env: str | None = None, episodes: int = 50, policies: tuple[str, ...] = POLICIES,
                  planner: dict[str, Any] | None = None, progress: bool = True,
                  seed_base: int = Protocol.seed_base) -> tuple[PlanReport, ModelRef]:
    """Run every policy on goals 0..episodes-1 as Ray tasks of up to ``EPISODES_PER_TASK`` episodes
    each (the world model loads once per task) and collect a report. Goals come from seeds
    ``seed_base + episode``: tune planner settings on another base than the one reported."""
    import ray

    from jepa.config import from_dict

    world, ref = load_world(model_uri)
    spec = world.env
    if env is not None and env != spec["domain"]:
        raise ValueError(f"{model_uri} was trained on {spec['domain']}, not {env}")
    cfg = from_dict(PlannerConfig, {**asdict(world.planner), **(planner or {})})
    p = Protocol(env=spec["domain"], frameskip=spec["frameskip"], img_size=spec["img_size"], seed_base=seed_base)
    task = ray.remote(num_cpus=1)(run_episodes)
    chunks = [list(range(i, min(i + EPISODES_PER_TASK, episodes))) for i in range(0, episodes, EPISODES_PER_TASK)]
    policy_of = {task.remote(model_uri, policy, p, cfg, chunk, STRIP_EPISODES): (policy, len(chunk))
                 for policy in policies for chunk in chunks}
    results: dict[str, list[EpisodeResult]] = {policy: [] for policy in policies}
    for done, rs in finished({r: n for r, (_, n) in policy_of.items()}, "plan episodes", "episode", progress):
        results[policy_of[done][0]] += rs
    for rs in results.values():
        rs.sort(key=lambda r: r.episode)
    starts = [r.start_distance for r in next(iter(results.values()))]
    settings = {"env": p.env, "episodes": episodes, "seed_base": p.seed_base, "goal_steps": p.goal_steps, "budget": p.budget,
                "frameskip": p.frameskip, "img_size": p.img_size, "tolerance": TOLERANCE[p.env],
                "start_distance_median": float(np.median(starts)), "planner": asdict(cfg),
                "simulator_cem": asdict(SIMULATOR_CEM)}
    return PlanReport(ref.label, settings, results), ref


def figures(report: PlanReport) -> dict[str, Any]:
    """Rollout strips (each plan's observation, then the goal) and the energy traces."""
    from matplotlib.figure import Figure

    out = {}
    wm = report.results.get("world-model", [])
    for r in wm:
        if r.strip:
            fig = Figure(figsize=(1.2 * len(r.strip), 1.5), layout="constrained")
            for ax, frame, i in zip(fig.subplots(1, len(r.strip), squeeze=False)[0], r.strip, range(len(r.strip))):
                ax.imshow(frame)
                ax.set_axis_off()
                ax.set_title("goal" if i == len(r.strip) - 1 else f"t={i}", fontsize=7)
            out[f"plan/strip_episode_{r.episode:03d}.png"] = fig
    if wm:
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
        for r in wm[:STRIP_EPISODES]:
            for trace in r.energies:
                ax.plot(range(1, len(trace) + 1), trace, alpha=0.5, color="C0" if r.outcome.success else "C3")
        ax.set_xlabel("CEM iteration")
        ax.set_ylabel("best energy")
        ax.set_title("energy per plan (blue: episode reached the goal)")
        out["plan/energy_traces.png"] = fig
    return out


def record(ref: ModelRef, report: PlanReport) -> str:
    return log_evaluation(ref, "plan", params={k: str(v) for k, v in report.settings.items()},
                          metrics=report.metrics(), result=report.as_dict(), report_md=report.markdown(),
                          figures=figures(report))
