import json

import numpy as np
import pytest

from pipelines import storage
from pipelines.episode_shards import (
    DATASET_JSON, QUARANTINE, SHARDS, BadEpisode, WindowSpec, check_episode, decode_window, episode_windows,
    ingest_episodes,
)  # fmt: skip
from pipelines.episodes import (
    EnvSpec, data_uri, frames_table, read_episodes, read_info, video_uri,
)  # fmt: skip
from pipelines.mujoco_record import (
    EXPLORE_HOLD, RecordConfig, env_spec, episode_seed, load_env, physics_state, record, record_episode, render,
)  # fmt: skip
from pipelines.shards import decode_segment

SMALL = RecordConfig(env="reacher", episodes=3, steps=30, frameskip=5, img_size=32, seed=7)


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("episodes"))
    row = record_episode(SMALL, 1, root, None)
    return root, row


def test_rows_belong_to_their_frames(episode):
    """Replaying the recorded actions from the same reset gives row t's state when frame t shows,
    and frame t is exactly what the renderer drew then (the video is lossless)."""
    root, row = episode
    frames = decode_segment(storage.get_bytes(video_uri(root, 1)))
    table = storage.get_table(data_uri(root, 1))
    assert row["n_frames"] == len(frames) == table.num_rows == SMALL.steps
    actions = np.asarray(table.column("action").to_pylist())
    states = np.asarray(table.column("state").to_pylist())
    assert table.column("frame_index").to_pylist() == list(range(SMALL.steps))

    env = load_env("reacher", episode_seed(SMALL.seed, 1))
    env.reset()
    spec = EnvSpec.from_dict(spec_dict(env))
    for t in range(SMALL.steps):
        np.testing.assert_allclose(states[t], physics_state(env), atol=1e-5)
        np.testing.assert_array_equal(render(env, spec), frames[t])
        env.step(actions[t])
    # the random policy holds each draw for one agent step, and draws differ between agent steps
    held = actions.reshape(-1, SMALL.frameskip, 2)
    assert (held == held[:, :1]).all() and not np.allclose(held[0, 0], held[1, 0])
    assert ((actions >= -1) & (actions <= 1)).all()


def spec_dict(env) -> dict:
    """What meta/info.json holds (derived keys included), for the from_dict round trip."""
    return env_spec(SMALL.env, env, SMALL.img_size, SMALL.frameskip).as_dict()


def test_windows_keep_every_frameskip_th_frame_with_its_actions(episode):
    root, _ = episode
    env = EnvSpec.from_dict(spec_dict(load_env("reacher", 0)))
    frames = decode_segment(storage.get_bytes(video_uri(root, 1)))
    table = storage.get_table(data_uri(root, 1))
    actions, states = check_episode(frames, table, env, WindowSpec(frames=4))
    windows = episode_windows(frames, actions, states, env, WindowSpec(frames=4, stride=1))
    assert [w.start for w in windows] == [0, 1, 2]  # 6 agent steps, windows of 4
    w = windows[1]
    np.testing.assert_array_equal(w.frames, frames[5:25:5])
    np.testing.assert_array_equal(w.actions, actions[5:25].reshape(4, 5, 2))
    np.testing.assert_array_equal(w.states, states[5:25:5])


def test_bad_episodes_are_refused_with_a_reason(episode):
    root, _ = episode
    env = EnvSpec.from_dict(spec_dict(load_env("reacher", 0)))
    frames = decode_segment(storage.get_bytes(video_uri(root, 1)))
    table = storage.get_table(data_uri(root, 1))
    with pytest.raises(BadEpisode, match="29 video frames but 30"):
        check_episode(frames[:-1], table, env, WindowSpec(frames=4))
    with pytest.raises(BadEpisode, match="too short: 6 agent steps"):
        check_episode(frames, table, env, WindowSpec(frames=8))
    actions, states = (np.asarray(table.column(c).to_pylist()) for c in ("action", "state"))
    actions[3, 0] = 5.0
    wild = frames_table(actions, states, np.zeros(len(actions)), env.control_timestep)
    with pytest.raises(BadEpisode, match="outside the env's action bounds"):
        check_episode(frames, wild, env, WindowSpec(frames=4))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown env"):
        RecordConfig(env="cartpole")
    with pytest.raises(ValueError, match="at least one agent step"):
        RecordConfig(steps=3, frameskip=5)


@pytest.mark.integration
def test_record_to_s3_then_shard_with_a_corrupt_episode_quarantined(s3_env, ray_local):
    root = f"s3://{s3_env.bucket}/episodes/reacher"
    episodes = record(SMALL, root, progress=False)
    assert episodes.column("episode_index").to_pylist() == [0, 1, 2]
    info = read_info(root)
    env = EnvSpec.from_dict(info["env"])
    assert (env.domain, env.task, env.img_size, env.frameskip, env.action_dim, env.state_dim) == \
        ("reacher", "easy", 32, 5, 2, 4)
    assert info["total_frames"] == 90 and read_episodes(root).num_rows == 3
    assert len(set(episodes.column("seed").to_pylist())) == 3
    storage.put_bytes(video_uri(root, 2), b"not an mp4")

    out = f"s3://{s3_env.bucket}/datasets/reacher"
    summary = ingest_episodes(root, out, WindowSpec(frames=4, stride=2), episodes_per_shard=2, progress=False)
    assert (summary["episodes"], summary["quarantined"], summary["windows"]) == (3, 1, 4)  # starts 0, 2 of 6 steps
    assert json.loads(storage.get_bytes(storage.join_uri(out, DATASET_JSON)))["windows"] == 4
    quarantine = storage.get_table(storage.join_uri(out, QUARANTINE))
    assert quarantine.column("episode_index").to_pylist() == [2]
    assert "VideoDecodeError" in quarantine.column("reason")[0].as_py()

    shards = storage.list_objects(storage.join_uri(out, SHARDS), suffixes=(".parquet",))
    rows = [r for s in shards for r in storage.get_table(s.uri).to_pylist()]
    assert sorted((r["episode_index"], r["start"]) for r in rows) == [(0, 0), (0, 2), (1, 0), (1, 2)]
    row = next(r for r in rows if (r["episode_index"], r["start"]) == (1, 2))
    window = decode_window(row, env)
    table = storage.get_table(data_uri(root, 1))
    np.testing.assert_array_equal(window.actions.reshape(-1, 2), np.asarray(table.column("action").to_pylist())[10:30])
    frames = decode_segment(storage.get_bytes(video_uri(root, 1)))
    assert np.abs(window.frames.astype(int) - frames[10:30:5]).mean() < 4


def test_point_mass_records_through_the_same_recorder(tmp_path):
    cfg = RecordConfig(env="point_mass", episodes=1, steps=30, frameskip=5, img_size=32, seed=1)
    row = record_episode(cfg, 0, str(tmp_path), None)
    table = storage.get_table(data_uri(str(tmp_path), 0))
    frames = decode_segment(storage.get_bytes(video_uri(str(tmp_path), 0)))
    assert row["n_frames"] == len(frames) == table.num_rows == 30
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False))
    held = 5 * EXPLORE_HOLD["point_mass"]  # the slow point mass keeps a draw for several agent steps
    assert held == 25 and (actions[:held] == actions[0]).all() and (actions[held] != actions[0]).any()
    spec = env_spec("point_mass", load_env("point_mass", 0), 32, 5)
    assert (spec.domain, spec.action_dim, spec.qpos_dim, spec.qvel_dim) == ("point_mass", 2, 2, 2)
    assert len(table.column("state")[0].as_py()) == 4
