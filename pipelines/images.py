"""Image mode (I-JEPA): JPEG/PNG objects -> 1-frame clips with multiblock-2D masks, in Ray Data.

Rows look like the video paths' rows (``pipelines.direct_clips``): {"clip": uint8 (1, H, W, 3),
"key": int64, "input_rows": int64, "target_masks": bool (1, N), "context_masks": bool (1, N)}, so
the trainer handles both; images also carry context flags (``pipelines.masking``).
Augmentation: random resized crop (``pipelines.augment.augment_clip``) and flip.
"""

from __future__ import annotations

import dataclasses
import io
from typing import TYPE_CHECKING

import numpy as np

from jepa.config import DataConfig, ImageMaskConfig
from pipelines import storage
from pipelines.augment import augment_clip
from pipelines.direct_clips import decode_uri_batch
from pipelines.keys import row_key
from pipelines.masking import add_image_masks_batch
from pipelines.resume import epoch_items

if TYPE_CHECKING:
    import ray.data

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageDecodeError(ValueError):
    """The bytes are not a readable image."""


def list_images(source_uri: str) -> list[str]:
    return sorted(obj.uri for obj in storage.list_objects(source_uri, IMAGE_SUFFIXES))


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 (H, W, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageDecodeError(str(err)) from err


def image_to_clip(
    data: bytes,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DataConfig.crop_scale,
    aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
) -> np.ndarray:
    """Image bytes -> uint8 (1, size, size, 3): random resized crop, then a flip with probability ``flip``."""
    return augment_clip(decode_image(data)[None], size, rng, scale, aspect, flip)


def decode_images_batch(
    batch: dict[str, np.ndarray], *, size: int, seed: int,
    crop_scale: tuple[float, float] = DataConfig.crop_scale,
    crop_aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
) -> dict[str, np.ndarray]:
    """Image mode's decode stage (``pipelines.direct_clips.decode_uri_batch``): each image as a
    1-frame clip, augmented from an RNG seeded by (seed, row key); undecodable or missing images
    are dropped."""
    def decode_one(uri: str, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, row_key(uri, 0, epoch)])
        return image_to_clip(storage.get_bytes(uri), size, rng, crop_scale, crop_aspect, flip)

    return decode_uri_batch(batch, decode_one, (ImageDecodeError,), num_frames=1, size=size)


def image_dataset(
    uris: list[str],
    *,
    size: int,
    mask_grid: tuple[int, int, int],
    mask_cfg: ImageMaskConfig,
    seed: int = 0,
    epochs: int = 1,
    crop_scale: tuple[float, float] = DataConfig.crop_scale,
    crop_aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
    decode_cpus: float = 0.5,
    decode_tasks: int | None = None,
    batch_size: int = 4,
    start: int = 0,
) -> ray.data.Dataset:
    """Image mode, like ``pipelines.direct_clips.clip_dataset``: ``epochs`` passes over ``uris``
    (each in its own seeded order) -> decode + augment -> I-JEPA masks, all in ``map_batches`` on
    CPU. ``start`` drops that many leading (uri, epoch) rows before any image is downloaded."""
    import ray.data

    items = epoch_items(uris, seed=seed, epochs=epochs, start=start)
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None
    common = dict(batch_size=batch_size, batch_format="numpy", num_cpus=decode_cpus, compute=compute)
    ds = ray.data.from_items(items).map_batches(
        decode_images_batch,
        fn_kwargs={"size": size, "seed": seed, "crop_scale": tuple(crop_scale),
                   "crop_aspect": tuple(crop_aspect), "flip": flip},
        **common,
    )
    return ds.map_batches(add_image_masks_batch,
                          fn_kwargs={"grid": tuple(mask_grid), "cfg": dataclasses.asdict(mask_cfg), "seed": seed},
                          **common)
