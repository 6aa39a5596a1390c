"""Training shards: the on-disk clip format, declared once, and the code that writes and reads it.

An ingested dataset lives under ``s3://B/datasets/NAME/`` (``docs/dataset-format.md`` describes
every file there). Its training data are **shards**: parquet files under ``shards/``.

Shard format (``SHARD_FORMAT_VERSION`` = 1)
------------------------------------------
One row is one **training segment**: exactly ``spec.frames`` consecutive frames of one source
video, resampled to ``spec.fps`` on a time grid (nearest source frame to each grid time, so
variable-frame-rate sources come out right), rotated upright when the source carries a display
matrix (phone video), and resized so the short side is ``spec.short_side`` pixels (sources whose
short side is smaller are never upscaled; both dimensions are rounded to even numbers). The frames
are stored as a small self-contained H.264 MP4 (yuv420p, one keyframe per segment, no B-frames),
so reading a training clip decodes exactly those frames and nothing else.

=========  ============  =============================================================
column     arrow type    meaning
=========  ============  =============================================================
uri        string        source object the segment was cut from
etag       string        the source's ETag at ingest (re-ingest skips unchanged sources)
segment    int32         index of the segment within its source (0, 1, ...)
start_s    float64       time of the first frame, seconds from the start of the source
fps        float64       frame rate of the segment (= spec.fps)
n_frames   int32         frames in ``mp4`` (= spec.frames)
width      int32         frame width in pixels (even)
height     int32         frame height in pixels (even)
mp4        binary        the frames: H.264 MP4 bytes; ``decode_segment`` gives uint8 (T, H, W, 3)
=========  ============  =============================================================

Segments of one source are consecutive and do not overlap: segment ``i`` covers grid times
``start + (i * frames + k) / fps`` for ``k < frames``. A trailing remainder shorter than one
segment is dropped, so a video shorter than one segment yields none (``pad_short=True`` repeats
its last frame instead). Parquet key-value metadata carries ``jepa.shard_format`` and
``jepa.clip_spec`` (JSON), so a shard file describes itself. Rows of a shard should mix many
sources (``write_shard(..., shuffle_seed=...)``) and row groups stay small
(``SHARD_ROW_GROUP_ROWS``) so readers stream a shard instead of loading it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from av.video.reformatter import VideoReformatter

from pipelines import storage
from pipelines.av_streams import frame_rgb, open_container, timed_frames, video_stream
from pipelines.video import VideoDecodeError, encode_mp4

SHARD_FORMAT_VERSION = 1
SHARDS_DIR = "shards"
"""Folder (prefix) of the shard files inside a dataset."""
DATASET_JSON = "dataset.json"
SHARD_ROW_GROUP_ROWS = 32
"""Rows per parquet row group: ~3 MB at the default spec, the most a streaming reader holds."""

# Segment encoding. crf 20 is visually lossless at this size; `fastdecode` (no CABAC, no deblocking)
# halved the training-time decode (18 vs 37 ms per 16x288x512 segment) for ~10% larger files;
# no B-frames and no scene-cut keyframes: exactly one keyframe per segment.
SEGMENT_CRF = 20
SEGMENT_PRESET = "veryfast"
SEGMENT_X264_PARAMS = "mbtree=0:bframes=0:scenecut=0"
SEGMENT_TUNE = "fastdecode"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("etag", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("mp4", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ClipSpec:
    """How sources are cut into training segments (recorded in dataset.json and every shard)."""

    fps: float = 4.0
    """Frame rate of the segments (the reference samples 16 frames at 4 fps)."""
    short_side: int = 288
    """Short side of the stored frames in pixels (even); training crops are cut from these."""
    frames: int = 16
    """Frames per segment (= the longest clip training can draw from one row)."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"ClipSpec.fps must be > 0, got {self.fps}")
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"ClipSpec.short_side must be even and >= 2, got {self.short_side}")
        if self.frames < 1:
            raise ValueError(f"ClipSpec.frames must be >= 1, got {self.frames}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ClipSpec key(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        return cls(fps=float(data.get("fps", cls.fps)), short_side=int(data.get("short_side", cls.short_side)),
                   frames=int(data.get("frames", cls.frames)))


@dataclass
class Segment:
    index: int
    """Position within the source: 0, 1, ..."""
    start_s: float
    """Time of the first frame, seconds from the start of the source."""
    frames: np.ndarray
    """uint8 (spec.frames, H, W, 3), upright RGB."""
    n_real: int
    """Frames taken from the source; the rest (``pad_short`` only) repeat the last one."""

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


# ---------------------------------------------------------------------------------------------
# Source -> segments


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def _even_floor(x: float) -> int:
    return max(2, int(x) // 2 * 2)


def output_size(width: int, height: int, short_side: int, sample_aspect: Fraction | None = None) -> tuple[int, int]:
    """(width, height) to scale a coded frame to: short side -> ``short_side``, aspect kept
    (non-square pixels made square), both even. Smaller sources are never upscaled (only cut to
    even sizes). A quarter-turn rotation applied afterwards keeps the short side."""
    display_w = width * float(sample_aspect) if sample_aspect and sample_aspect > 0 else float(width)
    short = min(display_w, height)
    if short <= short_side:
        return _even_floor(display_w), _even_floor(height)
    scale = short_side / short
    w = short_side if display_w <= height else _even(display_w * scale)
    h = short_side if height <= display_w else _even(height * scale)
    return w, h


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (display matrix; 0 if none)."""
    try:
        degrees = frame.rotation  # PyAV >= 14: CCW angle from the frame's DISPLAYMATRIX side data
    except (AttributeError, av.error.FFmpegError):
        return 0
    return int(round((degrees or 0) / 90.0)) % 4


def _open_source(data) -> av.container.InputContainer:
    if hasattr(data, "read"):  # a seekable file object (e.g. a buffered S3 reader)
        try:
            return av.open(data, mode="r")
        except (av.error.FFmpegError, UnicodeDecodeError) as err:
            raise VideoDecodeError(f"not a readable media container: {err}") from err
    return open_container(data)


def segment_video(data, spec: ClipSpec = ClipSpec(), *, pad_short: bool = False) -> Iterator[Segment]:
    """Decode a source once, streaming, and yield its consecutive ``spec.frames``-frame segments.

    ``data``: bytes, a path or a seekable binary file object. Each segment is yielded as soon as
    its last frame is decoded; only that window (plus the previous decoded frame) is held, so
    memory does not grow with the video. See ``segment_frames`` for the resampling. Raises
    ``VideoDecodeError`` if the stream breaks mid-way (segments yielded before stay valid).
    """
    container = _open_source(data)
    with container:
        stream = video_stream(container)
        decoded = 0

        def counted() -> Iterator[av.VideoFrame]:
            nonlocal decoded
            for frame in container.decode(stream):
                decoded += 1
                yield frame

        try:
            yield from segment_frames(timed_frames(counted(), stream, spec.fps), spec,
                                      sample_aspect=stream.codec_context.sample_aspect_ratio, pad_short=pad_short)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"decoding failed after {decoded} frames: {err}") from err


def segment_frames(
    frames: Iterable[tuple[float, av.VideoFrame]],
    spec: ClipSpec = ClipSpec(),
    *,
    sample_aspect: Fraction | None = None,
    pad_short: bool = False,
) -> Iterator[Segment]:
    """(time in seconds, decoded frame) pairs in presentation order -> segments, streaming.

    For a caller that decodes anyway (e.g. a probe's audit pass), so a source is decoded once.
    Frames are picked on the time grid ``t0 + k / spec.fps`` (``t0`` = first frame's time): for
    each grid time the nearest frame by timestamp (ties go to the later one), so variable frame
    rates resample correctly; grid times past the last frame are not filled. Only picked frames
    are converted: one swscale pass does pixel format (8/10-bit YUV, odd sizes) -> rgb24 and the
    resize together, with one reformatter per video; then the display-matrix rotation (quarter
    turns) of the first frame is applied. A frame whose time does not increase is skipped.
    """
    reformatter = VideoReformatter()
    step = 1.0 / spec.fps
    t0: float | None = None
    size = turns = None
    window: np.ndarray | None = None
    filled = k = segment = 0
    prev: tuple[float, av.VideoFrame] | None = None
    converted: tuple[av.VideoFrame, np.ndarray] | None = None  # a repeated pick skips swscale

    def convert(frame: av.VideoFrame) -> np.ndarray:
        nonlocal converted
        if converted is None or converted[0] is not frame:
            rgb = frame_rgb(reformatter, frame, width=size[0], height=size[1])
            converted = (frame, np.rot90(rgb, turns) if turns else rgb)
        return converted[1]

    for t, frame in frames:
        if prev is not None and t <= prev[0]:
            continue  # duplicate or out-of-order timestamp: keep the first
        if t0 is None:
            t0 = t
            size = output_size(frame.width, frame.height, spec.short_side, sample_aspect)
            turns = _quarter_turns(frame)
        while t >= t0 + k * step - 1e-9:
            target = t0 + k * step
            pick = prev[1] if prev is not None and target - prev[0] < t - target else frame
            if window is None:
                window = _new_window(spec.frames, size, turns)
            window[filled] = convert(pick)
            filled += 1
            k += 1
            if filled == spec.frames:
                yield Segment(segment, t0 + segment * spec.frames * step, window, spec.frames)
                segment, filled, window = segment + 1, 0, None
        prev = (t, frame)
    if t0 is None:
        raise VideoDecodeError("no decodable frames in video stream")
    if pad_short and segment == 0 and filled > 0:
        window[filled:] = window[filled - 1]
        yield Segment(0, t0, window, filled)


def _new_window(frames: int, size: tuple[int, int], turns: int) -> np.ndarray:
    width, height = size
    if turns % 2:
        width, height = height, width
    return np.empty((frames, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Segment <-> MP4 bytes


def encode_segment(frames: np.ndarray, spec: ClipSpec = ClipSpec(), lossless: bool = False) -> bytes:
    """uint8 (T, H, W, 3) -> H.264 MP4 bytes at ``spec.fps``: one keyframe, no B-frames, fastdecode
    (``lossless``: see ``encode_mp4``)."""
    return encode_mp4(frames, spec.fps, crf=SEGMENT_CRF, gop=len(frames), preset=SEGMENT_PRESET,
                      tune=SEGMENT_TUNE, x264_params=SEGMENT_X264_PARAMS, lossless=lossless)


def decode_segment(mp4: bytes) -> np.ndarray:
    """MP4 bytes of one segment -> uint8 (T, H, W, 3), every frame, in order."""
    container = open_container(mp4)
    with container:
        stream = video_stream(container)
        height, width = stream.codec_context.height, stream.codec_context.width
        out = np.empty((stream.frames or 0, height, width, 3), dtype=np.uint8)
        extra: list[np.ndarray] = []
        reformatter = VideoReformatter()
        n = 0
        try:
            for frame in container.decode(stream):
                rgb = frame_rgb(reformatter, frame)
                if n < len(out):
                    out[n] = rgb
                else:
                    extra.append(rgb)
                n += 1
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"segment decoding failed after {n} frames: {err}") from err
    if extra:
        out = np.concatenate([out, np.stack(extra)])
    if n == 0:
        raise VideoDecodeError("segment holds no decodable frames")
    return out[:n]


# ---------------------------------------------------------------------------------------------
# Segments -> Arrow rows -> shard files


def segment_row(segment: Segment, *, uri: str, etag: str, spec: ClipSpec) -> dict[str, Any]:
    """One shard row (a dict keyed by SHARD_SCHEMA's names); encodes the segment."""
    return {
        "uri": uri,
        "etag": etag,
        "segment": segment.index,
        "start_s": float(segment.start_s),
        "fps": float(spec.fps),
        "n_frames": int(segment.frames.shape[0]),
        "width": segment.width,
        "height": segment.height,
        "mp4": encode_segment(segment.frames, spec),
    }


def video_rows(data, *, uri: str, etag: str, spec: ClipSpec = ClipSpec(), pad_short: bool = False) -> Iterator[dict]:
    """Source -> shard rows, streaming: decode once, encode each segment as soon as it is full."""
    for segment in segment_video(data, spec, pad_short=pad_short):
        yield segment_row(segment, uri=uri, etag=etag, spec=spec)


def shard_metadata(spec: ClipSpec) -> dict[bytes, bytes]:
    return {b"jepa.shard_format": str(SHARD_FORMAT_VERSION).encode(),
            b"jepa.clip_spec": json.dumps(spec.to_dict()).encode()}


def rows_to_table(rows: Iterable[dict[str, Any]], spec: ClipSpec) -> pa.Table:
    """Shard rows -> an Arrow table with SHARD_SCHEMA (and the spec in its metadata)."""
    rows = list(rows)
    columns = {name: [row[name] for row in rows] for name in SHARD_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=SHARD_SCHEMA.with_metadata(shard_metadata(spec)))


def write_shard(table: pa.Table, uri: str, *, shuffle_seed: int | None = None,
                settings: storage.S3Settings | None = None) -> None:
    """Write one shard file (``s3://...`` or a local path): small row groups, no parquet
    compression (the MP4s are compressed already). ``shuffle_seed`` permutes the rows first so
    consecutive rows come from different sources."""
    if shuffle_seed is not None and table.num_rows > 1:
        table = table.take(np.random.default_rng(shuffle_seed).permutation(table.num_rows))
    if table.schema.metadata is None or b"jepa.shard_format" not in table.schema.metadata:
        raise ValueError("not a shard table: build it with rows_to_table (schema metadata missing)")
    # Serialised here and uploaded with boto3: pyarrow's own S3 writer fails on SeaweedFS 4.48
    # (INVALID_ACCESS_KEY_ID on UploadPart) unless AWS_REQUEST_CHECKSUM_CALCULATION=when_required.
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=SHARD_ROW_GROUP_ROWS, compression="none",
                   use_dictionary=["uri", "etag"], write_statistics=["uri", "segment", "start_s"])
    storage.put_bytes(uri, sink.getvalue().to_pybytes(), settings)


# ---------------------------------------------------------------------------------------------
# Reading


def read_shard_spec(schema: pa.Schema) -> ClipSpec | None:
    meta = schema.metadata or {}
    raw = meta.get(b"jepa.clip_spec")
    return ClipSpec.from_dict(json.loads(raw)) if raw else None


def iter_shard_batches(uri: str, columns: list[str] | None = None, batch_rows: int = SHARD_ROW_GROUP_ROWS,
                       settings: storage.S3Settings | None = None) -> Iterator[pa.RecordBatch]:
    """Stream one shard file in record batches (a row group at a time, never the whole file)."""
    filesystem, path = storage.arrow_location(uri, settings)
    # pre_buffer (pyarrow's default) reads every row group of the file ahead: unbounded for big shards.
    with pq.ParquetFile(path, filesystem=filesystem, pre_buffer=False) as reader:
        yield from reader.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def read_shard_rows(path: str, lo: int, hi: int, filesystem: pafs.FileSystem,
                    columns: list[str] | None = None) -> pa.Table:
    """Rows [lo, hi) of the shard file at ``path`` in ``filesystem``: only the row groups that hold
    them are fetched (one, when ranges follow ``SHARD_ROW_GROUP_ROWS``)."""
    with pq.ParquetFile(path, filesystem=filesystem, pre_buffer=False) as shard:
        groups, first, offset = [], 0, 0
        for g in range(shard.metadata.num_row_groups):
            n = shard.metadata.row_group(g).num_rows
            if offset < hi and offset + n > lo:
                first = first if groups else offset
                groups.append(g)
            offset += n
        table = shard.read_row_groups(groups, columns=columns, use_threads=False)
    return table.slice(lo - first, hi - lo)


def load_dataset_info(dataset_uri: str, settings: storage.S3Settings | None = None) -> dict | None:
    """``dataset.json`` of a dataset as a dict, or None if it has none (yet)."""
    try:
        return json.loads(storage.get_bytes(storage.join_uri(dataset_uri, DATASET_JSON), settings))
    except FileNotFoundError:
        return None


def shard_uris(dataset_uri: str, info: dict | None = None, settings: storage.S3Settings | None = None) -> list[str]:
    """The dataset's shard files: ``dataset.json``'s ``shards`` list (paths relative to the dataset
    root, or full URIs; strings or ``{"path": ...}``) when it has one, else every ``*.parquet``
    under ``shards/`` (a dataset written without the ingest job). Sorted, so the order is stable."""
    info = info if info is not None else load_dataset_info(dataset_uri, settings)
    if info is not None and "shards" in info:  # the commit point: even an empty list is the truth
        paths = [entry["path"] if isinstance(entry, dict) else str(entry) for entry in info["shards"]]
        return sorted(p if storage.is_s3(p) or os.path.isabs(p) else storage.join_uri(dataset_uri, p) for p in paths)
    prefix = storage.join_uri(dataset_uri, SHARDS_DIR)
    return sorted(obj.uri for obj in storage.list_objects(prefix, (".parquet",), settings))
