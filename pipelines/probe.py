"""Probe one source object: is it a usable video, what is in it, and what needs special handling.

``probe_object(data)`` reads the container header with PyAV and then decodes every frame once
(pixels are never converted), because the header alone cannot tell a healthy file from one cut
mid-stream or with garbage in the middle. ``VideoScan`` is the same decode pass as an iterator of
frames, so the ingest transcodes from the frames while the audit runs (one decode per object).

Outcome (``ProbeResult.status``):

- ``quarantined`` with one ``reason`` (the job skips the object and records it):
  ``zero_bytes``, ``not_video`` (bytes no demuxer recognises, or a container with no video or
  audio stream), ``truncated`` (MP4 without its ``moov`` index or with a box cut short; a stream
  that ends before the frame count or duration its header declares; a demuxer error mid-stream),
  ``still_image`` (PNG/JPEG/HEIC... bytes, or a video stream of a single frame), ``audio_only``,
  ``zero_frames`` (a video track without frames), ``corrupt_frames``.
- ``flagged``: kept, with informational ``flags`` for cases the transcoder handles:
  ``too_short`` (fewer frames at the clip rate than one clip: kept in the manifest, yields no
  training segment), ``odd_size``, ``high_bit_depth`` (> 8 bits per sample), ``vp9``, ``av1``
  (decoded natively; re-encoded to the shard codec), ``vfr`` (irregular frame timestamps; clips
  are resampled by timestamp), ``rotated`` (display-matrix rotation, applied at transcode),
  ``oversize`` (larger than 1080p; downscaled straight to the clip size at transcode).
- ``ok``: nothing to report.

Corrupt-frames policy: a file in which any packet fails to decode (or decodes to no picture) is
quarantined as ``corrupt_frames``, with the count in ``corrupt_frames``. Skipping the bad frames
would not be enough: H.264/HEVC decoders conceal errors and the damage spreads through every frame
that references the broken one (up to the next keyframe), and JEPA learns motion, which smeared
or missing frames falsify. A mid-file decode error is also the usual sign of a broken upload.
The count lets an operator find files worth re-fetching.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import av

from pipelines.av_streams import stream_fps, timed_frames

if TYPE_CHECKING:
    import av.container

OK, FLAGGED, QUARANTINED = "ok", "flagged", "quarantined"

QUARANTINE_REASONS = (
    "zero_bytes", "not_video", "truncated", "still_image", "audio_only", "zero_frames", "corrupt_frames",
)  # fmt: skip
FLAGS = ("too_short", "odd_size", "high_bit_depth", "vp9", "av1", "vfr", "rotated", "oversize")

OVERSIZE_LONG, OVERSIZE_SHORT = 1920, 1080
"""Sources beyond 1080p (either side) are flagged ``oversize``."""
TRUNCATION_TOLERANCE = 0.9
"""A stream whose decoded span is below this fraction of its declared duration is truncated."""
VFR_TOLERANCE = 0.1
"""Timestamps are irregular (VFR) when frame intervals spread by more than this fraction of the
mean interval (plus 1.1 ms, the rounding of millisecond time bases such as Matroska's)."""

IMAGE_CODECS = {"png", "apng", "bmp", "tiff", "webp", "jpeg2000", "jpegls", "gif", "qoi", "pam", "ppm", "pgm"}
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
ISO_BOX_TYPES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"moof", b"uuid"}


class ClipSpecLike(Protocol):
    fps: float
    frames: int


@dataclass
class ProbeResult:
    """What one source object is; ``status``/``reason``/``flags`` say what the ingest does with it."""

    container: str = ""
    """Short demuxer name: ``mp4``, ``webm``, ``matroska``, ``avi``, ``png_pipe``..."""
    codec: str = ""
    """Canonical codec name (``h264``, ``hevc``, ``vp9``, ``av1``...), not the decoder's name."""
    width: int = 0
    """Displayed width in pixels, i.e. after ``rotation`` (a 90-degree phone video is portrait)."""
    height: int = 0
    fps: float = 0.0
    """Nominal frame rate; for VFR the mean rate of the decoded timestamps."""
    duration_s: float = 0.0
    """Span of the decoded frames (first timestamp to last plus one frame interval)."""
    n_frames: int = 0
    """Frames actually decoded."""
    rotation: int = 0
    """Counter-clockwise display rotation in degrees: 0, 90, 180 or 270."""
    has_audio: bool = False
    pix_fmt: str = ""
    bit_depth: int = 0
    vfr: bool = False
    corrupt_frames: int = 0
    """Packets that failed to decode or gave no picture, plus frames the decoder marked corrupt."""
    status: str = OK
    reason: str = ""
    """Quarantine reason (one of ``QUARANTINE_REASONS``); empty unless quarantined."""
    detail: str = ""
    """Human-readable explanation of the reason, e.g. the FFmpeg error."""
    flags: list[str] = field(default_factory=list)

    def quarantine(self, reason: str, detail: str = "") -> ProbeResult:
        self.status, self.reason, self.detail = QUARANTINED, reason, detail
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# --- bytes-level sniffing (no FFmpeg) ----------------------------------------------------------


def sniff(data: bytes) -> str:
    """The kind of file the first bytes announce: ``iso`` (MP4/MOV), ``heif``, ``matroska``,
    ``avi``, ``mpegts``, ``mpegps``, ``flv``, ``image`` or ``unknown``."""
    head = data[:16]
    if head[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "heif"
    if head[4:8] in ISO_BOX_TYPES:
        return "iso"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"qoif")):
        return "image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:
        return "mpegts"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpegps"
    if head.startswith(b"FLV"):
        return "flv"
    return "unknown"


def iso_box_problem(data: bytes) -> str:
    """For an MP4/MOV: ``""`` if the top-level boxes are whole and include ``moov``, else why not.

    Only the top-level headers are read (8-16 bytes per box), so this costs nothing.
    """
    pos, end, boxes = 0, len(data), []
    while pos + 8 <= end:
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        header = 8
        if size == 1:  # 64-bit size follows
            if pos + 16 > end:
                return f"box header of {kind!r} cut at byte {end}"
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # box runs to the end of the file
            size = end - pos
        if size < header:
            return f"malformed box {kind!r} at byte {pos}"
        boxes.append(kind)
        if pos + size > end:
            cut = f"{kind.decode('latin-1')!r} box needs {size} bytes at {pos}, file ends at {end}"
            return cut + " (no complete moov)" if kind == b"moov" or b"moov" not in boxes else cut
        pos += size
    if b"moov" not in boxes and b"moof" not in boxes:
        return "no moov box (index missing: upload cut before the end?)"
    return ""


def _container_name(container: av.container.InputContainer, data: bytes) -> str:
    name = container.format.name
    if name.startswith("mov,mp4"):
        return "mp4"
    if name.startswith("matroska"):
        return "webm" if b"webm" in data[:64] else "matroska"
    return name.split(",")[0]


def _codec_name(stream) -> str:
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _bit_depth(pix_fmt: str | None) -> int:
    if not pix_fmt:
        return 0
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.error.FFmpegError):
        return 0


def _declared_duration_s(stream) -> float | None:
    """The video stream's own duration from the header (MP4 ``mdhd``; Matroska ``DURATION`` tag)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION") or (stream.metadata or {}).get("duration")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


# --- the decode pass ---------------------------------------------------------------------------


class VideoScan:
    """Opens ``data``, then ``frames()`` decodes it once while auditing; ``result()`` classifies.

    If the header alone settles the matter (empty, not a video, image, audio only...),
    ``header_verdict`` is the quarantined result and ``frames()`` yields nothing.
    Use as a context manager (closes the container). Never raises for bad input.
    """

    def __init__(self, data: bytes, spec: ClipSpecLike | None = None):
        self.spec = spec
        self.result_ = ProbeResult()
        self.header_verdict: ProbeResult | None = None
        self._container: av.container.InputContainer | None = None
        self._stream = None
        self._kind = ""
        # audit state
        self._packets = self._errors = self._flagged_corrupt = self._frames = 0
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._min_dt, self._max_dt = math.inf, -math.inf
        self._demux_error = ""
        self._open(data)

    def __enter__(self) -> VideoScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _open(self, data: bytes) -> None:
        r = self.result_
        if len(data) == 0:
            self.header_verdict = r.quarantine("zero_bytes", "object is empty")
            return
        self._kind = kind = sniff(data)
        if kind in ("image", "heif"):
            self.header_verdict = r.quarantine("still_image", f"{kind} signature in the first bytes")
            return
        try:
            container = av.open(io.BytesIO(data), mode="r")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            problem = iso_box_problem(data) if kind == "iso" else ""
            if problem or kind in ("iso", "matroska", "avi"):
                self.header_verdict = r.quarantine("truncated", problem or f"{kind} header but unreadable: {err}")
            else:
                self.header_verdict = r.quarantine("not_video", f"no demuxer recognises the bytes: {err}")
            return
        self._container = container
        r.container = _container_name(container, data)
        r.has_audio = bool(container.streams.audio)
        # Cover art (an attached picture, as music and podcast files carry) is not video.
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            problem = iso_box_problem(data) if kind == "iso" else ""
            if problem:
                r.quarantine("truncated", problem)
            elif container.streams.audio:
                art = " (and cover art)" if container.streams.video else ""
                r.quarantine("audio_only", f"{len(container.streams.audio)} audio stream(s){art}, no video stream")
            else:
                r.quarantine("not_video", f"{r.container} container with no video or audio stream")
            self.header_verdict = r
            self.close()
            return
        stream = self._stream = videos[0]
        stream.thread_count = 1  # parallelism comes from running many objects at once
        cc = stream.codec_context
        r.codec = _codec_name(stream)
        r.width, r.height = cc.width, cc.height
        r.pix_fmt = cc.pix_fmt or ""
        r.fps = stream_fps(stream)
        if r.container.endswith("_pipe") or r.container == "image2" or r.codec in IMAGE_CODECS:
            self.header_verdict = r.quarantine("still_image", f"{r.container} container, {r.codec} codec")
            self.close()

    def frames(self) -> Iterator[av.VideoFrame]:
        """Every decodable frame in presentation order; decode errors are counted, not raised."""
        if self._container is None or self.header_verdict is not None:
            return
        stream = self._stream
        try:
            for packet in self._container.demux(stream):
                if packet.size and not packet.is_discard:
                    self._packets += 1
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    self._errors += 1
                    continue
                for frame in decoded:
                    self._audit(frame)
                    yield frame
        except av.error.FFmpegError as err:  # the demuxer gave up: the file ends or breaks early
            self._demux_error = str(err)

    def timed_frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """``frames()`` as (seconds from the stream's start, frame): the input of
        ``pipelines.shards.segment_frames``, so one decode both audits and transcodes. A frame
        without a timestamp is placed at the nominal rate."""
        if self._stream is None:
            return
        yield from timed_frames(self.frames(), self._stream, self.spec.fps if self.spec is not None else 1.0)

    @property
    def sample_aspect(self):
        """The video stream's sample (pixel) aspect ratio, for ``segment_frames``; None if unknown."""
        return self._stream.codec_context.sample_aspect_ratio if self._stream is not None else None

    def _audit(self, frame: av.VideoFrame) -> None:
        r = self.result_
        if self._frames == 0:
            r.rotation = int(round(frame.rotation or 0)) % 360
            r.pix_fmt = frame.format.name
            r.width, r.height = frame.width, frame.height
        self._frames += 1
        self._flagged_corrupt += bool(frame.is_corrupt)
        if frame.pts is None:
            return
        t = float(frame.time)
        if self._last_t is not None:
            dt = t - self._last_t
            self._min_dt, self._max_dt = min(self._min_dt, dt), max(self._max_dt, dt)
        else:
            self._first_t = t
        self._last_t = t

    def result(self) -> ProbeResult:
        """Classify after ``frames()`` was exhausted (or straight away for a header verdict)."""
        if self.header_verdict is not None:
            return self.header_verdict
        r, stream = self.result_, self._stream
        r.n_frames = self._frames
        r.corrupt_frames = max(self._errors, self._packets - self._frames) + self._flagged_corrupt
        timed = self._first_t is not None and self._last_t is not None and self._frames >= 2
        span = 0.0
        if timed:
            span = self._last_t - self._first_t
            mean_dt = span / (self._frames - 1)
            r.vfr = self._max_dt - self._min_dt > VFR_TOLERANCE * mean_dt + 0.0011 or self._min_dt <= 0
            if r.vfr or not r.fps:
                r.fps = 1.0 / mean_dt if mean_dt > 0 else r.fps
            r.duration_s = span + (mean_dt if mean_dt > 0 else 0.0)
        elif self._frames and r.fps:
            r.duration_s = self._frames / r.fps
            span = (self._frames - 1) / r.fps
        r.bit_depth = _bit_depth(r.pix_fmt)
        if r.rotation in (90, 270):
            r.width, r.height = r.height, r.width
        coded_w, coded_h = (r.height, r.width) if r.rotation in (90, 270) else (r.width, r.height)

        # Quarantine, most specific first.
        declared_frames = stream.frames or 0
        declared_s = _declared_duration_s(stream)
        if self._demux_error:
            return r.quarantine("truncated", f"demuxer stopped after {self._frames} frames: {self._demux_error}")
        if declared_frames > 1 and self._packets < declared_frames:
            return r.quarantine("truncated", f"header declares {declared_frames} frames, "
                                             f"stream ends after {self._packets}")
        if timed and declared_s and r.duration_s < TRUNCATION_TOLERANCE * declared_s:
            return r.quarantine("truncated", f"header declares {declared_s:.2f} s, frames end at {r.duration_s:.2f} s")
        if self._frames == 0:
            if self._errors or self._packets:
                return r.quarantine("corrupt_frames", f"none of {self._packets} packets decoded")
            return r.quarantine("zero_frames", "video stream without frames")
        if r.corrupt_frames:
            total = max(self._packets, self._frames)
            return r.quarantine("corrupt_frames", f"{r.corrupt_frames} of {total} frames undecodable")
        if self._frames == 1:
            return r.quarantine("still_image", "video stream of a single frame")

        # Kept: informational flags, in FLAGS order.
        if self.spec is not None and grid_frames(span, self.spec.fps) < self.spec.frames:
            r.flags.append("too_short")
        if coded_w % 2 or coded_h % 2:
            r.flags.append("odd_size")
        if r.bit_depth > 8:
            r.flags.append("high_bit_depth")
        if r.codec in ("vp9", "av1"):
            r.flags.append(r.codec)
        if r.vfr:
            r.flags.append("vfr")
        if r.rotation:
            r.flags.append("rotated")
        if max(coded_w, coded_h) > OVERSIZE_LONG or min(coded_w, coded_h) > OVERSIZE_SHORT:
            r.flags.append("oversize")
        r.status = FLAGGED if r.flags else OK
        return r


def grid_frames(span_s: float, fps: float) -> int:
    """Frames a video whose first and last frames are ``span_s`` apart gives when resampled at
    ``fps`` from its first frame: grid times t0 + k / fps up to the last frame (the rule of
    ``pipelines.shards.segment_video``, so ``too_short`` means exactly "yields no segment")."""
    if span_s < 0 or fps <= 0:
        return 0
    return math.floor(span_s * fps + 1e-9) + 1


def probe_object(data: bytes, spec: ClipSpecLike | None = None) -> ProbeResult:
    """Header probe + one full decode pass (no pixel conversion). ``spec`` (anything with ``fps``
    and ``frames``, e.g. ``pipelines.shards.ClipSpec``) enables the ``too_short`` flag."""
    with VideoScan(data, spec) as scan:
        for _ in scan.frames():
            pass
        return scan.result()
