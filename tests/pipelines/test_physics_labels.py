"""Probe labels from the physics sidecars (pipelines/physics_labels.py): the right rows, the same
frames the decoder picks, and the dataset listing."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.physics_labels import (
    clip_labels,
    list_physics_videos,
    nearest_frames,
    physics_tasks,
    read_sidecar,
    sidecar_uri,
    task_targets,
    video_labels,
)
from pipelines.synth_physics import PhysicsConfig, synthesize
from pipelines.video import decode_clip

WORLD = PhysicsConfig(size=64, seconds=2, fps=8)  # 16 frames at t = f / 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("physics")
    uris = synthesize(4, str(folder), seed=3, cfg=WORLD, progress=False)
    return folder, uris


def test_labels_are_the_clip_frames_ground_truth(dataset):
    _, uris = dataset
    counts = set()
    for uri in uris:
        table = pq.read_table(sidecar_uri(uri)).to_pydict()
        rows = list(zip(table["frame"], table["ball"], table["x"], table["y"], table["vx"], table["vy"]))
        labels = video_labels(uri, num_frames=4, fps=4.0)  # clip times 0, .25, .5, .75 s = frames 0, 2, 4, 6
        clip = [r for r in rows if r[0] in (0, 2, 4, 6)]
        assert labels.num_balls == len({r[1] for r in rows})
        assert labels.mean_speed == pytest.approx(np.mean([np.hypot(r[4], r[5]) for r in clip]), rel=1e-6)
        last_ball0 = next(r for r in rows if r[0] == 6 and r[1] == 0)
        assert labels.ball0_last_xy == pytest.approx((last_ball0[2], last_ball0[3]), rel=1e-6)
        counts.add(labels.num_balls)
    assert counts <= set(range(WORLD.min_balls, WORLD.max_balls + 1))


def test_clip_past_the_end_holds_the_last_frame_and_row_order_does_not_matter(dataset):
    _, uris = dataset
    sidecar = read_sidecar(open(sidecar_uri(uris[0]), "rb").read())
    long = clip_labels(sidecar, num_frames=40, fps=8.0)  # 5 s of a 2 s video
    last = (sidecar["frame"] == 15) & (sidecar["ball"] == 0)
    assert long.ball0_last_xy == pytest.approx((sidecar["x"][last][0], sidecar["y"][last][0]))
    shuffled = {k: v[::-1].copy() for k, v in sidecar.items()}
    assert clip_labels(shuffled, 6, 3.0) == clip_labels(sidecar, 6, 3.0)


def test_nearest_frames_ties_go_to_the_later_frame():
    t = np.arange(4) / 8.0  # 0, .125, .25, .375
    targets = np.array([0.0, 0.0625, 0.07, 0.2, 0.3125, 9.0, -1.0])
    assert nearest_frames(t, targets).tolist() == [0, 1, 1, 2, 3, 3, 0]


@pytest.mark.parametrize("fps", [3.0, 16.0])  # 16: every other target is a tie between two frames
def test_labels_use_the_frames_the_decoder_picks(dataset, fps):
    _, uris = dataset
    data = open(uris[1], "rb").read()
    every_frame = decode_clip(data, WORLD.n_frames, WORLD.fps, WORLD.size, start_s=0.0)  # (16, 64, 64, 3)
    clip = decode_clip(data, 6, fps, WORLD.size, start_s=0.0)
    picked = nearest_frames(np.arange(WORLD.n_frames) / WORLD.fps, np.arange(6) / fps)
    np.testing.assert_array_equal(clip, every_frame[picked])


def test_listing_needs_a_sidecar_and_targets_have_task_shapes(dataset, tmp_path):
    folder, uris = dataset
    assert list_physics_videos(str(folder)) == sorted(uris)
    (tmp_path / "lonely.mp4").write_bytes(open(uris[0], "rb").read())  # no sidecar: not listed
    assert list_physics_videos(str(tmp_path)) == []
    with pytest.raises(ValueError, match="mp4"):
        sidecar_uri("s3://b/physics_000001.webm")
    assert sidecar_uri("s3://b/d/physics_000001.mp4") == "s3://b/d/physics_000001.state.parquet"

    labels = [video_labels(uri, 8, 4.0) for uri in uris]
    tasks = {t.name: t for t in physics_tasks(labels)}
    assert tasks["num_balls"].num_classes == max(label.num_balls for label in labels) + 1
    assert task_targets(labels, "num_balls").shape == (4,)
    assert task_targets(labels, "mean_speed").shape == (4, tasks["mean_speed"].dim) == (4, 1)
    assert task_targets(labels, "ball0_last_xy").shape == (4, tasks["ball0_last_xy"].dim) == (4, 2)
    with pytest.raises(ValueError, match="unknown"):
        task_targets(labels, "colour")
