"""PyAV stream access shared by every reader of video (clips, segments, the probe): opening a
container, picking its video stream, and its frame rate and frame times, each written once so the
readers agree on them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter


class VideoDecodeError(ValueError):
    """The input is not a decodable video (empty, truncated, no video stream, corrupt)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def open_container(data: bytes | bytearray | memoryview | str | os.PathLike) -> av.container.InputContainer:
    """A PyAV input container over bytes or a path; unreadable bytes raise ``VideoDecodeError``
    (a missing path stays ``FileNotFoundError``)."""
    if isinstance(data, (str, os.PathLike)):
        source = os.fspath(data)
    else:
        if len(data) == 0:
            raise VideoDecodeError("empty input (0 bytes)")
        source = io.BytesIO(data)
    try:
        return av.open(source, mode="r")
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"not a readable media container: {err}") from err


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream, decoding on one thread (parallelism comes from many decodes at once)."""
    if not container.streams.video:
        raise VideoDecodeError("no video stream in container")
    stream = container.streams.video[0]
    stream.thread_count = 1
    return stream


def frame_rgb(reformatter: VideoReformatter, frame: av.VideoFrame, width: int | None = None,
              height: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB of ``frame``, scaled (bilinear) to ``width`` x ``height`` when given, in one
    swscale pass on one thread. FFmpeg 8's swscale otherwise starts a thread per CPU for each scaler
    context, so for every segment decoded: with one decode per core, their start-up and hand-offs
    cost a decode about 20% more CPU whenever its process may run on any core (as Ray's workers do).
    """
    return reformatter.reformat(frame, width=width, height=height, format="rgb24", interpolation="BILINEAR",
                                threads=1).to_ndarray()


def stream_fps(stream) -> float:
    """Nominal frame rate of a stream: average, else guessed, else base rate; 0.0 if none is known."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def stream_start_s(stream) -> float:
    """Time of the stream's start in seconds (frame times are counted from it)."""
    if stream.start_time is None:
        return 0.0
    return float(stream.start_time * (stream.time_base or Fraction(1, 1)))


def timed_frames(frames: Iterable[av.VideoFrame], stream, fallback_fps: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded ``frames`` of ``stream`` as (seconds from the stream's start, frame). A frame without
    a timestamp is placed by its index at the stream's nominal rate (``fallback_fps`` if it has none)."""
    start = stream_start_s(stream)
    rate = stream_fps(stream) or fallback_fps
    for index, frame in enumerate(frames):
        yield (float(frame.time) - start if frame.pts is not None else index / rate), frame
