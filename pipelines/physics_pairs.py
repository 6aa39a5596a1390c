"""Matched possible/impossible video pairs for intuitive-physics evaluation (violation of expectation).

Both videos of a pair come from one scene and one simulation of ``synth_physics``: they are
pixel-identical before the onset frame, then the impossible one breaks one law of the world and
the possible one carries on. A world model that learned the physics should be more surprised by
the impossible video (``jepa.surprise.pair_correct``); a model that only tracks pixels should not
care which law was broken. Types (what happens in the impossible video at ``onset_frame``):

- ``permanence``, in two variants that alternate by pair index (IntPhys's matched design), on
  scenes where the ball never touches another one:
  - *vanish*: a ball fully hidden behind an occluder is removed from the world; in the possible
    video it re-emerges;
  - *appear*: the same ball is not there until it is hidden, then emerges from behind the
    occluder though nothing went behind it; in the possible video it is never there.
  ``onset_frame`` is the first frame it is fully hidden (no earlier than the onset window), so the
  pixels first differ later, at the re-emergence. Across the two variants, a scorer that only
  reacts to change ("something appeared") scores 50%: it is right on *appear* and wrong on *vanish*.
- ``continuity``: a visible ball jumps by >= 4 radii (velocity kept) and the simulation goes on.
- ``constancy``: a ball's hue rotates by 120-240 degrees or its radius is scaled x1.7 or x0.55; its
  trajectory is the possible one (only its appearance changes).
- ``solidity``: two balls that are about to collide pass through each other instead (collisions
  between that pair are off from the onset); ``onset_frame`` is the last frame before they touch.
- ``inertia``: a freely flying ball's speed is scaled x2.5 or x0.3 (direction kept) with no contact
  within a few frames; ``onset_frame`` is the first frame with the new velocity.
- ``control``: both videos possible. The impossible video goes through one violation's code path
  (cycling by pair index) with a no-op edit, so it must equal the possible one: a control scores a
  tie (0.5 by ``pair_correct``), and anything else reveals a rendering or encoding artefact.

Determinism: a pair is a pure function of (config, type, seed); ``pair_seed`` derives the seed of
pair i of a type from the run seed, so pair i is the same whatever the number of pairs, in any
process. Scenes are found by rejection sampling over seeds derived from the pair seed.
See docs/physics-pairs.md for the layout that ``synthesize_pairs`` writes.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import storage
from pipelines.synth_physics import (
    GENERATOR_VERSION, PhysicsConfig, Scene, States, integrate, render, sample_scene, state_table, video_seed,
    visible,
)  # fmt: skip
from pipelines.video import encode_mp4

VIOLATIONS = ("permanence", "continuity", "constancy", "solidity", "inertia")
PAIR_TYPES = VIOLATIONS + ("control",)
DEFAULT_ONSET_RANGE_S = (1.25, 2.25)
"""Onset frames lie in this span of seconds: ~1 s of context before, frames to predict after."""

PAIR_METADATA_KEY = b"jepa.pair"
"""Sidecar parquet metadata (JSON) describing the pair, next to ``synth_physics.METADATA_KEY``."""
PAIRS_METADATA_KEY = b"jepa.pairs"
"""pairs.parquet metadata (JSON): run seed, config, onset range, types."""
PAIRS_FILE = "pairs.parquet"
PAIRS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("type", pa.string()),
        ("onset_frame", pa.int32()),
        ("onset_s", pa.float64()),
        ("possible_uri", pa.string()),
        ("impossible_uri", pa.string()),
        ("seed", pa.int64()),
        ("first_diff_frame", pa.int32()),  # null for controls
        ("ball", pa.int32()),
        ("description", pa.string()),
    ]
)
REQUIRED_COLUMNS = ("pair_id", "type", "onset_frame", "onset_s", "possible_uri", "impossible_uri", "seed")

MIN_DIFF_FRAMES = 4
"""A violation must change at least half a ball's area of pixels in this many frames."""
DIFF_LEVEL = 24
"""A pixel differs when some channel differs by more than this (ignores anti-aliasing slivers)."""
MAX_ATTEMPTS = 400
"""Scenes tried per pair before giving up (typical pairs need 1-5)."""
PLANS_PER_SCENE = 6
"""Candidate (ball, onset) choices tried per scene before drawing a new scene."""
CAUSAL_X264 = "mbtree=0:bframes=0:rc-lookahead=0"
"""x264 settings under which an encoded frame depends on earlier frames only. With B-frames and
lookahead (the ``encode_mp4`` default) the frames just before the onset are coded differently in
the two videos (seen: up to 35 levels apart in 1-2 frames), so the decoded videos would differ
before the onset; with these they decode identically up to it."""
_SEED_TAG = 0x9A125  # keeps pair seeds apart from synth_physics.video_seed's


@dataclass
class Pair:
    """One matched pair: frames, ground truth and where the violation happens."""

    pair_type: str
    seed: int
    scene_seed: int
    """Seed of the accepted scene: ``sample_scene(cfg, default_rng(scene_seed))`` redraws it."""
    code_path: str
    """The violation whose code made the impossible video (for a control: the one it mimics)."""
    cfg: PhysicsConfig
    """The config the scene was drawn with (the caller's, with this type's tweaks)."""
    onset_frame: int
    first_diff_frame: int | None
    """First frame whose pixels differ (None when the videos are identical)."""
    ball: int
    description: str
    params: dict
    possible: np.ndarray  # uint8 (T, size, size, 3)
    impossible: np.ndarray
    possible_table: pa.Table
    impossible_table: pa.Table

    @property
    def onset_s(self) -> float:
        return self.onset_frame / self.cfg.fps

    def encode(self) -> tuple[bytes, bytes]:
        """(possible, impossible) MP4 bytes, each encoded on its own with ``CAUSAL_X264``."""
        return tuple(
            encode_mp4(frames, self.cfg.fps, crf=self.cfg.crf, x264_params=CAUSAL_X264)
            for frames in (self.possible, self.impossible)
        )


def pair_seed(seed: int, pair_type: str, index: int) -> int:
    """Seed of pair ``index`` of ``pair_type`` in a run: order-free and below 2**63 (an int64)."""
    entropy = [seed, _SEED_TAG, PAIR_TYPES.index(pair_type), index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def onset_window(cfg: PhysicsConfig, onset_range_s: tuple[float, float] = DEFAULT_ONSET_RANGE_S) -> range:
    """Frames an onset may fall on; leaves room after it for the violation to show."""
    lo = math.ceil(onset_range_s[0] * cfg.fps - 1e-9)
    hi = math.floor(onset_range_s[1] * cfg.fps + 1e-9)
    after = max(MIN_DIFF_FRAMES, round(0.5 * cfg.fps))
    if lo < 1 or lo > hi or hi + after >= cfg.n_frames:
        raise ValueError(
            f"onset range {onset_range_s} s needs frames 1 <= {lo} <= {hi} and {after} frames after it, "
            f"but a {cfg.seconds} s video at {cfg.fps} fps has {cfg.n_frames}"
        )
    return range(lo, hi + 1)


def type_config(cfg: PhysicsConfig, pair_type: str) -> PhysicsConfig:
    """The caller's config with what a type needs: no occluders for ``continuity`` (a jump must be
    seen), at least two balls for ``solidity``. ``permanence`` adds its occluder per scene."""
    if pair_type == "continuity":
        return replace(cfg, max_occluders=0)
    if pair_type == "solidity":
        return replace(cfg, min_balls=max(2, cfg.min_balls), max_balls=max(2, cfg.max_balls))
    return cfg


# --- dynamics -------------------------------------------------------------------------------


def _pair_index(n_balls: int) -> dict[tuple[int, int], int]:
    """Column of each (i, j) pair in ``integrate``'s touch array when no pair is skipped."""
    return {(int(i), int(j)): k for k, (i, j) in enumerate(zip(*np.triu_indices(n_balls, k=1)))}


def _free_flight(cfg: PhysicsConfig, velocity: np.ndarray) -> np.ndarray:
    """(T - 1, N) bool: ball touched nothing between frame f and f + 1 (only gravity acted)."""
    dv = np.diff(velocity, axis=0)
    return np.isclose(dv[..., 0], 0.0, atol=1e-9) & np.isclose(dv[..., 1], cfg.gravity / cfg.fps, atol=1e-9)


def _states(cfg: PhysicsConfig, position: np.ndarray, velocity: np.ndarray) -> States:
    return States(t=np.arange(len(position)) / cfg.fps, position=position, velocity=velocity)


# --- scene context and plans ----------------------------------------------------------------


@dataclass
class _Context:
    """One candidate scene with its possible world."""

    cfg: PhysicsConfig
    scene: Scene
    world: States
    touch: np.ndarray  # (T, pairs)
    window: range
    variant: int
    """Drawn once per pair from its seed, not per scene, so an edit that is harder to place (a size
    change more than a colour change) keeps its share instead of losing it to rejection."""


@dataclass
class _Plan:
    """Where and how to break the world; ``params`` go to the sidecar metadata (JSON)."""

    ball: int
    onset: int
    description: str
    params: dict = field(default_factory=dict)
    scene: Scene | None = None  # the scene of both videos when the plan changes it (permanence)
    new_position: np.ndarray | None = None  # continuity
    color: np.ndarray | None = None  # constancy
    radius_factor: float = 1.0  # constancy
    partner: int = -1  # solidity
    speed_factor: float = 1.0  # inertia


def _pixel_box(cfg: PhysicsConfig, occluder: np.ndarray) -> np.ndarray:
    """The occluder's drawn pixel rectangle (as ``render`` rounds it), back in box units."""
    return np.round(occluder * cfg.size) / cfg.size


def _fully_hidden(cfg: PhysicsConfig, position: np.ndarray, radius: float, occluder: np.ndarray) -> np.ndarray:
    """(T,) bool: every pixel the disc could tint lies under the occluder (1 px margin for the
    anti-aliased edge)."""
    x0, y0, x1, y1 = _pixel_box(cfg, occluder)
    m = radius + 1.0 / cfg.size
    x, y = position[:, 0], position[:, 1]
    return (x - m >= x0) & (x + m <= x1) & (y - m >= y0) & (y + m <= y1)


def _disc_clear(cfg: PhysicsConfig, position: np.ndarray, radius: float, occluders: np.ndarray) -> np.ndarray:
    """(T,) bool: the disc overlaps no occluder at all (it is entirely in view)."""
    m = radius + 1.0 / cfg.size
    x, y = position[:, 0, None], position[:, 1, None]
    boxes = _pixel_box(cfg, occluders).T  # (4, K)
    overlap = (x + m > boxes[0]) & (x - m < boxes[2]) & (y + m > boxes[1]) & (y - m < boxes[3])
    return ~overlap.any(-1)


def _plans_permanence(ctx: _Context, rng: np.random.Generator) -> Iterator[_Plan]:
    """Put an occluder on a ball's path at a random frame of the window (occluders do not touch
    the dynamics, so the world stays the same); keep it when the ball is seen going behind it
    and comes out again before the end."""
    cfg, scene, world = ctx.cfg, ctx.scene, ctx.world
    n_frames, n_balls = world.position.shape[:2]
    for _ in range(PLANS_PER_SCENE):
        b, f = int(rng.integers(n_balls)), int(rng.integers(ctx.window.start, ctx.window.stop))
        r, (x, y) = float(scene.radius[b]), world.position[f, b]
        m = r + 1.5 / cfg.size  # half the side the occluder must cover, rounding included
        w, h = rng.uniform(2 * m + 0.04, min(2 * m + 0.3, 0.6), size=2)
        x_lo, x_hi = max(0.0, x + m - w), min(x - m, 1.0 - w)
        y_lo, y_hi = max(0.0, y + m - h), min(y - m, 1.0 - h)
        if x_lo > x_hi or y_lo > y_hi:  # against a wall: no occluder inside the box hides it
            continue
        x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        occluder = np.array([x0, y0, x0 + w, y0 + h])
        color = rng.uniform(0.0, 0.35, size=3) + rng.uniform(0.0, 0.5)  # as sample_scene draws them
        hidden = _fully_hidden(cfg, world.position[:, b], r, occluder)
        if not hidden[f]:
            continue
        start, end = f, f
        while start > 0 and hidden[start - 1]:
            start -= 1
        while end < n_frames - 1 and hidden[end + 1]:
            end += 1
        occluders = np.concatenate([scene.occluders, occluder[None]])
        before = range(max(0, start - cfg.fps), start)
        if not before or not _disc_clear(cfg, world.position[before, b], r, occluders).any():
            continue  # never seen going behind it
        if end >= n_frames - 1 - MIN_DIFF_FRAMES:
            continue  # would not come out again in time
        onset = max(start, ctx.window.start)
        if _touches_others(ctx, b, range(onset, end + 1)):
            continue  # removing it would change another ball's path before it is missed
        plan_scene = replace(
            scene,
            occluders=occluders,
            occluder_color=np.concatenate([scene.occluder_color, color[None]]),
        )
        yield _Plan(
            ball=b, onset=onset, scene=plan_scene,
            description=f"ball {b} vanishes while hidden behind occluder {len(scene.occluders)} at frame {onset} "
                        f"and never re-emerges (possible: it re-emerges after frame {end})",
            params={"occluder": len(scene.occluders), "hidden_frames": [start, end], "variant": "vanish"},
        )  # fmt: skip


def _touches_others(ctx: _Context, ball: int, frames: range) -> bool:
    """Does ``ball`` touch another ball in the substeps after any of ``frames``?"""
    columns = [k for (i, j), k in _pair_index(len(ctx.scene.radius)).items() if ball in (i, j)]
    return bool(ctx.touch[frames.start : frames.stop][:, columns].any())


def _plans_continuity(ctx: _Context, rng: np.random.Generator) -> Iterator[_Plan]:
    """A jump of >= 4 radii to a free spot inside the box, velocity kept."""
    scene, world = ctx.scene, ctx.world
    n_balls = len(scene.radius)
    for _ in range(PLANS_PER_SCENE):
        b, f = int(rng.integers(n_balls)), int(rng.integers(ctx.window.start, ctx.window.stop))
        r, p = float(scene.radius[b]), world.position[f, b]
        others = [j for j in range(n_balls) if j != b]
        for _ in range(20):
            q = rng.uniform(r, 1.0 - r, size=2)
            gaps = [np.hypot(*(q - world.position[f, j])) - r - scene.radius[j] for j in others]
            if np.hypot(*(q - p)) >= 4 * r and all(g > 0.02 for g in gaps):
                yield _Plan(
                    ball=b, onset=f, new_position=q,
                    description=f"ball {b} jumps from ({p[0]:.3f}, {p[1]:.3f}) to ({q[0]:.3f}, {q[1]:.3f}) "
                                f"at frame {f}, velocity kept",
                    params={"from": p.round(4).tolist(), "to": q.round(4).tolist(),
                            "jump_radii": round(float(np.hypot(*(q - p)) / r), 2)},
                )  # fmt: skip
                break


def _rotate_hue(color: np.ndarray, turns: float) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*color)
    return np.array(colorsys.hsv_to_rgb((h + turns) % 1.0, s, v))


def _plans_constancy(ctx: _Context, rng: np.random.Generator) -> Iterator[_Plan]:
    """A hue rotation, or a size change whose first second shows no contact (the trajectory stays
    the possible one, so a contact at the old radius would look like a second violation)."""
    cfg, scene, world = ctx.cfg, ctx.scene, ctx.world
    n_frames, n_balls = world.position.shape[:2]
    in_view = visible(scene, world)
    free = _free_flight(cfg, world.velocity)
    for _ in range(PLANS_PER_SCENE):
        b, f = int(rng.integers(n_balls)), int(rng.integers(ctx.window.start, ctx.window.stop))
        if not in_view[f, b]:
            continue
        kind = ctx.variant % 4  # 0, 1: colour; 2: grow; 3: shrink
        if kind < 2:
            turns = float(rng.uniform(1 / 3, 2 / 3))
            yield _Plan(
                ball=b, onset=f, color=_rotate_hue(scene.color[b], turns),
                description=f"ball {b} changes colour (hue +{turns * 360:.0f} deg) at frame {f}",
                params={"change": "colour", "hue_turns": round(turns, 4)},
            )
            continue
        factor = 1.7 if kind == 2 else 0.55
        span = range(f, min(n_frames, f + cfg.fps))
        if not free[span.start : span.stop - 1, b].all():
            continue
        r = factor * scene.radius[b]
        p = world.position[span, b]
        inside = ((p >= r) & (p <= 1.0 - r)).all()
        gaps = [np.hypot(*(p - world.position[span, j]).T) - r - scene.radius[j] for j in range(n_balls) if j != b]
        if inside and all((g > 0.0).all() for g in gaps):
            yield _Plan(
                ball=b, onset=f, radius_factor=factor,
                description=f"ball {b} {'grows' if factor > 1 else 'shrinks'} x{factor} at frame {f}",
                params={"change": "size", "radius_factor": factor},
            )


def _plans_solidity(ctx: _Context, rng: np.random.Generator) -> Iterator[_Plan]:
    """Pairs whose contact starts right after a frame of the window, approaching fast enough for
    the pass-through to show; the onset is that last frame before they touch."""
    cfg, scene, world = ctx.cfg, ctx.scene, ctx.world
    lookback = max(1, cfg.fps // 4)
    candidates = []
    for (i, j), k in _pair_index(len(scene.radius)).items():
        for f in ctx.window:
            if ctx.touch[f, k] and not ctx.touch[max(0, f - lookback) : f, k].any():
                d = world.position[f, j] - world.position[f, i]
                approach = float((world.velocity[f, i] - world.velocity[f, j]) @ (d / np.hypot(*d)))
                if approach > 0.2:
                    candidates.append((i, j, f, approach))
    for c in rng.permutation(len(candidates))[:PLANS_PER_SCENE]:
        i, j, f, approach = candidates[c]
        yield _Plan(
            ball=i, partner=j, onset=f,
            description=f"balls {i} and {j} pass through each other instead of colliding after frame {f}",
            params={"balls": [i, j], "approach_speed": round(approach, 4)},
        )  # fmt: skip


def _plans_inertia(ctx: _Context, rng: np.random.Generator) -> Iterator[_Plan]:
    """A sudden speed change of a visible, freely flying ball (no contact a few frames around)."""
    cfg, scene, world = ctx.cfg, ctx.scene, ctx.world
    k = _quiet_frames(cfg)
    free = _free_flight(cfg, world.velocity)
    in_view = visible(scene, world)
    speed = np.hypot(world.velocity[..., 0], world.velocity[..., 1])
    candidates = [
        (b, f) for b in range(len(scene.radius)) for f in ctx.window
        if free[max(0, f - k) : f + k, b].all() and in_view[max(0, f - k) : f + k + 1, b].all() and speed[f, b] >= 0.3
    ]  # fmt: skip
    for c in rng.permutation(len(candidates))[:PLANS_PER_SCENE]:
        b, f = candidates[c]
        factor = (2.5, 0.3)[ctx.variant % 2]
        yield _Plan(
            ball=b, onset=f, speed_factor=factor,
            description=f"ball {b} speed x{factor} (direction kept) at frame {f} with no contact near it",
            params={"speed_factor": factor, "speed_before": round(float(speed[f, b]), 4)},
        )  # fmt: skip


def _quiet_frames(cfg: PhysicsConfig) -> int:
    """Frames on each side of an inertia onset with no contact (~0.2 s)."""
    return max(2, round(0.2 * cfg.fps))


PLANNERS = {
    "permanence": _plans_permanence,
    "continuity": _plans_continuity,
    "constancy": _plans_constancy,
    "solidity": _plans_solidity,
    "inertia": _plans_inertia,
}


# --- applying a plan ------------------------------------------------------------------------


@dataclass
class _Outcome:
    """The impossible video's world: states of all balls (NaN once removed) and the scene its
    frames from the onset on are drawn with."""

    states: States
    scene_after: Scene
    removed: int | None = None


def _resume(
    ctx: _Context, onset: int, radius: np.ndarray, pos: np.ndarray, vel: np.ndarray, skip: frozenset = frozenset()
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the frames from the onset to the end, starting from the (edited) onset state."""
    return integrate(ctx.cfg, radius, pos, vel, len(ctx.world.t) - onset, skip)[:2]


def _with_prefix(ctx: _Context, onset: int, position: np.ndarray, velocity: np.ndarray) -> States:
    w = ctx.world
    return _states(
        ctx.cfg, np.concatenate([w.position[:onset], position]), np.concatenate([w.velocity[:onset], velocity])
    )


def _apply(ctx: _Context, kind: str, plan: _Plan, noop: bool) -> _Outcome:
    """The impossible world: the possible one up to the onset, then the edit (an identity edit
    when ``noop``) and, where the dynamics change, a fresh simulation from the onset state."""
    scene = plan.scene or ctx.scene
    w, b, f = ctx.world, plan.ball, plan.onset
    pos, vel = w.position[f].copy(), w.velocity[f].copy()
    if kind == "constancy":  # appearance only: the trajectory is the possible one
        color, radius = scene.color.copy(), scene.radius.copy()
        if not noop:
            if plan.color is not None:
                color[b] = plan.color
            radius[b] *= plan.radius_factor
        return _Outcome(w, replace(scene, color=color, radius=radius))
    if kind == "permanence":
        keep = np.arange(len(scene.radius)) != b if not noop else np.ones(len(scene.radius), bool)
        p_kept, v_kept = _resume(ctx, f, scene.radius[keep], pos[keep], vel[keep])
        position = np.full((len(p_kept), len(keep), 2), np.nan)
        velocity = np.full_like(position, np.nan)
        position[:, keep], velocity[:, keep] = p_kept, v_kept
        after = replace(scene, radius=scene.radius[keep], color=scene.color[keep])
        return _Outcome(_with_prefix(ctx, f, position, velocity), after, removed=None if noop else b)
    skip: frozenset = frozenset()
    if kind == "continuity" and not noop:
        pos[b] = plan.new_position
    elif kind == "inertia":
        vel[b] *= 1.0 if noop else plan.speed_factor
    elif kind == "solidity" and not noop:
        skip = frozenset({(min(b, plan.partner), max(b, plan.partner))})
    position, velocity = _resume(ctx, f, scene.radius, pos, vel, skip)
    return _Outcome(_with_prefix(ctx, f, position, velocity), scene)


def _render_impossible(ctx: _Context, outcome: _Outcome, onset: int, possible: np.ndarray) -> np.ndarray:
    """The possible frames before the onset, then the outcome drawn from the onset on (the part
    drawn is only the suffix: ``render`` draws each frame independently)."""
    s = outcome.states
    position, velocity = s.position[onset:], s.velocity[onset:]
    if outcome.removed is not None:
        position, velocity = (np.delete(a, outcome.removed, axis=1) for a in (position, velocity))
    suffix = render(ctx.cfg, outcome.scene_after, States(t=s.t[onset:], position=position, velocity=velocity))
    return np.concatenate([possible[:onset], suffix])


def _diff_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) number of pixels that differ clearly between two videos."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) > DIFF_LEVEL).sum((1, 2))


def _first_diff(a: np.ndarray, b: np.ndarray) -> int | None:
    differs = (a != b).any((1, 2, 3))
    return int(np.argmax(differs)) if differs.any() else None


def _shows(
    ctx: _Context, kind: str, plan: _Plan, outcome: _Outcome, possible: np.ndarray, impossible: np.ndarray
) -> bool:
    """Is the violation well-posed and visible? Half a ball of pixels differs in enough frames,
    and an inertia change is not followed at once by a contact."""
    area = math.pi * (ctx.scene.radius[plan.ball] * ctx.cfg.size) ** 2
    if (_diff_pixels(possible, impossible)[plan.onset :] >= 0.5 * area).sum() < MIN_DIFF_FRAMES:
        return False
    if kind == "inertia":
        k, f = _quiet_frames(ctx.cfg), plan.onset
        return bool(_free_flight(ctx.cfg, outcome.states.velocity[f : f + k + 1])[:, plan.ball].all())
    if kind == "solidity":  # deep enough, soon enough, to be seen passing through, not a graze
        p = outcome.states.position[plan.onset : plan.onset + max(2, ctx.cfg.fps // 2)]
        gap = np.hypot(*(p[:, plan.ball] - p[:, plan.partner]).T)
        return bool(gap.min() < 0.5 * (ctx.scene.radius[plan.ball] + ctx.scene.radius[plan.partner]))
    return True


# --- sidecars -------------------------------------------------------------------------------


def _with_pair_meta(table: pa.Table, meta: dict) -> pa.Table:
    return table.replace_schema_metadata({**table.schema.metadata, PAIR_METADATA_KEY: json.dumps(meta).encode()})


def _impossible_table(cfg: PhysicsConfig, scene: Scene, outcome: _Outcome, plan: _Plan, scene_seed: int) -> pa.Table:
    """``state_table`` of the impossible world, with per-frame changes patched in: the radius of
    a resized ball, and a removed ball's rows (kept) set to NaN kinematics and not visible."""
    table = state_table(cfg, scene, outcome.states, scene_seed)
    frame, ball = table.column("frame").to_numpy(), table.column("ball").to_numpy()
    changed = (frame >= plan.onset) & (ball == plan.ball)
    if outcome.removed is not None:  # visible() calls NaN visible, so _absent marks the rows
        return _absent(table, outcome.removed, np.arange(len(outcome.states.t)) >= plan.onset)
    radius = table.column("radius").to_numpy().copy()
    radius[changed] = outcome.scene_after.radius[plan.ball]  # differs from the scene's for a size change
    return table.set_column(table.schema.get_field_index("radius"), "radius", pa.array(radius, pa.float32()))


# --- one pair -------------------------------------------------------------------------------


def make_pair(
    cfg: PhysicsConfig,
    pair_type: str,
    seed: int,
    *,
    control_path: str | None = None,
    onset_range_s: tuple[float, float] = DEFAULT_ONSET_RANGE_S,
    pair_id: str = "",
    appear: bool = False,
) -> Pair:
    """One pair, a pure function of its arguments. A control goes through ``control_path``'s code
    (default: ``VIOLATIONS[seed % 5]``; ``synthesize_pairs`` cycles by pair index) with a no-op
    edit, on a scene where that violation would have been valid. ``appear`` makes a permanence
    pair the *appear* variant (``synthesize_pairs``: odd pair indices). ``pair_id`` only goes into
    the sidecars' metadata. Raises RuntimeError when no scene fits in ``MAX_ATTEMPTS``."""
    if pair_type not in PAIR_TYPES:
        raise ValueError(f"unknown pair type {pair_type!r}; expected one of {PAIR_TYPES}")
    noop = pair_type == "control"
    kind = (control_path or VIOLATIONS[seed % len(VIOLATIONS)]) if noop else pair_type
    if kind not in VIOLATIONS:
        raise ValueError(f"control_path must be one of {VIOLATIONS}, got {kind!r}")
    if appear and pair_type != "permanence":
        raise ValueError(f"appear is a variant of permanence pairs, not of {pair_type}")
    world_cfg = type_config(cfg, kind)
    window = onset_window(world_cfg, onset_range_s)
    variant = int(np.random.default_rng([seed, _SEED_TAG]).integers(1 << 20))
    for attempt in range(MAX_ATTEMPTS):
        scene_seed = video_seed(seed, attempt)
        rng = np.random.default_rng(scene_seed)
        scene = sample_scene(world_cfg, rng)
        position, velocity, touch = integrate(world_cfg, scene.radius, scene.position, scene.velocity, world_cfg.n_frames)
        ctx = _Context(world_cfg, scene, _states(world_cfg, position, velocity), touch, window, variant)
        scene_frames = None  # the possible video, drawn once per scene unless a plan changes the scene
        for plan in PLANNERS[kind](ctx, rng):
            plan_ctx = replace(ctx, scene=plan.scene) if plan.scene is not None else ctx
            outcome = _apply(plan_ctx, kind, plan, noop=False)
            if plan.scene is not None:
                possible = render(world_cfg, plan.scene, ctx.world)
            else:
                scene_frames = render(world_cfg, scene, ctx.world) if scene_frames is None else scene_frames
                possible = scene_frames
            impossible = _render_impossible(plan_ctx, outcome, plan.onset, possible)
            if not _shows(plan_ctx, kind, plan, outcome, possible, impossible):
                continue
            if kind == "permanence" and _touches_others(ctx, plan.ball, range(len(ctx.world.t))):
                continue  # both variants need a ball whose absence changes no other ball's path
            if appear:
                return _appear_pair(plan_ctx, seed, scene_seed, plan, possible, onset_range_s, pair_id)
            if noop:
                outcome = _apply(plan_ctx, kind, plan, noop=True)
                impossible = _render_impossible(plan_ctx, outcome, plan.onset, possible)
            return _build_pair(plan_ctx, pair_type, kind, seed, scene_seed, plan, outcome, possible, impossible,
                               onset_range_s, pair_id)  # fmt: skip
    raise RuntimeError(f"no {pair_type} scene found in {MAX_ATTEMPTS} attempts (seed {seed}, config {cfg})")


def _appear_pair(ctx: _Context, seed: int, scene_seed: int, plan: _Plan, with_ball: np.ndarray,
                 onset_range_s: tuple[float, float], pair_id: str) -> Pair:
    """The *appear* variant of an accepted permanence plan. The ball touches no other ball, so the
    world without it is the same world minus its column: the possible video never draws it, the
    impossible one draws it from the onset on (hidden then, emerging later)."""
    b, onset, w = plan.ball, plan.onset, ctx.world
    keep = np.arange(len(ctx.scene.radius)) != b
    without = render(ctx.cfg, replace(ctx.scene, radius=ctx.scene.radius[keep], color=ctx.scene.color[keep]),
                     States(t=w.t, position=w.position[:, keep], velocity=w.velocity[:, keep]))
    impossible = np.concatenate([without[:onset], with_ball[onset:]])
    full = state_table(ctx.cfg, ctx.scene, w, scene_seed)
    before_onset = np.arange(len(w.t)) < onset
    appear_plan = replace(
        plan, params={**plan.params, "variant": "appear"},
        description=f"ball {b} is not there until frame {onset}, then emerges from behind occluder "
                    f"{plan.params['occluder']} after frame {plan.params['hidden_frames'][1]} though nothing went "
                    f"behind it (possible: it never appears)",
    )  # fmt: skip
    return _build_pair(ctx, "permanence", "permanence", seed, scene_seed, appear_plan, None, without, impossible,
                       onset_range_s, pair_id, tables=(_absent(full, b, np.ones_like(before_onset)), _absent(full, b, before_onset)))


def _absent(table: pa.Table, ball: int, frames: np.ndarray) -> pa.Table:
    """``table`` with ``ball`` not in the world at ``frames`` (bool per frame): NaN kinematics, not visible."""
    rows = (table.column("ball").to_numpy() == ball) & frames[table.column("frame").to_numpy()]
    for name in ("x", "y", "vx", "vy"):
        values = table.column(name).to_numpy().copy()
        values[rows] = np.nan
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.float32()))
    seen = table.column("visible").to_numpy(zero_copy_only=False).copy()
    seen[rows] = False
    return table.set_column(table.schema.get_field_index("visible"), "visible", pa.array(seen, pa.bool_()))


def _build_pair(
    ctx: _Context, pair_type: str, kind: str, seed: int, scene_seed: int, plan: _Plan, outcome: _Outcome | None,
    possible: np.ndarray, impossible: np.ndarray, onset_range_s: tuple[float, float], pair_id: str,
    tables: tuple[pa.Table, pa.Table] | None = None,
) -> Pair:  # fmt: skip
    """``tables``: (possible, impossible) sidecars when the outcome does not describe them."""
    noop = pair_type == "control"
    description = plan.description
    if noop:
        description = f"control via the {kind} path with a no-op edit (would be: {plan.description})"
    meta = {
        "version": 1, "pair_id": pair_id, "type": pair_type, "code_path": kind, "onset_frame": plan.onset,
        "onset_s": plan.onset / ctx.cfg.fps, "first_diff_frame": _first_diff(possible, impossible),
        "ball": plan.ball, "description": description, "params": plan.params, "pair_seed": seed,
        "scene_seed": scene_seed, "onset_range_s": list(onset_range_s),
        "removed_ball_rows": "kept; x, y, vx, vy NaN and visible false where the ball is not in the world",
    }  # fmt: skip
    if tables is None:
        tables = (state_table(ctx.cfg, ctx.scene, ctx.world, scene_seed),
                  _impossible_table(ctx.cfg, ctx.scene, outcome, plan, scene_seed))
    possible_table, impossible_table = tables
    if not noop and plan.color is not None:
        meta["color_after"] = plan.color.round(4).tolist()
    return Pair(
        pair_type=pair_type, seed=seed, scene_seed=scene_seed, code_path=kind, cfg=ctx.cfg,
        onset_frame=plan.onset, first_diff_frame=meta["first_diff_frame"], ball=plan.ball,
        description=description, params=plan.params, possible=possible, impossible=impossible,
        possible_table=_with_pair_meta(possible_table, meta | {"role": "possible"}),
        impossible_table=_with_pair_meta(impossible_table, meta | {"role": "impossible"}),
    )  # fmt: skip


# --- writing a set of pairs ------------------------------------------------------------------


def indexed_pair_id(pair_type: str, index: int) -> str:
    """``pair_id`` of pair ``index`` of ``pair_type`` (pairs.parquet and the sidecars' metadata)."""
    return f"{pair_type}/{index:05d}"


def indexed_pair(
    cfg: PhysicsConfig, seed: int, pair_type: str, index: int,
    onset_range_s: tuple[float, float] = DEFAULT_ONSET_RANGE_S,
) -> Pair:  # fmt: skip
    """Pair ``index`` of ``pair_type`` in a run of ``seed``, as ``synthesize_pairs`` makes it:
    controls cycle through the violations' code paths and permanence pairs alternate *vanish*
    (even index) and *appear* (odd) by index."""
    control_path = VIOLATIONS[index % len(VIOLATIONS)] if pair_type == "control" else None
    return make_pair(cfg, pair_type, pair_seed(seed, pair_type, index), control_path=control_path,
                     onset_range_s=onset_range_s, pair_id=indexed_pair_id(pair_type, index),
                     appear=pair_type == "permanence" and index % 2 == 1)  # fmt: skip


def _write_pair(
    cfg: PhysicsConfig, out_uri: str, seed: int, pair_type: str, index: int,
    onset_range_s: tuple[float, float], settings,
) -> dict:  # fmt: skip
    """Make, encode and write one pair; returns its pairs.parquet row."""
    pair = indexed_pair(cfg, seed, pair_type, index, onset_range_s)
    pair_id = indexed_pair_id(pair_type, index)
    stem = storage.join_uri(out_uri, pair_type, f"pair_{index:05d}")
    uris = {}
    tables = (pair.possible_table, pair.impossible_table)
    for role, mp4, table in zip(("possible", "impossible"), pair.encode(), tables):
        uris[role] = f"{stem}.{role}.mp4"
        storage.put_bytes(uris[role], mp4, settings)
        storage.put_table(f"{stem}.{role}.state.parquet", table, settings)
    return {
        "pair_id": pair_id, "type": pair_type, "onset_frame": pair.onset_frame, "onset_s": pair.onset_s,
        "possible_uri": uris["possible"], "impossible_uri": uris["impossible"], "seed": pair.seed,
        "first_diff_frame": pair.first_diff_frame, "ball": pair.ball, "description": pair.description,
    }  # fmt: skip


def synthesize_pairs(
    n_pairs: int,
    out_uri: str,
    seed: int = 0,
    cfg: PhysicsConfig | None = None,
    types: Sequence[str] = PAIR_TYPES,
    progress: bool = True,
    workers: int = 1,
    onset_range_s: tuple[float, float] = DEFAULT_ONSET_RANGE_S,
) -> pa.Table:
    """Write ``n_pairs`` pairs of each type under ``out_uri`` and ``pairs.parquet`` (written last,
    so its presence means the set is complete); returns that table. ``workers > 1`` uses a spawn
    process pool as ``synth_physics.synthesize`` does (callers need the ``__main__`` guard)."""
    cfg = cfg or PhysicsConfig()
    types = tuple(types)
    unknown = [t for t in types if t not in PAIR_TYPES]
    if unknown or not types:
        raise ValueError(f"unknown or no pair types {unknown or list(types)}; expected some of {PAIR_TYPES}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    for t in types:
        onset_window(type_config(cfg, t), onset_range_s)  # a bad range fails before any work
    settings = storage.S3Settings.from_env() if storage.is_s3(out_uri) else None
    if settings is not None:
        storage.ensure_bucket(out_uri, settings)
    jobs = [(t, i) for t in types for i in range(n_pairs)]
    rows: list[dict] = [{}] * len(jobs)
    with tqdm(total=len(jobs), desc="physics pairs", unit="pair", disable=not progress) as bar:
        if workers <= 1:
            for k, (t, i) in enumerate(jobs):
                rows[k] = _write_pair(cfg, out_uri, seed, t, i, onset_range_s, settings)
                bar.update()
        else:
            # spawn: a forked child could inherit locks held by threads of the parent (Ray, boto3).
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {
                    pool.submit(_write_pair, cfg, out_uri, seed, t, i, onset_range_s, settings): k
                    for k, (t, i) in enumerate(jobs)
                }
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update()
    meta = {"version": 1, "generator": GENERATOR_VERSION, "seed": seed, "config": asdict(cfg),
            "onset_range_s": list(onset_range_s), "types": list(types), "n_pairs": n_pairs}  # fmt: skip
    schema = PAIRS_SCHEMA.with_metadata({PAIRS_METADATA_KEY: json.dumps(meta).encode()})
    table = pa.Table.from_pylist(rows, schema=schema)
    storage.put_table(storage.join_uri(out_uri, PAIRS_FILE), table, settings)
    return table


def read_pairs(uri: str, settings: storage.S3Settings | None = None) -> pa.Table:
    """pairs.parquet of a folder written by ``synthesize_pairs`` (or the file's own URI);
    raises ValueError when a required column is missing or has the wrong type."""
    if not uri.endswith(".parquet"):
        uri = storage.join_uri(uri, PAIRS_FILE)
    table = pq.read_table(pa.BufferReader(storage.get_bytes(uri, settings)))
    for name in REQUIRED_COLUMNS:
        expected = PAIRS_SCHEMA.field(name).type
        if name not in table.schema.names:
            raise ValueError(f"{uri}: missing column {name!r} (has {table.schema.names})")
        if table.schema.field(name).type != expected:
            raise ValueError(f"{uri}: column {name!r} is {table.schema.field(name).type}, expected {expected}")
    return table
