"""A bad-input corpus generated in memory: one small file per case of real-world video trouble.

``CASES`` maps a file name to how to build it and what the probe must say; ``make_corpus()``
builds the bytes. The expectations assume ``SMALL_SPEC`` (a 1 s clip: 4 frames at 4 fps).
Everything is 64x48 (or so) and 0.5-4 s, except the 4K case (4 frames of 3840x2160); the whole
corpus takes about a second to make.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

import av
import numpy as np

from pipelines.shards import ClipSpec

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 (the AV1 case) prints a banner per encoder: errors only


@contextmanager
def scheduling_kept():
    """SVT-AV1 (PyAV's libsvtav1), run as root, switches the calling thread to SCHED_FIFO priority
    99. Every process started after it (SeaweedFS, MLflow, Ray) would inherit real-time priority:
    two such `weed` servers of parallel test workers spun and starved a 2-core machine."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)

SMALL_SPEC = ClipSpec(fps=4.0, short_side=32, frames=4)
"""A 1 s clip: the 2 s videos give two segments, the 0.5 s one none."""


@dataclass(frozen=True)
class Case:
    """How to make one file and what the probe must say about it."""

    build: Callable[[], bytes]
    status: str
    reason: str = ""
    flags: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    """Other ``ProbeResult`` fields the probe must report, e.g. ``{"rotation": 90}``."""


def moving_frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a random texture sliding right 2 px per frame (compresses like video).

    Large frames get a blocky texture (16x16 px cells) so a 4K frame stays cheap to encode."""
    cell = 16 if min(height, width) > 256 else 1
    small = np.random.default_rng(seed).integers(0, 256, (-(-height // cell), -(-width // cell), 3), dtype=np.uint8)
    base = small.repeat(cell, axis=0).repeat(cell, axis=1)[:height, :width]
    return np.stack([np.roll(base, 2 * i * cell, axis=1) for i in range(n)])


def encode(
    frames: np.ndarray,
    fps: float = 8,
    *,
    codec: str = "libx264",
    fmt: str = "mp4",
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    rotation: int = 0,
    audio: bool = False,
    faststart: bool = False,
    options: dict | None = None,
) -> bytes:
    """Encode RGB frames with any PyAV encoder/muxer; ``pts_ms`` gives explicit (VFR) timestamps."""
    path = None
    if faststart:  # the mp4 muxer rewrites the file to move moov first: needs a real file
        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
    target = path or io.BytesIO()
    time_base = Fraction(1, 1000) if pts_ms is not None else Fraction(fps).limit_denominator(1001) ** -1
    try:
        with (scheduling_kept(),
              av.open(target, "w", format=fmt, options={"movflags": "+faststart"} if faststart else {}) as out):
            stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
            stream.codec_context.time_base = time_base
            stream.options = {**({"preset": "ultrafast"} if codec == "libx264" else {}), **(options or {})}
            if rotation:
                stream.set_display_rotation(rotation)
            if audio:
                sound = out.add_stream("aac", rate=16000)
                sound.layout = "mono"
                seconds = len(frames) / fps
                for i in range(int(seconds * 16000) // 1024):
                    chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts = 16000, i * 1024
                    out.mux(sound.encode(chunk))
                out.mux(sound.encode(None))
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = pts_ms[i] if pts_ms is not None else i
                frame.time_base = time_base
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        if path:
            with open(path, "rb") as f:
                return f.read()
        return target.getvalue()
    finally:
        if path:
            os.unlink(path)


def audio_only(cover_art: bool = False) -> bytes:
    """1 s of AAC in MP4; ``cover_art`` adds a JPEG attached picture, as podcasts carry."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=16000)
        sound.layout = "mono"
        if cover_art:
            art = out.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = 64, 48, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(moving_frames(1)[0], format="rgb24")
            picture.pts, picture.time_base = 0, Fraction(1, 1)
            out.mux(art.encode(picture))
            out.mux(art.encode(None))
        for i in range(16):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, i * 1024
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    return buf.getvalue()


def zero_frame_video() -> bytes:
    """A Matroska file whose H.264 track has a header but no frames (an audio track keeps it open)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for i in range(4):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, i * 1024
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
        out.mux(video.encode(None))
    return buf.getvalue()


def image_bytes(fmt: str) -> bytes:
    """A PNG/JPEG still via FFmpeg's own image encoders."""
    codec = {"png": "png", "jpeg": "mjpeg"}[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        frame = av.VideoFrame.from_ndarray(moving_frames(1)[0], format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def corrupt_packets(data: bytes, indices: list[int], seed: int = 5) -> bytes:
    """Overwrite the payload of the given (decode-order) video packets with random bytes in place,
    keeping each sample's 4-byte NAL length so the container stays intact: undecodable frames in
    the middle of an otherwise healthy file."""
    with av.open(io.BytesIO(data)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    out, rng = bytearray(data), np.random.default_rng(seed)
    for i in indices:
        pos, size = packets[i]
        out[pos + 4 : pos + size] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    return bytes(out)


@cache
def two_seconds(faststart: bool = False) -> bytes:
    return encode(moving_frames(16), faststart=faststart)


def vfr_video() -> bytes:
    gaps_ms = [125, 40, 250, 60, 125, 300, 80, 125, 125, 40, 200, 125, 90, 125, 40]
    return encode(moving_frames(16), pts_ms=np.cumsum([0, *gaps_ms]).tolist())


def glitched_video() -> bytes:
    """4 s with a keyframe every second; three packets in the middle are garbage."""
    return corrupt_packets(encode(moving_frames(32), options={"g": "8"}), [10, 11, 17])


CASES: dict[str, Case] = {
    # kept, nothing to report
    "good.mp4": Case(two_seconds, "ok", extra={"codec": "h264", "container": "mp4", "width": 64, "height": 48,
                                               "n_frames": 16, "fps": 8.0, "duration_s": 2.0}),
    "good_with_audio.mov": Case(lambda: encode(moving_frames(16), audio=True, fmt="mov"), "ok",
                                extra={"has_audio": True}),
    # kept, flagged for information
    "too_short.mp4": Case(lambda: encode(moving_frames(4)), "flagged", flags=("too_short",)),
    "odd_size.mp4": Case(lambda: encode(moving_frames(16, 49, 65), codec="mpeg4"), "flagged", flags=("odd_size",),
                         extra={"width": 65, "height": 49}),
    "ten_bit.mp4": Case(lambda: encode(moving_frames(16), pix_fmt="yuv420p10le"), "flagged",
                        flags=("high_bit_depth",), extra={"bit_depth": 10, "pix_fmt": "yuv420p10le"}),
    "vp9.webm": Case(lambda: encode(moving_frames(16), codec="libvpx-vp9", fmt="webm"), "flagged", flags=("vp9",),
                     extra={"container": "webm", "codec": "vp9"}),
    "av1.mkv": Case(lambda: encode(moving_frames(16), codec="libsvtav1", fmt="matroska"), "flagged",
                    flags=("av1",), extra={"container": "matroska", "codec": "av1"}),
    "vfr.mp4": Case(vfr_video, "flagged", flags=("vfr",), extra={"vfr": True}),
    "rotated_phone.mp4": Case(lambda: encode(moving_frames(16), rotation=90), "flagged", flags=("rotated",),
                              extra={"rotation": 90, "width": 48, "height": 64}),
    "uhd_4k.mp4": Case(lambda: encode(moving_frames(4, 2160, 3840), fps=4), "flagged", flags=("oversize",),
                       extra={"width": 3840, "height": 2160}),
    # quarantined
    "empty.mp4": Case(lambda: b"", "quarantined", "zero_bytes"),
    "random_bytes.mp4": Case(lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                             "quarantined", "not_video"),
    "notes.mp4": Case(lambda: b"meeting notes, not a video\n" * 40, "quarantined", "not_video"),
    "cut_no_moov.mp4": Case(lambda: two_seconds()[: len(two_seconds()) // 2], "quarantined", "truncated"),
    "cut_mid_stream.mp4": Case(lambda: two_seconds(True)[: len(two_seconds(True)) * 2 // 3], "quarantined",
                               "truncated"),
    "photo.mp4": Case(lambda: image_bytes("jpeg"), "quarantined", "still_image"),
    "screenshot.mp4": Case(lambda: image_bytes("png"), "quarantined", "still_image"),
    "one_frame.mp4": Case(lambda: encode(moving_frames(1)), "quarantined", "still_image"),
    "podcast.mp4": Case(audio_only, "quarantined", "audio_only"),
    "podcast_cover_art.m4v": Case(lambda: audio_only(cover_art=True), "quarantined", "audio_only"),
    "no_frames.mkv": Case(zero_frame_video, "quarantined", "zero_frames"),
    "glitched.mp4": Case(glitched_video, "quarantined", "corrupt_frames", extra={"corrupt_frames": 3}),
}  # fmt: skip
"""File name (with the extension an uploader would have used) -> Case."""


def make_corpus(names: list[str] | None = None) -> dict[str, bytes]:
    """File name -> bytes for ``names`` (default: every case)."""
    return {name: CASES[name].build() for name in names or CASES}
