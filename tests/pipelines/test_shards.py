import io
import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from decode_counter import CountingContainer

from pipelines import shards
from pipelines.shards import (
    SHARD_SCHEMA,
    ClipSpec,
    decode_segment,
    encode_segment,
    output_size,
    rows_to_table,
    segment_video,
    shard_uris,
    video_rows,
    write_shard,
)
from pipelines.video import VideoDecodeError, encode_mp4

STEP = 10  # brightness step per source frame: survives two H.264 round trips with margin
SPEC = ClipSpec(fps=6.0, short_side=32, frames=4)


def encode_timed(frames: np.ndarray, times_s: list[float], *, pix_fmt: str = "yuv420p", rotation: float | None = None) -> bytes:
    """H.264 MP4 with explicit per-frame timestamps (ms), optional display rotation and pixel format."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for rgb, t in zip(frames, times_s):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def indexed_frames(n: int, height: int = 48, width: int = 64, step: int = STEP) -> np.ndarray:
    """Frame i is a flat grey of brightness step * i (mod 256): a decoded frame tells its index."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    frames[:] = (np.arange(n) * step % 256).astype(np.uint8)[:, None, None, None]
    return frames


def indices(frames: np.ndarray, step: int = STEP) -> list[int]:
    return (frames.mean(axis=(1, 2, 3)) / step).round().astype(int).tolist()


def test_clip_spec_dict_round_trip_and_validation():
    spec = ClipSpec(fps=2.5, short_side=128, frames=8)
    assert ClipSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ClipSpec() == ClipSpec(4.0, 288, 16)
    with pytest.raises(ValueError, match="unknown ClipSpec key"):
        ClipSpec.from_dict({"fps": 4, "size": 3})
    for bad in ({"short_side": 287}, {"fps": 0}, {"frames": 0}):
        with pytest.raises(ValueError):
            ClipSpec(**bad)


@pytest.mark.parametrize(
    "width, height, sar, expected",
    [
        (1920, 1080, None, (512, 288)),
        (1080, 1920, None, (288, 512)),
        (3840, 2160, None, (512, 288)),
        (1440, 1080, Fraction(4, 3), (512, 288)),  # anamorphic: square pixels out
        (640, 480, None, (384, 288)),
        (64, 48, None, (64, 48)),  # never upscaled
        (47, 33, None, (46, 32)),  # odd sizes cut to even
    ],
)
def test_output_size(width, height, sar, expected):
    assert output_size(width, height, 288, sar) == expected


def test_round_trip_resamples_by_time_and_keeps_frame_count():
    """32 frames at 12 fps -> 6 fps picks every 2nd frame; 16 grid times fill four 4-frame segments."""
    data = encode_mp4(indexed_frames(32, step=8), fps=12)
    segments = list(segment_video(data, SPEC))
    from_file = list(segment_video(io.BytesIO(data), SPEC))  # a seekable file object works too
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(segments, from_file)) and len(from_file) == 4
    assert [s.index for s in segments] == [0, 1, 2, 3]
    assert [s.start_s for s in segments] == pytest.approx([0, 4 / 6, 8 / 6, 12 / 6])
    for s in segments:
        assert s.frames.shape == (4, 32, 42, 3) and s.frames.dtype == np.uint8 and s.n_real == 4
        mp4 = encode_segment(s.frames, SPEC)
        decoded = decode_segment(mp4)
        assert decoded.shape == (4, 32, 42, 3) and decoded.dtype == np.uint8
        assert indices(decoded, step=8) == [2 * (4 * s.index + k) for k in range(4)]


def test_segment_mp4_is_one_gop_at_spec_fps():
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    frames[2:] = 255 - frames[2:]  # a scene cut must not add a keyframe
    mp4 = encode_segment(frames, SPEC)
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(6.0) and stream.frames == 4
        keyframes = [p.is_keyframe for p in container.demux(stream) if p.size]
    assert keyframes == [True, False, False, False]


def test_short_video_gives_no_segment_unless_padded():
    data = encode_mp4(indexed_frames(12), fps=6)  # 12 frames = 3 segments of 4
    assert len(list(segment_video(data, SPEC))) == 3
    short = encode_mp4(indexed_frames(3), fps=6)
    assert list(segment_video(short, SPEC)) == []
    (padded,) = segment_video(short, SPEC, pad_short=True)
    assert padded.n_real == 3 and indices(padded.frames) == [0, 1, 2, 2]


def test_variable_frame_rate_is_resampled_by_timestamp():
    times = [0, 0.1, 0.15, 0.5, 0.55, 0.9, 1.0, 1.3, 1.5, 1.62, 1.8, 2.2]
    data = encode_timed(indexed_frames(len(times), 32, 32), times)
    spec = ClipSpec(fps=4, short_side=32, frames=4)
    got = [indices(s.frames) for s in segment_video(data, spec)]
    # grid 0, .25, .5, ...: nearest timestamp, ties (2.0 between 1.8 and 2.2) to the later frame
    expected = []
    for k in range(9):
        target = k / 4
        expected.append(min(range(len(times)), key=lambda i: (abs(times[i] - target), -i)))
    assert got == [expected[0:4], expected[4:8]]  # 2.25 s is past the last frame: remainder dropped


@pytest.mark.parametrize("degrees, white_edge", [(90, "bottom"), (-90, "top"), (180, "right")])
def test_display_rotation_is_applied(degrees, white_edge):
    """A 64x32 frame whose left quarter is white, shown rotated: the white edge moves accordingly."""
    frames = np.zeros((4, 32, 64, 3), dtype=np.uint8)
    frames[:, :, :16] = 255
    data = encode_timed(frames, [i / 6 for i in range(4)], rotation=degrees)
    (segment,) = segment_video(data, SPEC)
    img = segment.frames[0].mean(axis=2)
    if degrees == 180:
        assert segment.frames.shape == (4, 32, 64, 3)
    else:
        assert segment.frames.shape == (4, 64, 32, 3)
    edges = {"top": img[:4].mean(), "bottom": img[-4:].mean(), "left": img[:, :4].mean(), "right": img[:, -4:].mean()}
    assert max(edges, key=edges.get) == white_edge and edges[white_edge] > 200


@pytest.mark.parametrize("pix_fmt, height, width, expected", [
    ("yuv420p10le", 40, 64, (32, 52)),  # 10-bit 4:2:0
    ("yuv444p10le", 33, 47, (32, 46)),  # 10-bit 4:4:4 with odd sizes
    ("yuv444p", 31, 45, (30, 44)),  # odd and smaller than short_side: not upscaled, cut to even
])
def test_ten_bit_and_odd_sized_sources(pix_fmt, height, width, expected):
    data = encode_timed(indexed_frames(4, height, width), [i / 6 for i in range(4)], pix_fmt=pix_fmt)
    (segment,) = segment_video(data, SPEC)
    assert segment.frames.shape == (4, *expected, 3) and indices(segment.frames) == [0, 1, 2, 3]


def test_segments_stream_while_decoding(monkeypatch):
    """The first segment arrives after decoding about its own frames, not the whole video."""
    decoded = []
    real_open = shards._open_source

    monkeypatch.setattr(shards, "_open_source",
                        lambda data: CountingContainer(real_open(data), lambda frame: decoded.append(frame.pts)))
    segments = segment_video(encode_mp4(indexed_frames(300, 16, 16), fps=30), SPEC)
    first = next(segments)
    assert first.index == 0 and len(decoded) <= 17  # 4 picks, every 5th frame, + one look-ahead
    segments.close()


def test_undecodable_sources_raise():
    with pytest.raises(VideoDecodeError):
        list(segment_video(b"", SPEC))
    with pytest.raises(VideoDecodeError):
        list(segment_video(b"not a video at all" * 100, SPEC))


def test_rows_table_write_read(tmp_path):
    data = encode_mp4(indexed_frames(40), fps=30)
    rows = list(video_rows(data, uri="s3://b/raw/a.mp4", etag="e1", spec=SPEC))
    rows += list(video_rows(encode_mp4(indexed_frames(20), fps=30), uri="s3://b/raw/b.mp4", etag="e2", spec=SPEC))
    table = rows_to_table(rows, SPEC)
    assert table.schema.equals(SHARD_SCHEMA) and table.num_rows == 3
    assert table.column("segment").to_pylist() == [0, 1, 0]
    assert set(table.column("width").to_pylist()) == {42} and set(table.column("n_frames").to_pylist()) == {4}

    dataset = tmp_path / "datasets" / "d"
    write_shard(table, str(dataset / "shards" / "part-0.parquet"), shuffle_seed=0)
    write_shard(table.slice(0, 1), str(dataset / "shards" / "part-1.parquet"))
    uris = shard_uris(str(dataset))
    assert [u.rsplit("/", 1)[1] for u in uris] == ["part-0.parquet", "part-1.parquet"]
    meta = pq.ParquetFile(uris[0]).metadata
    assert meta.num_rows == 3 and meta.row_group(0).num_rows <= shards.SHARD_ROW_GROUP_ROWS
    assert shards.read_shard_spec(pq.read_schema(uris[0])) == SPEC
    back = [row for batch in shards.iter_shard_batches(uris[0]) for row in batch.to_pylist()]
    assert sorted((r["uri"], r["segment"]) for r in back) == [("s3://b/raw/a.mp4", 0), ("s3://b/raw/a.mp4", 1),
                                                             ("s3://b/raw/b.mp4", 0)]
    for row in back:
        assert indices(decode_segment(row["mp4"]))[0] == 5 * 4 * row["segment"]

    # dataset.json's shard list wins over listing the folder
    (dataset / "dataset.json").write_text(json.dumps({"clip_spec": SPEC.to_dict(), "shards": ["shards/part-1.parquet"]}))
    assert shard_uris(str(dataset)) == [str(dataset / "shards" / "part-1.parquet")]


def test_read_shard_rows_reads_a_range_across_row_groups(tmp_path):
    path = str(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"segment": list(range(70)), "uri": [f"v{i}" for i in range(70)]}), path,
                   row_group_size=shards.SHARD_ROW_GROUP_ROWS)
    local = pafs.LocalFileSystem()
    assert shards.read_shard_rows(path, 30, 40, local, columns=["segment"])["segment"].to_pylist() == list(range(30, 40))
    assert shards.read_shard_rows(path, 64, 70, local).column("uri").to_pylist() == [f"v{i}" for i in range(64, 70)]
    assert shards.read_shard_rows(path, 0, 32, local).num_rows == 32
