import colorsys
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.physics_pairs import (
    MIN_DIFF_FRAMES, PAIR_METADATA_KEY, PAIR_TYPES, VIOLATIONS, _diff_pixels, make_pair, onset_window,
    pair_seed, read_pairs, synthesize_pairs,
)  # fmt: skip
from pipelines.synth_physics import METADATA_KEY, PhysicsConfig, integrate, sample_scene, simulate
from pipelines.video import decode_video

SMALL = PhysicsConfig(size=64)  # pairs need the full 4 s: onsets fall at 1.25-2.25 s
PER_TYPE = 3


def pairs_of(pair_type: str, n: int = PER_TYPE, seed: int = 0) -> list:
    """Pairs 0..n-1 of a run, as ``synthesize_pairs`` makes them."""
    path = (lambda i: VIOLATIONS[i % 5]) if pair_type == "control" else (lambda i: None)
    return [make_pair(SMALL, pair_type, pair_seed(seed, pair_type, i), control_path=path(i),
                      appear=pair_type == "permanence" and i % 2 == 1) for i in range(n)]


@pytest.fixture(scope="module")
def pairs() -> dict:
    return {t: pairs_of(t) for t in PAIR_TYPES}


def column(table: pa.Table, name: str, ball: int) -> np.ndarray:
    """One ball's values of a sidecar column, in frame order."""
    rows = table.filter(pc.equal(table.column("ball"), ball))
    return rows.column(name).to_numpy(zero_copy_only=False)


def position(table: pa.Table, ball: int) -> np.ndarray:
    return np.stack([column(table, "x", ball), column(table, "y", ball)], axis=1)


@pytest.mark.parametrize("pair_type", PAIR_TYPES)
def test_identical_before_onset_different_after(pairs, pair_type):
    window = onset_window(SMALL)
    for pair in pairs[pair_type]:
        onset = pair.onset_frame
        assert onset in window and 1.25 <= pair.onset_s <= 2.25
        assert pair.possible.shape == pair.impossible.shape == (SMALL.n_frames, 64, 64, 3)
        assert (pair.possible[:onset] == pair.impossible[:onset]).all()
        if pair_type == "control":
            assert (pair.possible == pair.impossible).all() and pair.first_diff_frame is None
            assert pair.possible_table.equals(pair.impossible_table)  # metadata differs, data must not
            continue
        assert pair.first_diff_frame >= onset
        ball_px = np.pi * (column(pair.possible_table, "radius", pair.ball)[0] * SMALL.size) ** 2
        big = _diff_pixels(pair.possible, pair.impossible)[onset:] >= 0.5 * ball_px
        assert big.sum() >= MIN_DIFF_FRAMES, pair.description


def test_same_seed_same_pair_and_seeds_are_order_free():
    a, b = make_pair(SMALL, "solidity", 123), make_pair(SMALL, "solidity", 123)
    assert (a.possible == b.possible).all() and (a.impossible == b.impossible).all()
    assert a.possible_table.equals(b.possible_table) and a.impossible_table.equals(b.impossible_table)
    assert a.encode() == b.encode()
    assert not (make_pair(SMALL, "solidity", 124).possible == a.possible).all()
    seeds = [pair_seed(s, t, i) for s in range(3) for t in PAIR_TYPES for i in range(50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)


def test_integration_resumes_bit_for_bit():
    """Controls rely on re-simulating from a frame reproducing the possible world exactly."""
    for seed in range(4):
        scene = sample_scene(SMALL, np.random.default_rng(seed))
        states = simulate(SMALL, scene)
        position, velocity, _ = integrate(SMALL, scene.radius, scene.position, scene.velocity, SMALL.n_frames)
        assert (position == states.position).all() and (velocity == states.velocity).all()
        resumed, _, _ = integrate(SMALL, scene.radius, position[20], velocity[20], SMALL.n_frames - 20)
        assert (resumed == position[20:]).all()


def test_sidecar_metadata(pairs):
    for pair_type in PAIR_TYPES:
        pair = pairs[pair_type][0]
        for role, table in (("possible", pair.possible_table), ("impossible", pair.impossible_table)):
            meta = json.loads(table.schema.metadata[PAIR_METADATA_KEY])
            assert (meta["type"], meta["role"], meta["onset_frame"], meta["ball"]) == (
                pair_type, role, pair.onset_frame, pair.ball)
            assert meta["description"] == pair.description and meta["pair_seed"] == pair.seed
            assert json.loads(table.schema.metadata[METADATA_KEY])["seed"] == pair.scene_seed


def test_permanence_sidecar_and_hidden_onset(pairs):
    for pair in pairs["permanence"]:
        b, onset = pair.ball, pair.onset_frame
        assert (pair.possible[onset] == pair.impossible[onset]).all()  # removed or added while fully hidden
        seen = column(pair.impossible_table, "visible", b)
        x = column(pair.impossible_table, "x", b)
        if pair.params["variant"] == "vanish":
            assert not seen[onset:].any() and np.isnan(x[onset:]).all() and not np.isnan(x[:onset]).any()
            assert column(pair.possible_table, "visible", b)[onset:].any()  # it re-emerges there
        else:  # appear: not in the world before the onset; never in the possible one
            assert not seen[:onset].any() and np.isnan(x[:onset]).all() and seen[onset:].any()
            assert np.isnan(column(pair.possible_table, "x", b)).all()
        assert len(json.loads(pair.possible_table.schema.metadata[METADATA_KEY])["occluders"]) >= 1
    assert [p.params["variant"] for p in pairs["permanence"]] == ["vanish", "appear", "vanish"]


def test_permanence_variants_form_intphys_quadruplets():
    """Vanish and appear from one seed are IntPhys's four movies: the ball seen before the onset
    or not, seen after it or not. The two possible videos and the two impossible ones have the
    same frames after the onset, swapped, so a scorer that only reacts to change cannot prefer
    the impossible video of both pairs."""
    seed = pair_seed(0, "permanence", 0)
    vanish, appear = make_pair(SMALL, "permanence", seed), make_pair(SMALL, "permanence", seed, appear=True)
    onset = vanish.onset_frame
    assert appear.onset_frame == onset and appear.ball == vanish.ball
    assert (appear.impossible[onset:] == vanish.possible[onset:]).all()  # the ball comes out
    assert (appear.possible[onset:] == vanish.impossible[onset:]).all()  # nothing comes out
    assert (appear.possible[:onset] == appear.impossible[:onset]).all()
    assert not (appear.possible[:onset] == vanish.possible[:onset]).all()  # the ball is seen going in
    with pytest.raises(ValueError, match="variant of permanence"):
        make_pair(SMALL, "continuity", seed, appear=True)


def test_continuity_sidecar_shows_the_jump(pairs):
    for pair in pairs["continuity"]:
        b, onset = pair.ball, pair.onset_frame
        before, after = position(pair.possible_table, b), position(pair.impossible_table, b)
        radius = column(pair.possible_table, "radius", b)[0]
        np.testing.assert_allclose(after[onset], pair.params["to"], atol=1e-4)
        assert np.hypot(*(after[onset] - before[onset])) >= 4 * radius - 1e-4
        assert (after[:onset] == before[:onset]).all()
        step = np.hypot(*np.diff(after, axis=0).T)
        assert step[onset - 1] > 3 * step[onset - 5 : onset - 1].max() + 1e-6  # a jump, not a motion
        vx = column(pair.possible_table, "vx", b), column(pair.impossible_table, "vx", b)
        assert vx[0][onset] == vx[1][onset]


def test_constancy_sidecar_changes_radius_or_colour_only():
    kinds = set()
    for seed in range(12):  # enough pairs to see both changes
        pair = make_pair(SMALL, "constancy", pair_seed(7, "constancy", seed))
        b, onset = pair.ball, pair.onset_frame
        np.testing.assert_array_equal(position(pair.possible_table, b), position(pair.impossible_table, b))
        r0, r1 = column(pair.possible_table, "radius", b), column(pair.impossible_table, "radius", b)
        kinds.add(pair.params["change"])
        if pair.params["change"] == "size":
            np.testing.assert_allclose(r1[onset:] / r0[onset:], pair.params["radius_factor"], rtol=1e-6)
            assert pair.params["radius_factor"] in (1.7, 0.55) and (r1[:onset] == r0[:onset]).all()
        else:
            assert (r0 == r1).all()
            before = json.loads(pair.possible_table.schema.metadata[METADATA_KEY])["ball_colors"][b]
            after = json.loads(pair.impossible_table.schema.metadata[PAIR_METADATA_KEY])["color_after"]
            turn = abs(colorsys.rgb_to_hsv(*before)[0] - colorsys.rgb_to_hsv(*after)[0])
            assert min(turn, 1 - turn) >= 1 / 3 - 1e-3  # >= 120 degrees round the hue circle
    assert kinds == {"size", "colour"}


def test_solidity_balls_overlap_instead_of_bouncing(pairs):
    for pair in pairs["solidity"]:
        i, j = pair.params["balls"]
        reach = column(pair.possible_table, "radius", i)[0] + column(pair.possible_table, "radius", j)[0]
        gap = {role: np.hypot(*(position(t, i) - position(t, j)).T) - reach
               for role, t in (("possible", pair.possible_table), ("impossible", pair.impossible_table))}  # fmt: skip
        after = slice(pair.onset_frame, pair.onset_frame + SMALL.fps // 2)
        assert gap["possible"][after].min() > -0.02  # they bounce (a substep's penetration at most)
        assert gap["impossible"][after].min() < -0.5 * reach  # they pass through each other


def test_inertia_sidecar_scales_the_speed(pairs):
    for pair in pairs["inertia"]:
        b, onset = pair.ball, pair.onset_frame
        speed = [np.hypot(column(t, "vx", b), column(t, "vy", b)) for t in (pair.possible_table, pair.impossible_table)]
        np.testing.assert_allclose(speed[1][onset] / speed[0][onset], pair.params["speed_factor"], rtol=1e-5)
        assert pair.params["speed_factor"] in (2.5, 0.3) and (speed[0][:onset] == speed[1][:onset]).all()


def test_controls_of_every_path_are_identical_videos():
    for i, path in enumerate(VIOLATIONS):
        pair = make_pair(SMALL, "control", pair_seed(3, "control", i), control_path=path)
        assert pair.code_path == path and (pair.possible == pair.impossible).all()
        possible, impossible = pair.encode()
        assert possible == impossible


def test_decoded_videos_match_before_onset():
    """The pairs' causal encoding keeps the decoded frames identical up to the onset."""
    for pair_type in ("continuity", "inertia", "solidity"):
        for pair in pairs_of(pair_type, 2, seed=5):
            possible, impossible = (decode_video(mp4, SMALL.fps, SMALL.size) for mp4 in pair.encode())
            assert possible.shape == (SMALL.n_frames, 64, 64, 3)
            assert (possible[: pair.onset_frame] == impossible[: pair.onset_frame]).all()
            assert not (possible[pair.onset_frame :] == impossible[pair.onset_frame :]).all()


def test_onset_range_is_a_parameter_and_must_fit_the_video():
    pair = make_pair(SMALL, "continuity", 1, onset_range_s=(2.5, 3.0))
    assert 40 <= pair.onset_frame <= 48
    with pytest.raises(ValueError, match="onset range"):
        onset_window(PhysicsConfig(size=64, seconds=2.0))
    with pytest.raises(ValueError, match="unknown pair type"):
        make_pair(SMALL, "levitation", 0)


def test_synthesize_pairs_writes_files_and_index(tmp_path):
    out = tmp_path / "pairs"
    table = synthesize_pairs(2, str(out), seed=4, cfg=SMALL, progress=False)
    assert table.num_rows == 2 * len(PAIR_TYPES)
    assert read_pairs(str(out)).equals(table) and read_pairs(str(out / "pairs.parquet")).equals(table)
    rows = table.to_pylist()
    assert [r["pair_id"] for r in rows[:3]] == ["permanence/00000", "permanence/00001", "continuity/00000"]
    for row in rows:
        pair_type, index = row["pair_id"].split("/")
        stem = out / pair_type / f"pair_{index}"
        assert row["type"] == pair_type and row["seed"] == pair_seed(4, pair_type, int(index))
        assert row["possible_uri"] == f"{stem}.possible.mp4" and row["impossible_uri"] == f"{stem}.impossible.mp4"
        assert row["onset_s"] == row["onset_frame"] / SMALL.fps
        for role in ("possible", "impossible"):
            sidecar = pq.read_table(f"{stem}.{role}.state.parquet")
            meta = json.loads(sidecar.schema.metadata[PAIR_METADATA_KEY])
            assert (meta["pair_id"], meta["role"], meta["onset_frame"]) == (row["pair_id"], role, row["onset_frame"])
    frames = decode_video(Path(rows[0]["impossible_uri"]).read_bytes(), SMALL.fps, SMALL.size)
    assert frames.shape == (SMALL.n_frames, 64, 64, 3)
    # pair i does not depend on how many pairs (or which types) a run makes, nor on the process
    again = synthesize_pairs(1, str(tmp_path / "again"), seed=4, cfg=SMALL, types=["inertia"], progress=False,
                             workers=2)  # fmt: skip
    first = table.filter(pc.equal(table.column("pair_id"), "inertia/00000")).to_pylist()[0]
    for key in ("possible_uri", "impossible_uri"):
        assert Path(again.column(key)[0].as_py()).read_bytes() == Path(first[key]).read_bytes()


def test_read_pairs_rejects_other_tables(tmp_path):
    pq.write_table(pa.table({"pair_id": ["a"], "type": ["b"]}), tmp_path / "pairs.parquet")
    with pytest.raises(ValueError, match="missing column 'onset_frame'"):
        read_pairs(str(tmp_path))


def test_cli_wants_exactly_one_of_videos_and_pairs(tmp_path, capsys):
    from ray_jobs.cli import main

    for words in (["--videos", "1", "--pairs", "1"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["synth", "physics", *words, "--out", str(tmp_path)])
        assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["synth", "physics", "--pairs", "1", "--types", "control,inertia", "--size", "32",
                 "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert "wrote 2 pairs" in capsys.readouterr().out
    assert read_pairs(str(tmp_path / "cli")).column("type").to_pylist() == ["control", "inertia"]


@pytest.mark.integration
def test_synthesize_pairs_to_s3(s3_env):
    out = f"s3://{s3_env.bucket}/physics-pairs-test"
    table = synthesize_pairs(1, out, seed=2, cfg=SMALL, types=["permanence", "control"], progress=False)
    assert read_pairs(out).equals(table)
    mp4 = storage.get_bytes(table.column("possible_uri")[0].as_py())
    assert decode_video(mp4, SMALL.fps, SMALL.size).shape == (SMALL.n_frames, 64, 64, 3)
    keys = {o.uri.rsplit("/", 1)[1] for o in storage.list_objects(out, suffixes=None)}
    assert {"pairs.parquet", "pair_00000.impossible.state.parquet"} <= keys
