import colorsys
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.synth_physics import (
    METADATA_KEY,
    NAMED_BALL_HSV,
    OTHER_HUES,
    PhysicsConfig,
    Scene,
    make_video,
    render,
    sample_scene,
    simulate,
    state_table,
    synthesize,
    video_seed,
)
from pipelines.video import probe

SMALL = PhysicsConfig(size=64, seconds=2.0)


def one_ball(position, velocity, radius=0.05, occluders=()) -> Scene:
    k = len(occluders)
    return Scene(
        radius=np.array([radius]),
        color=np.array([[1.0, 0.0, 0.0]]),
        position=np.array([position], dtype=float),
        velocity=np.array([velocity], dtype=float),
        occluders=np.array(occluders, dtype=float).reshape(k, 4),
        occluder_color=np.full((k, 3), 0.2),
        background=np.zeros((64, 64, 3), dtype=np.float32),
    )


def test_same_seed_same_video_different_seed_differs():
    mp4_a, table_a = make_video(SMALL, seed=7)
    mp4_b, table_b = make_video(SMALL, seed=7)
    mp4_c, table_c = make_video(SMALL, seed=8)
    assert mp4_a == mp4_b and table_a.equals(table_b)
    assert mp4_a != mp4_c and not table_a.equals(table_c)


def test_video_seed_depends_on_seed_and_index():
    assert video_seed(0, 1) == video_seed(0, 1)
    assert len({video_seed(0, 0), video_seed(0, 1), video_seed(1, 0)}) == 3
    # no two videos of a run, nor of nearby runs, share a seed (seed + index, seed ^ index or
    # seed * 100 + index would), and each is a plain int numpy's generators accept
    seeds = [video_seed(s, i) for s in range(8) for i in range(512)]
    assert len(set(seeds)) == len(seeds)
    assert all(type(v) is int and 0 <= v < 2**64 for v in seeds)


@pytest.mark.parametrize("seed", range(12))
def test_scene_sampling_and_balls_stay_in_the_box(seed):
    scene = sample_scene(SMALL, np.random.default_rng(seed))
    n = len(scene.radius)
    assert SMALL.min_balls <= n <= SMALL.max_balls and len(scene.occluders) <= SMALL.max_occluders
    gaps = np.hypot(*(scene.position[:, None] - scene.position[None]).transpose(2, 0, 1))
    assert (gaps + np.eye(n) * 9 > scene.radius[:, None] + scene.radius[None]).all()  # no overlap at t=0
    states = simulate(SMALL, scene)
    r = scene.radius[None, :, None]
    assert (states.position - r >= -1e-9).all() and (states.position + r <= 1 + 1e-9).all()


def test_ball_zero_is_the_only_red_ball():
    # probes name ball 0 (`physics_labels`): it must be told apart by sight in every video
    lo, hi = OTHER_HUES
    others = []
    for seed in range(40):
        color = sample_scene(SMALL, np.random.default_rng(seed)).color
        assert np.allclose(colorsys.rgb_to_hsv(*color[0]), NAMED_BALL_HSV)
        others += [colorsys.rgb_to_hsv(*c)[0] for c in color[1:]]
    assert len(others) > 20 and all(lo - 1e-9 <= h <= hi + 1e-9 for h in others)
    assert max(others) - min(others) > 0.5  # still spread over the other hues


def test_gravity_accelerates_between_bounces():
    cfg = PhysicsConfig(seconds=4.0)
    states = simulate(cfg, one_ball((0.3, 0.2), (0.4, 0.0)))
    vy = states.velocity[:, 0, 1]
    dv = np.diff(vy)
    free = np.isclose(dv, cfg.gravity / cfg.fps)
    floor_bounce = (vy[:-1] > 0) & (vy[1:] < 0)
    assert (free | floor_bounce).all()
    assert floor_bounce.sum() >= 1 and free.mean() > 0.8


def test_wall_bounce_flips_velocity_and_keeps_speed():
    cfg = PhysicsConfig(gravity=0.0, seconds=1.0)
    states = simulate(cfg, one_ball((0.8, 0.5), (1.0, 0.3)))
    vx = states.velocity[:, 0, 0]
    assert vx[0] == 1.0 and vx[-1] == -1.0  # hit the right wall once
    speed = np.hypot(*states.velocity[:, 0].T)
    np.testing.assert_allclose(speed, speed[0])


def test_floor_bounce_keeps_energy_roughly():
    cfg = PhysicsConfig()
    states = simulate(cfg, one_ball((0.5, 0.1), (0.0, 0.0)))
    vy, y = states.velocity[:, 0, 1], states.position[:, 0, 1]
    energy = 0.5 * vy**2 - cfg.gravity * y  # per unit mass; y points down
    np.testing.assert_allclose(energy, energy[0], atol=0.02)
    k = int(np.argmax(vy < 0))  # first frame after the floor bounce
    assert vy[k - 1] > 0 and abs(abs(vy[k]) - vy[k - 1]) < 2 * cfg.gravity / cfg.fps


def test_ball_collision_conserves_momentum_and_energy():
    cfg = PhysicsConfig(gravity=0.0, seconds=0.5)  # they meet at ~0.3 s and reach no wall
    scene = one_ball((0.3, 0.5), (0.5, 0.0), radius=0.1)
    scene.radius = np.array([0.1, 0.06])
    scene.color = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    scene.position = np.array([[0.3, 0.5], [0.7, 0.52]])
    scene.velocity = np.array([[0.5, 0.0], [-0.3, 0.0]])
    states = simulate(cfg, scene)
    mass = scene.radius**2
    momentum = (states.velocity * mass[None, :, None]).sum(1)
    energy = (0.5 * mass * (states.velocity**2).sum(-1)).sum(1)
    assert states.velocity[-1, 0, 0] < 0.5  # they did collide
    np.testing.assert_allclose(momentum, np.broadcast_to(momentum[0], momentum.shape), atol=1e-12)
    np.testing.assert_allclose(energy, energy[0], rtol=1e-9)


def test_sidecar_columns_dtypes_and_metadata():
    mp4, table = make_video(SMALL, seed=3)
    assert table.schema.names == ["frame", "t", "ball", "x", "y", "vx", "vy", "radius", "visible"]
    types = dict(zip(table.schema.names, table.schema.types))
    assert types["frame"] == pa.int32() and types["ball"] == pa.int32() and types["visible"] == pa.bool_()
    assert all(types[c] == pa.float32() for c in ["t", "x", "y", "vx", "vy", "radius"])
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    n_balls = len(meta["ball_colors"])
    assert table.num_rows == SMALL.n_frames * n_balls
    assert meta["seed"] == 3 and meta["config"]["fps"] == SMALL.fps
    info = probe(mp4)
    assert (info["width"], info["n_frames"], info["fps"]) == (64, SMALL.n_frames, SMALL.fps)


def test_occluded_ball_is_not_visible_and_drawn_behind():
    cfg = PhysicsConfig(size=64, gravity=0.0, seconds=0.5)
    hidden = one_ball((0.5, 0.5), (0.0, 0.0), occluders=[(0.35, 0.35, 0.65, 0.65)])
    shown = one_ball((0.15, 0.15), (0.0, 0.0), occluders=[(0.35, 0.35, 0.65, 0.65)])
    for scene, expect_visible in [(hidden, False), (shown, True)]:
        states = simulate(cfg, scene)
        table = state_table(cfg, scene, states)
        assert table.column("visible").to_pylist() == [expect_visible] * cfg.n_frames
        frames = render(cfg, scene, states)
        cx, cy = (scene.position[0] * cfg.size).astype(int)
        expected = [51, 51, 51] if not expect_visible else [255, 0, 0]  # occluder grey / red ball
        assert frames[:, cy, cx].tolist() == [expected] * cfg.n_frames


def test_synthesize_writes_videos_and_sidecars(tmp_path):
    uris = synthesize(3, str(tmp_path / "out"), seed=5, cfg=SMALL, progress=False)
    assert [u.rsplit("/", 1)[1] for u in uris] == [f"physics_{i:06d}.mp4" for i in range(3)]
    again = synthesize(3, str(tmp_path / "again"), seed=5, cfg=SMALL, progress=False, workers=2)
    for i, (a, b) in enumerate(zip(uris, again)):
        assert open(a, "rb").read() == open(b, "rb").read()  # same bytes in-process and in a pool
        table = pq.read_table(str(tmp_path / "out" / f"physics_{i:06d}.state.parquet"))
        assert table.equals(make_video(SMALL, video_seed(5, i))[1])
