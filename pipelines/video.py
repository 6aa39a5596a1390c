"""PyAV helpers: encode frames to H.264 MP4, probe a video, decode one fixed-rate clip from it.

Clips are sampled on a fixed time grid (``fps``) rather than by frame index so that videos
recorded at different rates give clips covering the same span of time.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipelines.av_streams import (
    VideoDecodeError, frame_rgb, open_container, stream_fps, stream_start_s, timed_frames, video_stream,
)  # fmt: skip


def encode_mp4(
    frames: np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    gop: int | None = None,
    preset: str = "veryfast",
    threads: int = 1,
    tune: str | None = None,
    x264_params: str = "mbtree=0",
    lossless: bool = False,
) -> bytes:
    """H.264 (yuv420p) MP4 bytes; odd sizes are edge-padded to even (yuv420p needs even sizes).

    ``lossless``: RGB H.264 at quantiser 0 (libx264rgb), bit-exact frames at ~4x the bytes. For
    simulator renders: yuv420p halves the colour resolution, which moves a 64 px reacher arm's
    pixels by more (2.4 per pixel even at crf 0) than one agent step of motion does (1.7);
    bench/bench_episode_codec.py.

    ``gop`` defaults to one keyframe per second so random clip access seeks cheaply.
    ``threads=1`` because callers parallelise across videos, not within one tiny video.
    ``tune`` (e.g. ``fastdecode``) and ``x264_params`` go to libx264 as they are.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    pad_h, pad_w = (0, 0) if lossless else (frames.shape[1] % 2, frames.shape[2] % 2)
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264rgb" if lossless else "libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.codec_context.thread_count = threads
        gop = gop or max(1, round(float(rate)))
        # mbtree=0: with it, x264 gave different bytes for identical input now and then (seen at 64 px).
        options = {"crf": "0" if lossless else str(crf), "preset": preset, "g": str(gop), "x264-params": x264_params}
        stream.options = options | ({"tune": tune} if tune else {})
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe(data: bytes | str | os.PathLike) -> dict:
    """Container metadata without decoding: width, height, fps, n_frames, duration_s, codec."""
    container = open_container(data)
    with container:
        stream = video_stream(container)
        fps, duration = stream_fps(stream), _duration_s(container, stream)
        n_frames = stream.frames or round(duration * fps)
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": fps,
            "n_frames": int(n_frames),
            "duration_s": duration,
            "codec": stream.codec_context.name,
        }


def _resize_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """Dimensions with the short side = ``size`` (aspect ratio kept)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _to_rgb(frame: av.VideoFrame, size: int, reformatter: VideoReformatter) -> np.ndarray:
    """Short side -> ``size`` with swscale (one pass with the RGB conversion), then centre crop.

    One reformatter per clip: ``frame.to_ndarray(width=...)`` builds a new scaler per frame,
    which cost 10-40x the scaling itself. swscale's bilinear widens its kernel when shrinking.
    """
    width, height = _resize_dims(frame.width, frame.height, size)
    top, left = (height - size) // 2, (width - size) // 2
    return frame_rgb(reformatter, frame, width=width, height=height)[top : top + size, left : left + size]


def decode_clip(
    data: bytes | str | os.PathLike,
    num_frames: int,
    fps: float,
    size: int,
    start_s: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``num_frames`` RGB frames at ``fps`` from ``start_s`` -> uint8 (num_frames, size, size, 3).

    For each target time ``start_s + k / fps`` the nearest source frame is taken (ties go to the
    later one). Without ``start_s`` the start is drawn uniformly from ``rng`` so the clip fits in
    the video (0 when ``rng`` is None too); a video shorter than the clip repeats its last frame.
    Decoding stops after the last needed frame.
    """
    if num_frames < 1 or fps <= 0 or size < 1:
        raise ValueError(f"need num_frames >= 1, fps > 0, size >= 1; got {num_frames}, {fps}, {size}")
    container = open_container(data)
    with container:
        stream = video_stream(container)
        src_fps = stream_fps(stream)
        if start_s is None:
            last_frame_s = _duration_s(container, stream) - (1 / src_fps if src_fps else 0.0)
            latest = max(0.0, last_frame_s - (num_frames - 1) / fps)
            start_s = float(rng.uniform(0.0, latest)) if rng is not None and latest > 0 else 0.0
        targets = start_s + np.arange(num_frames) / fps

        clip = np.empty((num_frames, size, size, 3), dtype=np.uint8)
        reformatter = VideoReformatter()
        k = 0
        prev: tuple[float, av.VideoFrame] | None = None
        converted: tuple[av.VideoFrame, np.ndarray] | None = None  # repeats skip swscale

        def take(frame: av.VideoFrame) -> None:
            nonlocal k, converted
            if converted is None or converted[0] is not frame:
                converted = (frame, _to_rgb(frame, size, reformatter))
            clip[k] = converted[1]
            k += 1

        try:
            if start_s > 0:
                # Lands on the keyframe at or before start; frames before it are decoded, not converted.
                offset = int((start_s + stream_start_s(stream)) / (stream.time_base or Fraction(1, 1)))
                container.seek(offset, stream=stream, backward=True, any_frame=False)
            for t, frame in timed_frames(container.decode(stream), stream, fps):
                while k < num_frames and t >= targets[k]:
                    use_prev = prev is not None and targets[k] - prev[0] < t - targets[k]
                    take(prev[1] if use_prev else frame)
                if k == num_frames:
                    break
                prev = (t, frame)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"decoding failed after {k} of {num_frames} frames: {err}") from err
        if k < num_frames:
            if prev is None:
                raise VideoDecodeError("no decodable frames in video stream")
            while k < num_frames:  # clip runs past the end: hold the last frame
                take(prev[1])
    return clip


def decode_video(data: bytes | str | os.PathLike, fps: float, size: int, max_frames: int | None = None) -> np.ndarray:
    """The whole video (up to ``max_frames``) at ``fps`` from its start -> uint8 (F, size, size, 3):
    what surprise scoring slides its windows over."""
    info = probe(data)
    n_frames = max(1, int(info["duration_s"] * fps + 1e-6))
    if max_frames is not None:
        n_frames = min(n_frames, max_frames)
    return decode_clip(data, n_frames, fps, size, start_s=0.0)
