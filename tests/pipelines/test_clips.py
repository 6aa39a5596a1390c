import logging

import numpy as np
import pytest

from pipelines import storage
from pipelines.direct_clips import clip_dataset, decode_clips_batch, list_videos
from pipelines.keys import split_held_out
from pipelines.synth_physics import PhysicsConfig, synthesize

CLIP = {"num_frames": 16, "fps": 8, "size": 64}


def test_split_held_out_is_stable_and_hash_based():
    uris = [f"s3://bucket/raw/video_{i:04d}.mp4" for i in range(2000)]
    train, held = split_held_out(uris, 0.1)
    assert sorted(train + held) == sorted(uris) and not set(train) & set(held)
    assert 0.08 < len(held) / len(uris) < 0.12
    assert split_held_out(list(reversed(uris)), 0.1)[1] == list(reversed(held))  # order-free
    assert set(split_held_out(uris[:500], 0.1)[1]) == set(held) & set(uris[:500])  # adding videos moves none
    moved = [u.replace("s3://bucket/", "s3://other-bucket/") for u in uris]
    assert split_held_out(moved, 0.1)[1] == [u.replace("s3://bucket/", "s3://other-bucket/") for u in held]
    assert set(split_held_out(uris, 0.1, salt="other")[1]) != set(held)
    assert split_held_out(uris, 0.0) == (uris, []) and split_held_out(uris, 1.0) == ([], uris)
    with pytest.raises(ValueError):
        split_held_out(uris, 1.5)


@pytest.fixture
def videos(s3_env) -> list[str]:
    """Four short synthetic videos plus a corrupt one, in SeaweedFS (~0.3 s to make)."""
    prefix = f"s3://{s3_env.bucket}/clips-test"
    uris = synthesize(4, prefix, seed=1, cfg=PhysicsConfig(seconds=3.0), progress=False)
    storage.put_bytes(f"{prefix}/broken.mp4", b"\x00\x00\x00\x18ftypmp42 truncated garbage")
    return uris


@pytest.mark.integration
def test_list_videos_sorted_mp4_only(s3_env, videos):
    listed = list_videos(f"s3://{s3_env.bucket}/clips-test")
    assert listed == sorted(videos + [f"s3://{s3_env.bucket}/clips-test/broken.mp4"])


@pytest.mark.integration
def test_decode_clips_batch_seeds_by_uri_and_epoch(videos, caplog):
    uris = np.array(videos)
    batch = {"uri": uris, "epoch": np.zeros(len(uris), dtype=np.int64)}
    first = decode_clips_batch(batch, **CLIP, seed=0)["clip"]
    assert first.shape == (4, 16, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(decode_clips_batch(batch, **CLIP, seed=0)["clip"], first)
    next_epoch = decode_clips_batch({**batch, "epoch": batch["epoch"] + 1}, **CLIP, seed=0)["clip"]
    assert any(not np.array_equal(a, b) for a, b in zip(first, next_epoch))

    with caplog.at_level(logging.WARNING, logger="pipelines.direct_clips"):
        broken = uris[0].rsplit("/", 1)[0] + "/broken.mp4"
        out = decode_clips_batch({"uri": np.array([broken, uris[1], broken + ".missing"])}, **CLIP, seed=0)
    assert out["clip"].shape == (1, 16, 64, 64, 3)
    assert "broken.mp4" in caplog.text and "missing" in caplog.text
    empty = decode_clips_batch({"uri": np.array([broken])}, **CLIP, seed=0)["clip"]
    assert empty.shape == (0, 16, 64, 64, 3) and empty.dtype == np.uint8


@pytest.mark.integration
def test_clip_dataset_on_local_ray(ray_local, videos):
    """ray_local (tests/conftest.py) hands the stack's S3 settings to Ray workers."""
    uris = videos + [videos[0].rsplit("/", 1)[0] + "/broken.mp4"]
    ds = clip_dataset(uris, **CLIP, seed=3, epochs=2, batch_size=2, decode_tasks=2)
    batches = list(ds.iter_batches(batch_size=4, batch_format="numpy"))
    clips = np.concatenate([b["clip"] for b in batches])
    assert clips.shape == (8, 16, 64, 64, 3) and clips.dtype == np.uint8  # broken.mp4 dropped twice
    assert clips.std() > 10  # real pictures, not zeros
