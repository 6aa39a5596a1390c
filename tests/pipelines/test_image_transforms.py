"""Image mode's decode and mask transforms (pipelines/images.py), as Ray Data runs them."""

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.images import ImageDecodeError, decode_image, decode_images_batch, image_to_clip
from pipelines.masking import add_image_masks_batch


def _png(h: int, w: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_image_decode_shapes(tmp_path):
    assert decode_image(_png(20, 30)).shape == (20, 30, 3)
    assert decode_image(_png(20, 30, "L")).shape == (20, 30, 3)  # greyscale -> RGB
    clip = image_to_clip(_png(40, 50), 32, np.random.default_rng(0))
    assert clip.shape == (1, 32, 32, 3) and clip.dtype == np.uint8
    with pytest.raises(ImageDecodeError):
        decode_image(b"not an image")
    (tmp_path / "a.png").write_bytes(_png(40, 40))
    (tmp_path / "bad.png").write_bytes(b"junk")
    out = decode_images_batch({"uri": np.array([str(tmp_path / "a.png"), str(tmp_path / "bad.png")])}, size=16, seed=0)
    assert out["clip"].shape == (1, 1, 16, 16, 3) and out["key"].shape == (1,)


def test_add_image_masks_batch_is_per_key():
    batch = {"key": np.array([7, 8, 7], dtype=np.int64)}
    out = add_image_masks_batch(batch, grid=(1, 8, 8), cfg={}, seed=0)
    assert out["target_masks"].shape == out["context_masks"].shape == (3, 1, 64)
    assert np.array_equal(out["target_masks"][0], out["target_masks"][2])
    assert not (out["target_masks"] & out["context_masks"]).any()
    assert out["target_masks"].any(axis=2).all() and out["context_masks"].any(axis=2).all()
    # the key (and the run seed) decide, not the row's place in the batch or a constant
    assert not np.array_equal(out["target_masks"][0], out["target_masks"][1])
    alone = add_image_masks_batch({"key": np.array([8], dtype=np.int64)}, grid=(1, 8, 8), cfg={}, seed=0)
    for name in ("target_masks", "context_masks"):
        assert np.array_equal(alone[name][0], out[name][1])
    other_seed = add_image_masks_batch(batch, grid=(1, 8, 8), cfg={}, seed=1)
    assert not np.array_equal(other_seed["target_masks"], out["target_masks"])
