"""Resuming at a data position: every dataset builder with ``start=k`` yields the rows the full
dataset yields from row k on, and never reads or decodes the rows before k (real SeaweedFS, Ray
Data and PyAV; the rows to skip are made poisonous, so touching one fails the run)."""

import io
import json

import numpy as np
import pytest
from segment_rows import SPEC, physics_segment_rows

from jepa.config import ImageMaskConfig
from pipelines import storage
from pipelines.direct_clips import clip_dataset, decode_clips_batch
from pipelines.images import decode_images_batch, image_dataset
from pipelines.keys import row_key
from pipelines.resume import INPUT_ROWS, epoch_items, input_rows, plan_row_ranges
from pipelines.shard_clips import shard_clip_dataset
from pipelines.shards import encode_segment, rows_to_table, write_shard
from pipelines.synth_physics import PhysicsConfig, make_video, synthesize

CLIP = {"num_frames": 8, "fps": 4.0, "size": 32}


def test_input_rows_gives_drops_to_the_next_clip_and_trailing_ones_to_the_last():
    assert input_rows([1, 3], 5).tolist() == [2, 3]  # rows 0 and 4 were dropped
    assert input_rows([0, 1, 2], 3).tolist() == [1, 1, 1]
    assert input_rows([], 4).tolist() == []  # a batch that keeps nothing goes uncounted


def test_epoch_items_from_start_is_a_suffix_of_the_full_list():
    uris = [f"s3://b/v{i}.mp4" for i in range(5)]
    full = epoch_items(uris, seed=3, epochs=3)
    assert [i["epoch"] for i in full] == [0] * 5 + [1] * 5 + [2] * 5
    assert {i["uri"] for i in full[:5]} == set(uris) and full[:5] != full[5:10]  # each epoch its own order
    for k in range(15):
        assert epoch_items(uris, seed=3, epochs=3, start=k) == full[k:], k
    with pytest.raises(ValueError, match="past"):
        epoch_items(uris, seed=3, epochs=3, start=15)
    with pytest.raises(ValueError, match=">= 0"):
        epoch_items(uris, seed=3, epochs=3, start=-1)


def _planned_rows(plan) -> list[tuple[int, str, int]]:
    """(epoch, file, row in file) of every row a read plan reads, in order."""
    return [(r.epoch, r.path, j) for r in plan for j in range(r.lo, r.hi)]


def test_plan_row_ranges_from_start_is_a_suffix_and_skips_whole_ranges():
    paths, counts = ["a", "b", "c", "d"], [3, 0, 5, 2]
    full = plan_row_ranges(paths, counts, rows_per_range=2, seed=2, epochs=3)
    rows = _planned_rows(full)
    assert len(rows) == 30
    for epoch in range(3):  # every epoch reads every row once, in ranges of at most 2 rows
        assert sorted(r[1:] for r in rows if r[0] == epoch) == [(p, j) for p, n in zip(paths, counts) for j in range(n)]
    assert all(r.hi - r.lo <= 2 for r in full) and len(full) == 3 * 6
    assert [r.path for r in full[:6]] != [r.path for r in full[6:12]]  # each epoch its own order
    for k in range(30):
        plan = plan_row_ranges(paths, counts, rows_per_range=2, seed=2, epochs=3, start=k)
        assert _planned_rows(plan) == rows[k:], k
        # whole epochs and whole ranges before the position are left out (else their rows would be
        # planned too), and the range it falls in starts at its first unconsumed row
        assert plan[0].epoch == k // 10 and len(plan) == len(full) - _whole(full, k)
    with pytest.raises(ValueError, match="past"):
        plan_row_ranges(paths, counts, rows_per_range=2, seed=2, epochs=3, start=30)
    with pytest.raises(ValueError, match="rows_per_range"):
        plan_row_ranges(paths, counts, rows_per_range=0, seed=2, epochs=3)


def _whole(plan, k: int) -> int:
    """How many ranges of ``plan`` lie wholly before row ``k``."""
    n = 0
    for r in plan:
        if k < r.hi - r.lo:
            break
        k -= r.hi - r.lo
        n += 1
    return n


def _mp4(tmp_path, name: str, seed: int) -> str:
    data, _ = make_video(PhysicsConfig(size=64, seconds=1.5, fps=8), seed=seed)
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_decode_batches_count_dropped_rows(tmp_path):
    """Dropped rows (undecodable, missing) count toward the clips after them: the position a
    trainer sums from INPUT_ROWS includes them."""
    good = [_mp4(tmp_path, f"v{i}.mp4", i) for i in range(2)]
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    uris = np.array([str(tmp_path / "bad.mp4"), good[0], str(tmp_path / "missing.mp4"), good[1], str(tmp_path / "bad.mp4")])
    out = decode_clips_batch({"uri": uris}, **CLIP, seed=0)
    assert out["clip"].shape[0] == 2 and out[INPUT_ROWS].tolist() == [2, 3]
    images = decode_images_batch({"uri": np.array([str(tmp_path / "bad.mp4")])}, size=16, seed=0)
    assert images[INPUT_ROWS].tolist() == [] and images["clip"].shape == (0, 1, 16, 16, 3)


# ------------------------------------------------------------------------------ integration


def _rows(ds) -> tuple[list[int], int]:
    """(keys in dataset order, sum of INPUT_ROWS) of a dataset run with its order preserved."""
    ds.context.execution_options.preserve_order = True
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    keys = [int(k) for b in batches for k in b["key"]]
    return keys, int(sum(b[INPUT_ROWS].sum() for b in batches))


@pytest.fixture(scope="module")
def videos(s3_env) -> list[str]:
    prefix = f"s3://{s3_env.bucket}/resume-videos"
    return synthesize(4, prefix, seed=2, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)


@pytest.mark.integration
def test_clip_dataset_from_start_yields_the_rest_and_never_reads_the_rows_before(ray_local, videos, tmp_path):
    full, rows = _rows(clip_dataset(videos, **CLIP, seed=1, epochs=2, batch_size=2, decode_tasks=2))
    assert len(full) == rows == 8 and len(set(full)) == 8
    for k in (3, 6):
        keys, rows = _rows(clip_dataset(videos, **CLIP, seed=1, epochs=2, batch_size=2, decode_tasks=2, start=k))
        assert keys == full[k:] and rows == 8 - k

    # Two "videos" that are folders: reading one raises IsADirectoryError, which decode does not catch.
    poison = [str(tmp_path / "poison0"), str(tmp_path / "poison1")]
    for p in poison:
        (tmp_path / p).mkdir()
    uris = videos + poison
    seed = next(s for s in range(100) if max(i for i, it in enumerate(epoch_items(uris, seed=s, epochs=1))
                                            if it["uri"] in poison) <= 2)
    items = epoch_items(uris, seed=seed, epochs=1)
    start = 1 + max(i for i, it in enumerate(items) if it["uri"] in poison)
    keys, rows = _rows(clip_dataset(uris, **CLIP, seed=seed, epochs=1, batch_size=1, start=start))
    assert keys == [row_key(it["uri"], 0, 0) for it in items[start:]] and rows == len(items) - start
    with pytest.raises(Exception, match="IsADirectoryError|Is a directory"):
        _rows(clip_dataset(uris, **CLIP, seed=seed, epochs=1, batch_size=1, start=start - 1))


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.integration
def test_image_dataset_from_start_yields_the_rest(ray_local, s3_env):
    rng = np.random.default_rng(0)
    uris = [f"s3://{s3_env.bucket}/resume-images/img{i}.png" for i in range(5)]
    for uri in uris:
        storage.put_bytes(uri, _png(rng))
    kwargs = dict(size=16, mask_grid=(1, 2, 2), mask_cfg=ImageMaskConfig(), seed=4, epochs=2, batch_size=3)
    full, rows = _rows(image_dataset(uris, **kwargs))
    assert len(full) == rows == 10 and len(set(full)) == 10
    keys, rows = _rows(image_dataset(uris, **kwargs, start=7))
    assert keys == full[7:] and rows == 3


@pytest.fixture(scope="module")
def segment_rows() -> list[dict]:
    """Eight shard rows (8-frame segments) from two short videos, as four sources."""
    base = physics_segment_rows()
    return [{**row, "uri": row["uri"].replace(".mp4", f"-{copy}.mp4")} for copy in range(2) for row in base]


def _write_shards(uri: str, shards: dict[str, list[dict]]) -> list[str]:
    paths = []
    for name, rows in shards.items():
        paths.append(f"{uri}/shards/{name}.parquet")
        write_shard(rows_to_table(rows, SPEC), paths[-1])
    return paths


@pytest.mark.integration
def test_shard_dataset_from_start_yields_the_rest(ray_local, s3_env, segment_rows):
    """No dataset.json: the shards' row counts come from their parquet footers."""
    uri = f"s3://{s3_env.bucket}/datasets/resume-shards"
    _write_shards(uri, {"a": segment_rows[:3], "b": segment_rows[3:5], "c": segment_rows[5:]})
    kwargs = dict(**CLIP, seed=5, epochs=2, batch_size=2, decode_tasks=2)
    full, rows = _rows(shard_clip_dataset(uri, **kwargs))
    assert len(full) == rows == 16 and len(set(full)) == 16
    # Row 12 is 4 rows into epoch 1, inside a file (no prefix of the 3 + 2 + 3 rows sums to 4): all of
    # epoch 0 is left out, then the whole files before the position, then the first rows of its file.
    keys, rows = _rows(shard_clip_dataset(uri, **kwargs, start=12))
    assert keys == full[12:] and rows == 4


@pytest.mark.integration
def test_shard_dataset_never_reads_skipped_files_nor_decodes_skipped_rows(ray_local, s3_env, segment_rows):
    """The first file in epoch order is not parquet at all, and the first two rows of the second
    are segments too short to decode into a clip (decode raises): starting past them must work,
    and dataset.json's per-shard counts must be what locates them (the bad file has no footer)."""
    uri = f"s3://{s3_env.bucket}/datasets/resume-poison"
    short = [{**row, "uri": row["uri"].replace(".mp4", "-short.mp4"), "n_frames": 4,
              "mp4": encode_segment(np.zeros((4, 48, 64, 3), dtype=np.uint8), SPEC)} for row in segment_rows[:2]]
    names = ["x", "y", "z"]
    order = [names[int(i)] for i in np.random.default_rng([7, 0]).permutation(3)]  # epoch 0's file order
    shards = {order[0]: segment_rows[:3], order[1]: short + segment_rows[3:5], order[2]: segment_rows[5:]}
    paths = _write_shards(uri, shards)
    storage.put_bytes(f"{uri}/shards/{order[0]}.parquet", b"not parquet")
    info = {"schema_version": 1, "clip_spec": SPEC.to_dict(),
            "shards": [{"path": f"shards/{n}.parquet", "segments": len(shards[n])} for n in names]}
    storage.put_bytes(f"{uri}/dataset.json", json.dumps(info).encode())
    assert sorted(paths) == [f"{uri}/shards/{n}.parquet" for n in names]

    kwargs = dict(**CLIP, seed=7, epochs=1, batch_size=2, decode_tasks=1)
    keys, rows = _rows(shard_clip_dataset(uri, **kwargs, start=5))
    expected = segment_rows[3:5] + segment_rows[5:]
    assert keys == [row_key(r["uri"], r["segment"], 0) for r in expected] and rows == 5
    with pytest.raises(Exception, match="fewer than num_frames"):  # one row earlier: a short one decodes
        _rows(shard_clip_dataset(uri, **kwargs, start=4))
