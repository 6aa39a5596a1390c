"""Ingest's per-source CPU cost: probe and transcode in one decode pass versus two.

The probe must decode every frame (a header cannot reveal a stream cut mid-way or undecodable
frames in the middle). ``jepa ingest`` therefore feeds the probe's decoded frames straight into
the segmenter (``pipelines.ingest.probe_and_transcode``) instead of decoding again for the
transcode (``pipelines.shards.video_rows``). This prints CPU seconds (user + sys of this process,
so other jobs on the machine hardly matter) per minute of 30 fps source for: the probe alone, the
transcode alone, the two run one after the other, and the single pass ingest uses.

    python bench/bench_probe.py                     # ~1 min on 2 cores
    python bench/bench_probe.py --seconds 4 --resolutions 1080p
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.ingest import probe_and_transcode  # noqa: E402
from pipelines.probe import probe_object  # noqa: E402
from pipelines.shards import ClipSpec, video_rows  # noqa: E402
from pipelines.storage import ObjectInfo  # noqa: E402

RESOLUTIONS = {"4k": (3840, 2160), "1080p": (1920, 1080), "360p": (640, 360)}


def source(width: int, height: int, seconds: float, fps: int = 30) -> bytes:
    """A panning textured H.264 source with a keyframe per second, as cameras write."""
    import io

    rng = np.random.default_rng(0)
    cell = 16
    texture = rng.integers(0, 256, (height // cell + 1, 2 * width // cell + 1, 3), dtype=np.uint8)
    texture = texture.repeat(cell, 0).repeat(cell, 1)[:height]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(fps)}
        for i in range(int(seconds * fps)):
            x = (i * 8) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, x : x + width]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def cpu_seconds(fn) -> float:
    start = os.times()
    fn()
    end = os.times()
    return (end.user - start.user) + (end.system - start.system)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0, help="length of each source")
    p.add_argument("--resolutions", default="1080p,4k")
    p.add_argument("--repeats", type=int, default=2, help="best of N")
    args = p.parse_args()
    spec = ClipSpec()
    print(f"clip spec {spec}; CPU seconds per minute of 30 fps source (best of {args.repeats})")
    print(f"{'source':>8} {'probe':>7} {'transcode':>10} {'two passes':>11} {'one pass':>9} {'saved':>6}")
    for name in args.resolutions.split(","):
        t = time.time()
        data = source(*RESOLUTIONS[name], args.seconds)
        made = time.time() - t
        obj = ObjectInfo("s3://bench/source.mp4", len(data), "etag")

        def best(fn) -> float:
            return min(cpu_seconds(fn) for _ in range(args.repeats)) * 60 / args.seconds

        probe = best(lambda: probe_object(data, spec))
        transcode = best(lambda: list(video_rows(data, uri=obj.uri, etag=obj.etag, spec=spec)))
        one = best(lambda: probe_and_transcode(data, obj, spec))
        two = probe + transcode
        print(f"{name:>8} {probe:7.1f} {transcode:10.1f} {two:11.1f} {one:9.1f} {1 - one / two:6.0%}"
              f"   ({len(data) / 1e6:.1f} MB source made in {made:.0f} s)")


if __name__ == "__main__":
    main()
