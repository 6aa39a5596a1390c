import os
import re

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter
from decode_counter import CountingContainer

from pipelines.av_streams import frame_rgb
from pipelines.shards import decode_segment
from pipelines.video import VideoDecodeError, decode_clip, encode_mp4, probe

STEP = 10  # brightness step per frame: survives H.264 + YUV round trips with margin


def indexed_video(n_frames: int, fps: float, height: int = 32, width: int = 32) -> bytes:
    """Frame i is a flat grey of brightness STEP * i, so a decoded frame tells its source index."""
    frames = np.zeros((n_frames, height, width, 3), dtype=np.uint8)
    frames[:] = (np.arange(n_frames) * STEP).astype(np.uint8)[:, None, None, None]
    return encode_mp4(frames, fps)


def frame_indices(clip: np.ndarray) -> list[int]:
    return (clip[:, :, :, :].mean(axis=(1, 2, 3)) / STEP).round().astype(int).tolist()


def test_round_trip_shapes_and_dtype():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)
    data = encode_mp4(frames, fps=8)
    clip = decode_clip(data, num_frames=10, fps=8, size=32, start_s=0.0)
    assert clip.shape == (10, 32, 32, 3) and clip.dtype == np.uint8


def test_probe_reports_stream_metadata():
    info = probe(indexed_video(24, fps=12, height=32, width=48))
    assert info == {"width": 48, "height": 32, "fps": 12.0, "n_frames": 24, "duration_s": 2.0, "codec": "h264"}


def test_frame_conversion_scales_on_the_calling_thread():
    """swscale's default starts a thread per CPU for each scaler; a decode task must not."""
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24").reformat(format="yuv420p")
    threads = len(os.listdir("/proc/self/task"))
    reformatter = VideoReformatter()  # alive, with its scaler, while the threads are counted
    rgb = frame_rgb(reformatter, frame, width=32, height=24)
    assert len(os.listdir("/proc/self/task")) == threads
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8 and abs(int(rgb.mean()) - 200) <= 2


def test_odd_sizes_are_padded_to_even():
    data = encode_mp4(np.zeros((3, 33, 47, 3), dtype=np.uint8), fps=5)
    info = probe(data)
    assert (info["width"], info["height"]) == (48, 34)


@pytest.mark.parametrize(
    "fps, start_s, expected",
    [
        (12, 0.0, list(range(8))),  # native rate
        (4, 0.0, [0, 3, 6, 9, 12, 15, 18, 21]),  # subsample
        (36, 0.0, [round(k * 12 / 36) for k in range(8)]),  # upsample: nearest source frame
        (12, 1.0, list(range(12, 20))),  # start on a keyframe (gop = 12)
        (6, 1.4, [17, 19, 21, 23, 23, 23, 23, 23]),  # seek between keyframes; runs past the end
    ],
)
def test_fps_sampling_picks_nearest_source_frames(fps, start_s, expected):
    data = indexed_video(24, fps=12)
    clip = decode_clip(data, num_frames=8, fps=fps, size=16, start_s=start_s)
    assert frame_indices(clip) == expected


def test_short_video_repeats_last_frame():
    clip = decode_clip(indexed_video(10, fps=10), num_frames=8, fps=5, size=16, start_s=0.0)
    assert frame_indices(clip) == [0, 2, 4, 6, 8, 9, 9, 9]


def test_random_start_fits_and_is_reproducible():
    data = indexed_video(24, fps=12)
    starts = set()
    for seed in range(6):
        a = decode_clip(data, num_frames=6, fps=6, size=16, rng=np.random.default_rng(seed))
        b = decode_clip(data, num_frames=6, fps=6, size=16, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        idx = frame_indices(a)
        assert np.all(np.diff(idx) == 2), idx  # whole clip inside the video: no held last frame
        starts.add(idx[0])
    assert len(starts) > 1


@pytest.mark.parametrize("height, width", [(40, 80), (80, 40)])
def test_resize_short_side_then_centre_crop(height, width):
    """Outer quarters are green and must be cropped away; the centre is red then blue."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    axis = 1 if width > height else 0
    long = max(height, width)
    q = long // 4
    index = [slice(None), slice(None)]
    for (lo, hi), color in [((0, q), (0, 255, 0)), ((q, 2 * q), (255, 0, 0)), ((2 * q, 3 * q), (0, 0, 255)), ((3 * q, long), (0, 255, 0))]:
        index[axis] = slice(lo, hi)
        frame[tuple(index)] = color
    data = encode_mp4(np.stack([frame] * 2), fps=4)
    clip = decode_clip(data, num_frames=1, fps=4, size=20, start_s=0.0)[0].astype(int)
    assert clip.shape == (20, 20, 3)
    first, last = (clip[:, 2], clip[:, -3]) if axis == 1 else (clip[2], clip[-3])
    assert (first[:, 0] > 180).all() and (first[:, 1] < 80).all()  # red edge
    assert (last[:, 2] > 180).all() and (last[:, 1] < 80).all()  # blue edge
    assert (clip[..., 1] < 100).all()  # no green anywhere


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"definitely not a video " * 50, "not a readable media container"),
    ],
)
def test_undecodable_bytes_raise(data, message):
    with pytest.raises(VideoDecodeError, match=message) as info:
        decode_clip(data, num_frames=4, fps=4, size=16)
    assert message in info.value.reason  # the attribute callers classify by carries the why


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_mp4_raises(keep):
    data = indexed_video(24, fps=12)
    with pytest.raises(VideoDecodeError) as info:
        decode_clip(data[: int(len(data) * keep)], num_frames=4, fps=4, size=16)
    # the reason says the bytes are unreadable or break off, not that they are empty or hold no video
    assert re.match(r"not a readable media container|decoding failed after|no decodable frames", info.value.reason)
    with pytest.raises(VideoDecodeError):
        probe(data[: int(len(data) * keep)])


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_clip(str(tmp_path / "missing.mp4"), num_frames=4, fps=4, size=16)


def test_decodes_from_a_path(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(indexed_video(12, fps=12))
    assert frame_indices(decode_clip(str(path), num_frames=3, fps=4, size=16, start_s=0.0)) == [0, 3, 6]


def test_decode_clip_decodes_only_from_the_keyframe_before_to_the_clip_end(monkeypatch):
    """Direct mode's cost: seek to the keyframe at or before the clip, stop at its last frame."""
    import pipelines.video as video

    decoded: list[int] = []
    real_open = video.open_container

    monkeypatch.setattr(video, "open_container",
                        lambda data: CountingContainer(real_open(data), lambda f: decoded.append(round(float(f.time) * 12))))
    data = encode_mp4(np.zeros((120, 16, 16, 3), dtype=np.uint8), fps=12)  # keyframe every 12 frames
    decode_clip(data, num_frames=4, fps=4, size=16, start_s=5.5)  # frames 66, 69, 72, 75
    assert decoded == list(range(60, 76))  # nothing before the keyframe, nothing after the last frame


def test_lossless_mp4_gives_back_every_pixel():
    """Thin, saturated details (a rendered arm) survive exactly; yuv420p at crf 0 does not keep them."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)  # odd sizes, no padding needed
    np.testing.assert_array_equal(decode_segment(encode_mp4(frames, fps=5, lossless=True)), frames)
    lossy = decode_segment(encode_mp4(frames[:, :16, :22], fps=5, crf=0)).astype(int)
    assert np.abs(lossy - frames[:, :16, :22]).mean() > 10
