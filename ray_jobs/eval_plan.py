"""`jepa eval plan`: how often does planning with the world model reach a goal image?

Policies on the same goals (``pipelines.planning_protocol``), episodes spread over Ray tasks:
- ``world-model``: CEM + MPC in the model's representation space (``jepa.mpc``);
- ``random``: a uniform-random action every agent step (the floor);
- ``simulator-cem``: CEM whose energy is the true distance to the goal after simulating each
  candidate in a copy of the simulator (a ceiling: a perfect model with a perfect energy);
- ``simulator-energy`` (on request): the world model's CEM and energy, with each candidate
  simulated, rendered and encoded instead of imagined (a perfect predictor with the model's energy);
- ``served`` (on request): the world model deployed by Serve, driven only through its HTTP API
  (``/v1/model``, then ``/v1/plan`` each replanning step), as an application would drive it.
Reported per policy: success rate with a 95% Wilson interval, the final and best distances, and the
planning time per call. Rollout strips and energy traces go to the MLflow evaluation run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import requests

from jepa.config import PlannerConfig
from pipelines.planning_protocol import (GOAL_HOLD, TOLERANCE, Episode, Outcome, Protocol, distance, make_goal,
                                         random_policy, render, wilson_interval)
from pipelines.ray_tasks import finished
from ray_jobs.eval_runs import ModelRef, Table, log_evaluation

POLICIES = ("world-model", "random", "simulator-cem", "simulator-energy", "served")
DEFAULT_POLICIES = POLICIES[:3]
"""``simulator-energy`` renders and encodes every candidate (~2.5 min per reacher episode on a
core), so it runs only when asked for."""
SIMULATOR_CEM = PlannerConfig(samples=100, elites=10, iterations=5, horizon=5, replan_every=5)
"""The ceiling's CEM: fewer samples than the model's (simulating is the slow part on a CPU), and
still far above it."""
EPISODES_PER_TASK = 5
DISTANCE_BANDS = {"reacher": (1.0, 2.0), "point_mass": (0.1, 0.2)}
"""Start-to-goal distances that split the report's goals into near, middle and far."""
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
    goal_read_error: float | None = None
    """How far the state the model's reader saw in the goal image lies from the goal's (the success
    metric's distance), when the planner uses it: tells misreads from bad plans."""


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
    read = trace.goal.state
    return EpisodeResult(episode, "world-model", ep.outcome(), goal.start_distance,
                         [c.seconds for c in trace.calls], [c.energy for c in trace.calls],
                         [*trace.observations, goal.image] if keep_strip else [],
                         None if read is None else distance(p.env, read.float().cpu().numpy(), goal.qpos))


def served_episode(client, env: dict[str, Any], p: Protocol, cfg: PlannerConfig, episode: int) -> EpisodeResult:
    """The world-model policy through ``/v1/plan`` alone, ``env`` being ``/v1/model``'s: render, send
    the observation, goal and state with the seed and warm start that ``run_mpc`` uses, execute
    ``replan_every`` agent steps of the returned control actions, replan. Its episodes end where
    ``world_model_episode``'s do."""
    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    result = EpisodeResult(episode, "served", ep.outcome(), goal.start_distance)
    cem = {"horizon": cfg.horizon, "samples": cfg.samples, "iterations": cfg.iterations, "elites": cfg.elites}
    done, init = 0, None
    while done < p.budget:
        t0 = time.perf_counter()
        answer = client.plan(ep.observation(), goal.image, ep.state() if env["uses_state"] else None,
                             seed=goal.seed + len(result.plan_seconds), **cem,
                             **({"init_actions": init} if init is not None else {}))
        result.plan_seconds.append(time.perf_counter() - t0)
        result.energies.append(answer["energy"])
        steps = min(env["replan_every"], p.budget - done)
        for action in answer["actions"][: steps * env["frameskip"]]:
            ep.control(np.asarray(action))
        done, init = done + steps, answer["warm_start"]
    result.outcome = ep.outcome()
    return result


def served_client(url: str | None, ref: ModelRef, p: Protocol, cfg: PlannerConfig):
    """A client of the Serve app at ``url``, once it is checked to serve the model under evaluation
    with the protocol's env and the planner's replanning interval."""
    from ray_jobs.client import ApiError, JepaClient

    client = JepaClient(url)
    try:
        info = client.model()
    except requests.ConnectionError:
        raise ValueError(f"no Serve app answers at {client.url}: deploy the model with `jepa serve deploy`, "
                         f"or give its --url") from None
    except ApiError as err:
        raise ValueError(f"{client.url}/v1/model: {err}") from None
    env = info.get("env")
    if env is None:
        raise ValueError(f"{client.url} serves {info['name']}/{info['version']}, which has no action head")
    if ref.version is not None and (info["name"], info["version"]) != (ref.name, ref.version):
        raise ValueError(f"{client.url} serves {info['name']}/{info['version']}, not {ref.label}: deploy that first")
    if (env["domain"], env["frameskip"], env["img_size"], env["replan_every"]) != (p.env, p.frameskip, p.img_size, cfg.replan_every):
        raise ValueError(f"{client.url} plans on {env['domain']} (frameskip {env['frameskip']}, {env['img_size']} px, "
                         f"replanning every {env['replan_every']}), not as this evaluation does")
    if env["planner"]["select"] != cfg.select:
        raise ValueError(f"{client.url} returns the CEM {env['planner']['select']} plan, not the {cfg.select} one "
                         f"this evaluation asks for (--select)")
    if env["planner"].get("state_weight", 0.0) != cfg.state_weight:
        raise ValueError(f"{client.url} plans with state weight {env['planner'].get('state_weight', 0.0)}, not "
                         f"{cfg.state_weight} as this evaluation asks (--state-weight)")
    if env["planner"]["energy"] != cfg.energy:
        raise ValueError(f"{client.url} plans with the {env['planner']['energy']} energy, not the "
                         f"{cfg.energy} one this evaluation asks for (--energy)")
    return client


def random_episode(p: Protocol, episode: int) -> EpisodeResult:
    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    for action in random_policy(p, ep.env, np.random.default_rng([goal.seed, 1]), p.budget):
        ep.step(action)
    return EpisodeResult(episode, "random", ep.outcome(), goal.start_distance)


def simulate_each(ep: Episode, samples: np.ndarray, p: Protocol, visit, every_step: bool = False):
    """Simulate every action sequence of ``samples`` (S, H, A) from the episode's current state,
    each action held ``frameskip`` control steps, and return ``visit(env)`` at each one's end (with
    ``every_step``, a list of it after each agent step); the episode's state is left as it was."""
    physics = ep.env.physics
    start = physics.get_state().copy()
    out = []
    for sequence in samples:
        physics.set_state(start)
        physics.forward()  # dm_control's step finishes the step its last forward began: that must be this state's
        seen = []
        for action in sequence:
            physics.set_control(action)
            for _ in range(p.frameskip):
                physics.step()
            if every_step:
                seen.append(visit(ep.env))
        out.append(seen if every_step else visit(ep.env))
    physics.set_state(start)
    physics.forward()
    return out


def simulator_episode(policy: str, p: Protocol, episode: int, cfg: PlannerConfig, energy_of,
                      next_mean=None) -> EpisodeResult:
    """CEM + MPC over a copy of the simulator: ``energy_of(ep, goal)`` gives the energy of
    candidate sequences; ``next_mean(plan_actions, executed)``, when given, is where the next search
    starts (the world model's MPC starts from the rest of the previous plan)."""
    import torch

    from jepa.planner import cem

    goal = make_goal(p, episode)
    ep = Episode(p, goal)
    spec = ep.env.action_spec()
    low, high = torch.tensor(spec.minimum, dtype=torch.float32), torch.tensor(spec.maximum, dtype=torch.float32)
    generator = torch.Generator().manual_seed(goal.seed)
    result = EpisodeResult(episode, policy, ep.outcome(), goal.start_distance)
    energy, mean, done = energy_of(ep, goal), None, 0
    while done < p.budget:
        t0 = time.perf_counter()
        plan = cem(energy, low, high, cfg, init_mean=mean, generator=generator)
        result.plan_seconds.append(time.perf_counter() - t0)
        result.energies.append(plan.energy)
        steps = min(cfg.replan_every, p.budget - done)
        for action in plan.actions[:steps].numpy():
            ep.step(action)
        done += steps
        if next_mean is not None:
            mean = next_mean(plan.actions, steps)
    result.outcome = ep.outcome()
    return result


def simulator_cem_episode(p: Protocol, episode: int) -> EpisodeResult:
    import torch

    def energy_of(ep: Episode, goal):
        def energy(samples: torch.Tensor) -> torch.Tensor:
            return torch.tensor(simulate_each(ep, samples.numpy(), p, lambda env: distance(p.env, env.physics.data.qpos, goal.qpos)))
        return energy

    return simulator_episode("simulator-cem", p, episode, SIMULATOR_CEM, energy_of)


def simulator_energy_episode(world, p: Protocol, cfg: PlannerConfig, episode: int) -> EpisodeResult:
    """The world model's planner and energy with the true simulator as its predictor: what a perfect
    predictor would reach, so the gap to ``world-model`` is the predictor's and the gap from here to
    ``simulator-cem`` the energy's (and the search's). Tokens only: a state term
    (``PlannerConfig.state_weight``) is not applied, so this stays the token energy's ceiling."""
    from jepa.mpc import warm_start
    from jepa.planner import goal_energy

    def energy_of(ep: Episode, goal):
        target = world.encode(goal.image[None])[0]

        def energy(samples):
            every_step = cfg.energy != "final"
            frames = np.stack(simulate_each(ep, samples.numpy(), p, lambda env: render(p, env), every_step))
            tokens = world.encode(frames.reshape(-1, *frames.shape[-3:])).view(len(samples), -1, *target.shape)
            return goal_energy(tokens, target, cfg.energy)
        return energy

    return simulator_episode("simulator-energy", p, episode, cfg, energy_of,
                             next_mean=lambda actions, executed: warm_start(world, actions.numpy(), executed, cfg.horizon))


def run_episodes(model_uri: str | None, policy: str, p: Protocol, cfg: PlannerConfig, episodes: list[int],
                 strips: int = 0, server: tuple[str, str | None] | None = None) -> list[EpisodeResult]:
    """A Ray task's share: ``episodes`` under ``policy`` (the world model loaded once per task);
    ``server``: the Serve app's URL and token for the ``served`` policy."""
    world = load_world(model_uri)[0] if policy in ("world-model", "simulator-energy") else None
    if policy == "served":
        from ray_jobs.client import JepaClient

        client = JepaClient(*server)
        env = client.model()["env"]
    out = []
    for e in episodes:
        if policy == "served":
            out.append(served_episode(client, env, p, cfg, e))
        elif policy == "world-model":
            out.append(world_model_episode(world, p, cfg, e, keep_strip=e < strips))
        elif policy == "random":
            out.append(random_episode(p, e))
        elif policy == "simulator-energy":
            out.append(simulator_energy_episode(world, p, cfg, e))
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
        read = [r.goal_read_error for r in rs if r.goal_read_error is not None]
        return {"episodes": len(rs), "successes": wins, "success": wins / max(1, len(rs)), "low": low, "high": high,
                "final_distance_median": float(np.median([r.outcome.final_distance for r in rs])),
                "best_distance_median": float(np.median([r.outcome.best_distance for r in rs])),
                "plan_seconds_mean": float(np.mean(seconds)) if seconds else None,
                "goal_read_error_median": float(np.median(read)) if read else None}

    @property
    def unit(self) -> str:
        return "rad" if self.settings["env"] == "reacher" else "m"

    def table(self) -> Table:
        t = Table(["policy", "episodes", "success", "95% interval", f"final dist. ({self.unit}, median)",
                   f"best dist. ({self.unit}, median)", "plan s/call"])
        for policy in self.results:
            s = self.summary(policy)
            t.rows.append([policy, s["episodes"], f"{s['success']:.0%}", f"[{s['low']:.0%}, {s['high']:.0%}]",
                           f"{s['final_distance_median']:.3f}", f"{s['best_distance_median']:.3f}",
                           "-" if s["plan_seconds_mean"] is None else f"{s['plan_seconds_mean']:.2f}"])
        return t

    def by_distance(self) -> Table:
        """Successes per policy among near, middle and far goals: where a planner's misses lie."""
        near, far = DISTANCE_BANDS[self.settings["env"]]
        bands = [(f"under {near:g}", 0.0, near), (f"{near:g} to {far:g}", near, far), (f"over {far:g}", far, float("inf"))]
        t = Table(["start distance", "goals", *self.results])
        goals = [r.start_distance for r in next(iter(self.results.values()))]
        for name, low, high in bands:
            t.rows.append([name, sum(low <= d < high for d in goals),
                           *[sum(r.outcome.success for r in rs if low <= r.start_distance < high) for rs in self.results.values()]])
        return t

    def goal_reading(self) -> str:
        """A sentence on how well the planner's state reader saw the goals, where one was used."""
        out = []
        for policy, rs in self.results.items():
            read = [r.goal_read_error for r in rs if r.goal_read_error is not None]
            if read:
                within = sum(e <= self.settings["tolerance"] for e in read)
                out.append(f"{policy} read the goal's state from the goal image within {np.median(read):.3f} "
                           f"{self.unit} (median, largest coordinate) of the true one; within the success tolerance for "
                           f"{within} of {len(read)} goals.\n\n")
        return "".join(out)

    def markdown(self) -> str:
        st = self.settings
        return (f"## Planning: {self.model} on {st['env']}\n\n{self.table().markdown()}\n\n{self.goal_reading()}"
                f"Successes by start-to-goal distance:\n\n{self.by_distance().markdown()}\n\n"
                f"Goal: the frame after {st['goal_steps']} random agent steps, a draw held for "
                f"{GOAL_HOLD[st['env']]} (start-to-goal distance median "
                f"{st['start_distance_median']:.2f}); budget {st['budget']} agent steps of {st['frameskip']} control "
                f"steps; success = every coordinate within {st['tolerance']} of the goal at any control step. "
                f"World-model CEM: {st['planner']}.\n")

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings,
                "policies": {p: self.summary(p) for p in self.results},
                "episodes": {p: [{"episode": r.episode, **asdict(r.outcome), "start_distance": r.start_distance,
                                  "goal_read_error": r.goal_read_error} for r in rs] for p, rs in self.results.items()}}

    def metrics(self) -> dict[str, float]:
        out = {}
        for policy in self.results:
            s = self.summary(policy)
            key = policy.replace("-", "_")
            out |= {f"{key}.success": s["success"], f"{key}.success_low": s["low"], f"{key}.success_high": s["high"],
                    f"{key}.final_distance": s["final_distance_median"]}
            if s["plan_seconds_mean"] is not None:
                out[f"{key}.plan_seconds"] = s["plan_seconds_mean"]
            if s["goal_read_error_median"] is not None:
                out[f"{key}.goal_read_error"] = s["goal_read_error_median"]
        return out


def evaluate_plan(model_uri: str, env: str | None = None, episodes: int = 50, policies: tuple[str, ...] = DEFAULT_POLICIES,
                  planner: dict[str, Any] | None = None, progress: bool = True,
                  seed_base: int = Protocol.seed_base, url: str | None = None) -> tuple[PlanReport, ModelRef]:
    """Run every policy on goals 0..episodes-1 as Ray tasks of up to ``EPISODES_PER_TASK`` episodes
    each (the world model loads once per task) and collect a report. Goals come from seeds
    ``seed_base + episode``: tune planner settings on another base than the one reported. ``url``:
    the Serve app the ``served`` policy plans through (default: JEPA_SERVE_URL, then :8000)."""
    import ray

    from jepa.config import from_dict

    world, ref = load_world(model_uri)
    spec = world.env
    if env is not None and env != spec["domain"]:
        raise ValueError(f"{model_uri} was trained on {spec['domain']}, not {env}")
    cfg = from_dict(PlannerConfig, {**asdict(world.planner), **(planner or {})})
    if cfg.state_weight > 0 and world.state_reader is None:
        raise ValueError(f"{model_uri} has no state reader, so it cannot plan with a state weight: use 0")
    p = Protocol(env=spec["domain"], frameskip=spec["frameskip"], img_size=spec["img_size"], seed_base=seed_base)
    server = None
    if "served" in policies:
        client = served_client(url, ref, p, cfg)
        server = (client.url, client.token)
    # a served episode renders and waits on HTTP: the Serve replica does its planning
    tasks = {policy: ray.remote(num_cpus=0.5 if policy == "served" else 1)(run_episodes) for policy in policies}
    chunks = [list(range(i, min(i + EPISODES_PER_TASK, episodes))) for i in range(0, episodes, EPISODES_PER_TASK)]
    policy_of = {tasks[policy].remote(model_uri, policy, p, cfg, chunk, STRIP_EPISODES, server): (policy, len(chunk))
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
