"""Shard-mode training clips: crop/flip, masks, and the Ray Data graph against real SeaweedFS."""

import json
import re
import threading

import numpy as np
import pytest
import torch
from segment_rows import SPEC, physics_segment_rows

from jepa.config import MaskConfig
from jepa.masks import masks_from_flags
from pipelines import shards, storage
from pipelines.augment import augment_clip, resized_crop, sample_crop
from pipelines.keys import row_key, split_held_out
from pipelines.masking import add_masks_batch
from pipelines.shard_clips import decode_shard_batch, shard_clip_dataset
from pipelines.shards import rows_to_table, write_shard

GRID = (4, 4, 4)  # 8 frames / tubelet 2, 64 px / patch 16
MASKS = [MaskConfig(4, 0.15), MaskConfig(1, 0.5)]


def gradient_clip(t: int = 3, h: int = 40, w: int = 60) -> np.ndarray:
    """Red = column, green = row, blue = 40 * frame index: every pixel says where and when it is."""
    clip = np.zeros((t, h, w, 3), dtype=np.uint8)
    clip[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    clip[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[None, :, None]
    clip[..., 2] = (np.arange(t) * 40).astype(np.uint8)[:, None, None]
    return clip


def test_sample_crop_respects_scale_aspect_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = sample_crop(288, 512, rng)
        assert 0 <= top and top + h <= 288 and 0 <= left and left + w <= 512
        assert 0.3 * 0.95 <= h * w / (288 * 512) <= 1.0
        assert 0.75 * 0.95 <= w / h <= 1.35 * 1.05
    # nothing fits (tall strip, wide aspect only): centred fallback with the ratio clamped
    assert sample_crop(100, 10, rng, scale=(0.9, 1.0), aspect=(1.0, 1.0)) == (45, 0, 10, 10)


def test_resized_crop_takes_the_box():
    clip = gradient_clip()
    np.testing.assert_array_equal(resized_crop(clip, (10, 20, 16, 16), 16), clip[:, 10:26, 20:36])
    out = resized_crop(clip, (0, 0, 40, 60), 32)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert out[0, 0, 0, 0] < 10 and out[0, 0, -1, 0] > 245  # left-to-right red ramp kept


def test_augment_same_crop_every_frame_flip_and_determinism():
    clip = gradient_clip()
    a = augment_clip(clip, 24, np.random.default_rng(5), flip=0.0)
    assert a.shape == (3, 24, 24, 3) and a.dtype == np.uint8
    for t in range(3):  # same box in every frame: spatial channels identical, time channel differs
        np.testing.assert_array_equal(a[t, ..., :2], a[0, ..., :2])
        assert a[t, ..., 2].mean() == pytest.approx(40 * t, abs=1)
    np.testing.assert_array_equal(augment_clip(clip, 24, np.random.default_rng(5), flip=0.0), a)
    flipped = augment_clip(clip, 24, np.random.default_rng(5), flip=1.0)  # same box, mirrored
    np.testing.assert_array_equal(flipped, a[:, :, ::-1])
    assert (flipped[0, :, 0, 0] > flipped[0, :, -1, 0]).all()  # red now falls left to right
    boxes = {augment_clip(clip, 24, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(boxes) == 8
    flips = [np.array_equal(augment_clip(clip, 24, np.random.default_rng(s), flip=0.5),
                            augment_clip(clip, 24, np.random.default_rng(s), flip=0.0)) for s in range(200)]
    assert 60 < sum(flips) < 140


@pytest.fixture(scope="module")
def shard_rows() -> list[dict]:
    """Shard rows from two 4 s synthetic physics videos (64 px, 12 fps): 2 segments of 8 each."""
    return list(physics_segment_rows())


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], dtype=object if k == "mp4" else None) for k in ("uri", "segment", "mp4")}


def test_decode_shard_batch_shapes_windows_and_seeding(shard_rows):
    batch = _batch(shard_rows)
    out = decode_shard_batch(batch, num_frames=6, size=32, seed=0)
    assert out["clip"].shape == (4, 6, 32, 32, 3) and out["clip"].dtype == np.uint8
    assert out["key"].dtype == np.int64 and len(set(out["key"].tolist())) == 4
    assert out["clip"].std() > 10
    np.testing.assert_array_equal(decode_shard_batch(batch, num_frames=6, size=32, seed=0)["clip"], out["clip"])
    one_by_one = [decode_shard_batch(_batch([r]), num_frames=6, size=32, seed=0)["clip"][0] for r in shard_rows]
    np.testing.assert_array_equal(np.stack(one_by_one), out["clip"])  # independent of batching
    other_epoch = decode_shard_batch(batch, num_frames=6, size=32, seed=0, epoch=1)
    assert not np.array_equal(other_epoch["clip"], out["clip"])
    with pytest.raises(ValueError, match="fewer than num_frames"):
        decode_shard_batch(batch, num_frames=9, size=32, seed=0)


def test_decode_shard_batch_drops_held_out_and_broken(shard_rows, caplog):
    uris = sorted({r["uri"] for r in shard_rows})
    _, held = split_held_out(uris, 0.5)
    out = decode_shard_batch(_batch(shard_rows), num_frames=8, size=16, seed=0, held_out_fraction=0.5)
    assert len(out["clip"]) == sum(r["uri"] not in held for r in shard_rows)
    broken = {**shard_rows[0], "mp4": b"garbage" * 10}
    out = decode_shard_batch(_batch([broken]), num_frames=8, size=16, seed=0)
    assert out["clip"].shape == (0, 8, 16, 16, 3) and "skipping" in caplog.text


def test_mask_stage_shapes_tubes_disjoint_and_batch_independent():
    keys = np.array([row_key("s3://b/v.mp4", s, 0) for s in range(6)], dtype=np.int64)
    out = add_masks_batch({"key": keys, "clip": np.zeros((6, 1))}, grid=GRID, mask_cfgs=MASKS, seed=0)
    flags = out["target_masks"]
    assert flags.shape == (6, 2, 64) and flags.dtype == bool and "clip" in out
    tubes = flags.reshape(6, 2, 4, 16)
    assert (tubes == tubes[:, :, :1]).all()  # every time step masks the same cells
    assert flags.any(axis=2).all() and (~flags).any(axis=2).all()  # targets and context in every clip
    single = np.concatenate([add_masks_batch({"key": keys[i : i + 1]}, grid=GRID, mask_cfgs=MASKS, seed=0)
                             ["target_masks"] for i in range(6)])
    np.testing.assert_array_equal(single, flags)
    dicts = [{"num_blocks": 4, "spatial_scale": 0.15}, {"num_blocks": 1, "spatial_scale": 0.5}]
    np.testing.assert_array_equal(add_masks_batch({"key": keys}, grid=GRID, mask_cfgs=dicts, seed=0)["target_masks"],
                                  flags)

    for k, m in enumerate(masks_from_flags(torch.from_numpy(flags))):
        assert m.context.shape[0] == m.target.shape[0] == 6
        assert m.target.shape[1] == flags[:, k].sum(axis=1).min()  # cut to the batch minimum
        assert m.context.shape[1] == (~flags[:, k]).sum(axis=1).min()
        for i, (ctx, tgt) in enumerate(zip(m.context.tolist(), m.target.tolist())):
            assert not set(ctx) & set(tgt)
            assert all(flags[i, k, tgt]) and not any(flags[i, k, ctx])


# ------------------------------------------------------------------------------ integration


@pytest.fixture(scope="module")
def shard_dataset(s3_env, shard_rows) -> str:
    """Two shards (3 + 2 rows) in SeaweedFS; the dataset has no dataset.json (listing fallback)."""
    uri = f"s3://{s3_env.bucket}/datasets/shard-clips-test"
    rows = shard_rows + [{**shard_rows[0], "uri": "s3://b/raw/v9.mp4"}]
    write_shard(rows_to_table(rows[:3], SPEC), f"{uri}/shards/part-00000.parquet", shuffle_seed=0)
    write_shard(rows_to_table(rows[3:], SPEC), f"{uri}/shards/part-00001.parquet")
    return uri


@pytest.mark.integration
def test_shard_clip_dataset_streams_clips_and_masks(ray_local, shard_dataset):
    ds = shard_clip_dataset(shard_dataset, num_frames=8, size=64, seed=1, epochs=2, fps=4.0,
                            mask_grid=GRID, mask_cfgs=MASKS, batch_size=2, decode_tasks=1)
    rows = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    clips = np.concatenate([b["clip"] for b in rows])
    flags = np.concatenate([b["target_masks"] for b in rows])
    assert clips.shape == (10, 8, 64, 64, 3) and clips.dtype == np.uint8 and clips.std() > 10
    assert flags.shape == (10, 2, 64) and flags.dtype == bool
    assert len({int(k) for b in rows for k in b["key"]}) == 10  # two epochs draw different keys
    with pytest.raises(ValueError, match="ingested at 4.0 fps"):
        shard_clip_dataset(shard_dataset, num_frames=8, size=64, fps=8.0)
    with pytest.raises(ValueError, match="exceeds"):
        shard_clip_dataset(shard_dataset, num_frames=9, size=64)


@pytest.mark.integration
def test_one_epoch_is_several_read_and_decode_tasks(ray_local, shard_dataset):
    """One pass over 3 + 2 rows in ranges of 2 rows is 3 tasks (2 + 1 + 2 rows), each reading and
    decoding its own range, with blocks of batch_size clips: not one read of everything."""
    ds = shard_clip_dataset(shard_dataset, num_frames=8, size=32, seed=0, epochs=1, rows_per_range=2,
                            batch_size=1, decode_tasks=2)
    assert sum(len(b["clip"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")) == 5
    stats = ds.stats()
    assert re.search(r"MapBatches\(decode_ranges_batch\): 3 tasks executed, 5 blocks produced", stats), stats
    assert "ReadParquet" not in stats


@pytest.mark.integration
def test_shard_clip_dataset_splits_evenly_across_two_consumers(ray_local, shard_dataset):
    ds = shard_clip_dataset(shard_dataset, num_frames=8, size=32, seed=0, batch_size=1)  # 5 rows
    counts: dict[int, int] = {}

    def consume(i, it):  # Train's workers pull from their splits concurrently, like this
        counts[i] = sum(len(b["clip"]) for b in it.iter_batches(batch_size=1, batch_format="numpy"))

    threads = [threading.Thread(target=consume, args=(i, it)) for i, it in enumerate(ds.streaming_split(2, equal=True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert counts == {0: 2, 1: 2}


@pytest.mark.integration
def test_dataset_json_shard_list_wins_over_listing(s3_env, shard_dataset):
    storage.put_bytes(f"{shard_dataset}-listed/dataset.json", json.dumps(
        {"schema_version": 1, "clip_spec": SPEC.to_dict(), "shards": [f"{shard_dataset}/shards/part-00001.parquet"]}
    ).encode())
    assert shards.shard_uris(f"{shard_dataset}-listed") == [f"{shard_dataset}/shards/part-00001.parquet"]
    assert shards.shard_uris(shard_dataset) == [f"{shard_dataset}/shards/part-0000{i}.parquet" for i in (0, 1)]
