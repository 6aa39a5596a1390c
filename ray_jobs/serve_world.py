"""`/v1/predict` and `/v1/plan`: JSON requests to an action-conditioned world model.

Every value a caller sends is checked before any compute: images must decode (base64 PNG/JPEG,
square), numbers must be finite, actions must have the model's width and lie in its bounds,
counts and sizes must stay within the limits in ``ServeConfig``. Each failure is a 4xx naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException

from jepa.config import ConfigError, PlannerConfig, from_dict
from jepa.mpc import plan_toward, view_goal, warm_start
from jepa.world_model import WorldModel
from ray_jobs.serve_config import ServeConfig

PREDICT_FIELDS = ("frames", "actions", "state")
PLAN_FIELDS = ("observation", "goal", "state", "horizon", "samples", "iterations", "elites", "seed", "init_actions")
MAX_CONTEXT_FRAMES = 16
MAX_PREDICT_STEPS = 64
MAX_HORIZON = 32
MAX_ITERATIONS = 50


def env_info(world: WorldModel) -> dict[str, Any]:
    """What `/v1/model` tells a client about the environment the model plans in."""
    env = world.env
    return {"domain": env["domain"], "task": env["task"], "camera_id": env["camera_id"], "img_size": env["img_size"],
            "frameskip": env["frameskip"], "action_dim": env["action_dim"], "action_low": env["action_low"],
            "action_high": env["action_high"], "state_dim": env["state_dim"], "uses_state": world.cfg.uses_state,
            "replan_every": world.planner.replan_every, "planner": asdict(world.planner)}


def check_fields(body: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise HTTPException(422, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed)}")
    missing = [f for f in required if body.get(f) is None]
    if missing:
        raise HTTPException(422, f"missing field(s) {', '.join(missing)}")


def decode_image(value: Any, name: str, limits: ServeConfig) -> np.ndarray:
    """A base64 PNG or JPEG (a `data:image/...;base64,` prefix allowed) -> uint8 (H, W, 3), square."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str):
        raise HTTPException(422, f"{name} must be a base64-encoded PNG or JPEG string")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    max_bytes = limits.max_upload_bytes
    if len(value) > max_bytes * 4 // 3 + 4:
        raise HTTPException(413, f"{name} larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise HTTPException(422, f"{name} must be a PNG or JPEG image, got {img.format}")
            if max(img.size) > limits.max_image_side:  # from the header, before decoding the pixels
                raise HTTPException(413, f"{name} is {img.size[0]}x{img.size[1]}, larger than "
                                         f"{limits.max_image_side} px on a side")
            rgb = np.asarray(img.convert("RGB"))
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{name} is not valid base64") from None
    except (UnidentifiedImageError, OSError) as err:
        raise HTTPException(422, f"could not decode {name} as an image: {err}") from None
    if rgb.shape[0] != rgb.shape[1]:
        raise HTTPException(422, f"{name} must be square (the env renders square frames), got "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")
    return rgb


def number_rows(value: Any, name: str, width: int) -> np.ndarray:
    """A list of lists of `width` finite numbers -> float32 (K, width)."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise HTTPException(422, f"{name} must be a list of lists of {width} numbers")
    for i, row in enumerate(value):
        if len(row) != width or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise HTTPException(422, f"{name}[{i}] must hold {width} numbers, got {row!r}"[:300])
    try:
        out = np.asarray(value, np.float32).reshape(len(value), width)
    except OverflowError:  # a JSON integer beyond float range
        out = np.full((len(value), width), np.inf, np.float32)
    if not np.isfinite(out).all():
        raise HTTPException(422, f"{name} holds NaN or infinite values")
    return out


def actions_in_bounds(value: Any, name: str, world: WorldModel, lo: int, hi: int) -> np.ndarray:
    actions = number_rows(value, name, world.env["action_dim"])
    if not lo <= len(actions) <= hi:
        raise HTTPException(422, f"{name}: expected {lo} to {hi} actions, got {len(actions)}")
    low, high = np.asarray(world.env["action_low"]), np.asarray(world.env["action_high"])
    bad = np.argwhere((actions < low - 1e-6) | (actions > high + 1e-6))
    if len(bad):
        i, j = bad[0]
        raise HTTPException(422, f"{name}[{i}][{j}] = {actions[i, j]:g} is outside the action bounds "
                                 f"[{low[j]:g}, {high[j]:g}]")
    return actions


def states_for(world: WorldModel, value: Any, frames: int) -> torch.Tensor | None:
    """(1, frames, S) from one state (with one frame) or one per frame; None for a model without a
    state token, which refuses one."""
    if not world.cfg.uses_state:
        if value is not None:
            raise HTTPException(422, "this model does not read a state: leave state out")
        return None
    if value is None:
        raise HTTPException(422, f"this model reads the state (qpos then qvel, {world.env['state_dim']} numbers) "
                                 f"with the observation: send state")
    if not isinstance(value, list):
        raise HTTPException(422, "state must be a list of numbers, or one such list per frame")
    rows = [value] if value and not isinstance(value[0], list) else value
    states = number_rows(rows, "state", world.env["state_dim"])
    if len(states) != frames:
        raise HTTPException(422, f"state: one per frame ({frames}), got {len(states)}")
    return torch.as_tensor(states)[None]


def whole_number(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HTTPException(422, f"{name} must be a whole number in [{lo}, {hi}], got {value!r}"[:300])
    return value


def predict(world: WorldModel, body: dict[str, Any], model: str, limits: ServeConfig) -> dict[str, Any]:
    """Context frames, the actions between them, then the actions to imagine -> the pooled
    representation of every imagined step."""
    check_fields(body, PREDICT_FIELDS, ("frames", "actions"))
    frames = body["frames"]
    if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_CONTEXT_FRAMES:
        raise HTTPException(422, f"frames must be a list of 1 to {MAX_CONTEXT_FRAMES} base64 images")
    decoded = [decode_image(f, f"frames[{i}]", limits) for i, f in enumerate(frames)]
    if len({d.shape for d in decoded}) > 1:
        raise HTTPException(422, f"frames differ in size: {sorted({d.shape[0] for d in decoded})}")
    images, C = np.stack(decoded), len(frames)
    actions = actions_in_bounds(body["actions"], "actions", world, C, C - 1 + MAX_PREDICT_STEPS)
    states = states_for(world, body.get("state"), C)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = world.encode(images)[None]
        pred = world.predictor.rollout(z, torch.as_tensor(actions)[None], states, steps=len(actions) - (C - 1))
    out = {"model": model, "steps": pred.frames.shape[1], "dim": pred.frames.shape[-1],
           "predictions": pred.frames[0].mean(1).tolist(),
           "latency_ms": round(1000 * (time.perf_counter() - t0), 1)}
    if pred.states is not None:
        out["states"] = pred.states[0].tolist()
    return out


def plan(world: WorldModel, body: dict[str, Any], model: str, limits: ServeConfig) -> dict[str, Any]:
    """One CEM plan from an observation toward a goal image; actions per control step."""
    check_fields(body, PLAN_FIELDS, ("observation", "goal"))
    p = world.planner
    horizon = whole_number(body, "horizon", p.horizon, 1, MAX_HORIZON)
    samples = whole_number(body, "samples", p.samples, 1, limits.max_plan_samples)
    iterations = whole_number(body, "iterations", p.iterations, 1, MAX_ITERATIONS)
    elites = whole_number(body, "elites", min(p.elites, samples), 1, samples)
    seed = whole_number(body, "seed", 0, 0, 2**63 - 1)
    try:
        cfg = from_dict(PlannerConfig, {**asdict(p), "horizon": horizon, "samples": samples, "iterations": iterations,
                                        "elites": elites, "replan_every": min(p.replan_every, horizon)})
    except ConfigError as err:
        raise HTTPException(422, str(err)) from None
    observation = decode_image(body["observation"], "observation", limits)
    goal_image = decode_image(body["goal"], "goal", limits)
    states = states_for(world, body.get("state"), 1)
    init = None
    if body.get("init_actions") is not None:
        init = torch.as_tensor(actions_in_bounds(body["init_actions"], "init_actions", world, horizon, horizon))
    t0 = time.perf_counter()
    goal = view_goal(world, goal_image, cfg)
    call = plan_toward(world, observation, goal, None if states is None else states[0, 0].numpy(), cfg, init,
                       torch.Generator().manual_seed(seed))
    k = world.env["frameskip"]
    return {"model": model, "actions": np.repeat(call.actions, k, axis=0).tolist(), "frameskip": k,
            "agent_actions": call.actions.tolist(), "replan_every": cfg.replan_every,
            "warm_start": warm_start(world, call.actions, cfg.replan_every, horizon).tolist(),
            "energy": call.energy, "latency_ms": round(1000 * (time.perf_counter() - t0), 1)}
