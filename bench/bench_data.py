"""Training-clip throughput per CPU core and peak memory: reference loader vs direct mode vs shards.

Sources are synthetic H.264 videos at 30 fps (a panning textured background, moving discs and
sensor-like grain), generated once and cached under ``--cache``. Every measurement runs in its
own subprocess pinned to one core, and clips/s per core is clips / (user + sys CPU seconds), so
other jobs on the machine change the wall time but hardly the figure. Each clip is 16 frames at
4 fps randomly cropped and resized to 256x256 (uint8), as training consumes it:

- reference: decord ``VideoReader`` opened per sample + ``get_batch`` of the 16 frame indices at
  full resolution, then the random resized crop (the V-JEPA 2 loader's work). Without decord
  (``--decord-path`` names a folder holding it), PyAV decoding from the start of the file stands in.
- direct: ``pipelines.video.decode_clip`` (seek to the keyframe before the clip, decode to its
  last frame, resize during the RGB conversion), i.e. ``clip_dataset`` without ingest.
- shards: ``pipelines.shard_clips.decode_shard_batch`` on rows streamed from a shard file
  (``decode_segment`` + random resized crop + flip), i.e. ``shard_clip_dataset``'s work.

Ingest throughput is ``segment_video`` + ``encode_segment`` (what ``jepa ingest`` does per source),
in source-video hours per core-hour. Peak RSS of the shard reader is measured on two dataset sizes.

    python bench/bench_data.py                      # ~3-5 min on 2 cores, sources cached in .bench/
    python bench/bench_data.py --decord-path /tmp/decordlib --cpu-seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

RESOLUTIONS = {"1080p": (1920, 1080), "360p": (640, 360)}
SOURCE_FPS = 30
CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 16, 4.0, 256
GOP = 30  # one keyframe per second, as phones and cameras write


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=".bench/data", help="folder for generated sources and shards")
    p.add_argument("--videos", type=int, default=2, help="sources per resolution")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each source")
    p.add_argument("--resolutions", default="1080p,360p")
    p.add_argument("--cpu-seconds", type=float, default=5.0, help="CPU time spent timing each loader")
    p.add_argument("--rss-rows", default="128,1024", help="two shard dataset sizes (rows) for the RSS check")
    p.add_argument("--decord-path", default=None, help="folder holding decord (pip install --target DIR decord)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Sources


def _texture(height: int, width: int, rng) -> "np.ndarray":
    """Smooth colour blobs plus mid-frequency detail, like a scene seen through a lens."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    noise = torch.from_numpy(rng.random((1, 3, height // 16 + 2, width // 16 + 2), dtype=np.float32))
    coarse = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    fine = torch.from_numpy(rng.random((1, 3, height // 2, width // 2), dtype=np.float32))
    fine = F.interpolate(F.avg_pool2d(fine, 3, 1, 1), size=(height, width), mode="bilinear", align_corners=False)
    img = 0.75 * coarse + 0.25 * fine
    img = (img - img.min()) / (img.max() - img.min()) * 235 + 10
    return img[0].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).numpy()


def make_source(path: Path, width: int, height: int, seconds: float, seed: int) -> None:
    """A 30 fps H.264 MP4 written frame by frame (a 1080p video never sits in memory whole)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    n = round(seconds * SOURCE_FPS)
    pan = np.array([rng.uniform(1.0, 3.0), rng.uniform(0.5, 1.5)]) * width / 640  # px per frame
    tex = _texture(height + int(pan[1] * n) + 2, width + int(pan[0] * n) + 2, rng)
    grain = [rng.integers(-3, 4, (height, width, 3), dtype=np.int16) for _ in range(4)]
    discs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-8, 8) * width / 640,
              rng.uniform(-6, 6) * width / 640, rng.uniform(0.04, 0.1) * height,
              rng.integers(0, 256, 3)) for _ in range(5)]
    yy, xx = np.mgrid[0:height, 0:width]
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=SOURCE_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "g": str(GOP)}
        for i in range(n):
            x0, y0 = int(pan[0] * i), int(pan[1] * i)
            frame = tex[y0 : y0 + height, x0 : x0 + width].astype(np.int16) + grain[i % 4]
            for cx, cy, vx, vy, r, color in discs:
                cx, cy = (cx + vx * i) % width, (cy + vy * i) % height
                top, bottom, left, right = int(max(0, cy - r)), int(min(height, cy + r)), int(max(0, cx - r)), int(min(width, cx + r))
                inside = (xx[top:bottom, left:right] - cx) ** 2 + (yy[top:bottom, left:right] - cy) ** 2 < r * r
                frame[top:bottom, left:right][inside] = color
            vf = av.VideoFrame.from_ndarray(frame.clip(0, 255).astype(np.uint8), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, SOURCE_FPS)
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    tmp.rename(path)


def sources(cache: Path, res: str, videos: int, seconds: float) -> list[Path]:
    width, height = RESOLUTIONS[res]
    paths = []
    for i in range(videos):
        path = cache / f"src-{res}-{seconds:g}s-{i}.mp4"
        if not path.exists():
            t = time.perf_counter()
            make_source(path, width, height, seconds, seed=i)
            print(f"  generated {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.0f} s)", flush=True)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own process, pinned to one core, and prints one JSON line.


def _usage() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_loop(make_clip, cpu_seconds: float, max_clips: int = 400) -> dict:
    import numpy as np

    first = make_clip(0)  # warm-up, untimed: first-call costs (codec init, allocator) are not per clip
    assert first.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3) and first.dtype == np.uint8, first.shape
    cpu0, wall0, n = _usage(), time.perf_counter(), 0
    while n < 3 or (_usage() - cpu0 < cpu_seconds and n < max_clips):
        make_clip(n + 1)
        n += 1
    cpu, wall = _usage() - cpu0, time.perf_counter() - wall0
    return {"clips": n, "cpu_s": cpu, "wall_s": wall, "clips_per_core_s": n / cpu}


def worker(job: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from pipelines import shards
    from pipelines.augment import augment_clip
    from pipelines.shard_clips import SHARD_COLUMNS, decode_shard_batch, shard_rows_batch
    from pipelines.video import decode_clip, probe

    base_rss = _peak_rss_mib()
    kind, paths = job["kind"], [Path(p) for p in job.get("paths", [])]
    spec = shards.ClipSpec(fps=CLIP_FPS, short_side=288, frames=CLIP_FRAMES)

    def draw(i: int) -> tuple[Path, float, np.random.Generator]:
        rng = np.random.default_rng(i)
        path = paths[i % len(paths)]
        latest = job["seconds"] - 1 / SOURCE_FPS - (CLIP_FRAMES - 1) / CLIP_FPS
        return path, float(rng.uniform(0, latest)), rng

    if kind == "decord":
        sys.path.insert(0, job["decord_path"])
        import decord

        def make_clip(i):
            path, start_s, rng = draw(i)
            vr = decord.VideoReader(str(path), num_threads=1, ctx=decord.cpu(0))  # opened per sample
            fps = vr.get_avg_fps()
            idx = np.minimum(np.round((start_s + np.arange(CLIP_FRAMES) / CLIP_FPS) * fps).astype(int), len(vr) - 1)
            frames = vr.get_batch(idx.tolist()).asnumpy()  # (16, H, W, 3) at full resolution
            return augment_clip(frames, CLIP_SIZE, rng)

        result = _timed_loop(make_clip, job["cpu_seconds"])
    elif kind == "pyav-from-start":
        import av
        from av.video.reformatter import VideoReformatter

        from pipelines.av_streams import frame_rgb

        def make_clip(i):
            path, start_s, rng = draw(i)
            targets = start_s + np.arange(CLIP_FRAMES) / CLIP_FPS
            frames, k, reformatter = [], 0, VideoReformatter()
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                for frame in container.decode(stream):  # no seek: from the first frame on
                    while k < CLIP_FRAMES and float(frame.time) >= targets[k] - 0.5 / SOURCE_FPS:
                        frames.append(frame_rgb(reformatter, frame))
                        k += 1
                    if k == CLIP_FRAMES:
                        break
            return augment_clip(np.stack(frames), CLIP_SIZE, rng)

        result = _timed_loop(make_clip, job["cpu_seconds"])
    elif kind == "direct":

        def make_clip(i):
            path, start_s, _ = draw(i)
            return decode_clip(str(path), CLIP_FRAMES, CLIP_FPS, CLIP_SIZE, start_s=start_s)

        result = _timed_loop(make_clip, job["cpu_seconds"])
    elif kind == "shards":
        rows = next(shards.iter_shard_batches(job["shard"], columns=["uri", "segment", "mp4"])).to_pylist()  # 32 rows

        def make_clip(i):
            row = rows[i % len(rows)]
            batch = {"uri": np.array([row["uri"]]), "segment": np.array([row["segment"]]),
                     "mp4": np.array([row["mp4"]], dtype=object)}
            return decode_shard_batch(batch, num_frames=CLIP_FRAMES, size=CLIP_SIZE, seed=0, epoch=i)["clip"][0]

        result = _timed_loop(make_clip, job["cpu_seconds"])
    elif kind == "shards-stream":  # the whole shard file, streamed a row group at a time
        cpu0, n = _usage(), 0
        for rows in shards.iter_shard_batches(job["shard"], columns=SHARD_COLUMNS, batch_rows=8):
            out = decode_shard_batch(shard_rows_batch(rows), num_frames=CLIP_FRAMES, size=CLIP_SIZE, seed=0)
            n += len(out["clip"])
        result = {"clips": n, "cpu_s": _usage() - cpu0, "clips_per_core_s": n / (_usage() - cpu0)}
    elif kind == "ingest":
        cpu0, rows, src_s = _usage(), [], 0.0
        for path in paths:
            src_s += probe(str(path))["duration_s"]
            rows += list(shards.video_rows(str(path), uri=f"file://{path}", etag="bench", spec=spec))
        table = shards.rows_to_table(rows, spec)
        cpu = _usage() - cpu0
        reps = max(1, -(-job["rows"] // table.num_rows))
        shards.write_shard(pa_concat([table] * reps).slice(0, job["rows"]), job["shard"])
        for n_rows, out in job.get("extra", []):  # the same segments repeated: bigger datasets
            shards.write_shard(pa_concat([table] * (-(-n_rows // table.num_rows))).slice(0, n_rows), out)
        sizes = table.column("mp4").to_pylist()
        result = {"source_s": src_s, "cpu_s": cpu, "segments": table.num_rows,
                  "segment_kb": sum(map(len, sizes)) / len(sizes) / 1e3,
                  "source_mbit_s": sum(p.stat().st_size for p in paths) * 8 / src_s / 1e6,
                  "shape": [CLIP_FRAMES, int(table.column("height")[0].as_py()), int(table.column("width")[0].as_py())]}
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    result.update(peak_rss_mib=_peak_rss_mib(), base_rss_mib=base_rss)
    return result


def pa_concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def run_worker(job: dict) -> dict:
    """Run one measurement in a fresh interpreter pinned to one core."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.worker:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any library starts threads
        print(json.dumps(worker(json.loads(args.worker))))
        return

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    resolutions = args.resolutions.split(",")
    rss_small, rss_large = (int(x) for x in args.rss_rows.split(","))
    reference = "decord" if args.decord_path else "pyav-from-start"
    t_start = time.perf_counter()
    print(f"[bench-data] sources: {args.videos} x {args.seconds:g} s per resolution at {SOURCE_FPS} fps, cache {cache}")
    common = {"seconds": args.seconds, "cpu_seconds": args.cpu_seconds, "decord_path": args.decord_path}
    rows, ingest, rss = [], {}, {}
    for res in resolutions:
        paths = [str(p) for p in sources(cache, res, args.videos, args.seconds)]
        shard = str(cache / f"shards-{res}-{rss_small}.parquet")
        big = str(cache / f"shards-{res}-{rss_large}.parquet")
        print(f"[bench-data] {res}: ingest", flush=True)
        ingest[res] = run_worker({**common, "kind": "ingest", "paths": paths, "shard": shard, "rows": rss_small,
                                  "extra": [[rss_large, big]]})
        for kind in (reference, "direct", "shards"):
            print(f"[bench-data] {res}: {kind}", flush=True)
            rows.append((res, kind, run_worker({**common, "kind": kind, "paths": paths, "shard": shard})))
        if res == resolutions[0]:
            print(f"[bench-data] {res}: shard reader RSS at {rss_small} and {rss_large} rows", flush=True)
            rss = {n: run_worker({**common, "kind": "shards-stream", "shard": s}) for n, s in ((rss_small, shard), (rss_large, big))}

    print(f"\n[bench-data] done in {time.perf_counter() - t_start:.0f} s\n")
    label = {"decord": "reference (decord per sample)", "pyav-from-start": "reference stand-in (PyAV from file start)",
             "direct": "direct mode (`decode_clip`)", "shards": "shards (`decode_shard_batch`)"}
    print("| source | loader | clips/s per core | vs reference | peak RSS MiB (over imports) |")
    print("|---|---|---:|---:|---:|")
    targets = []
    for res in resolutions:
        ref = next(r for s, k, r in rows if s == res and k == reference)["clips_per_core_s"]
        for s, kind, r in rows:
            if s != res:
                continue
            ratio = r["clips_per_core_s"] / ref
            print(f"| {res} H.264 30 fps | {label[kind]} | {r['clips_per_core_s']:.2f} | {ratio:.1f}x | "
                  f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - r['base_rss_mib']:.0f}) |")
            if kind == "shards":
                targets.append((f"shards >= {10 if res == '1080p' else 3}x reference on {res}", ratio >= (10 if res == "1080p" else 3)))
            if kind == "direct":
                targets.append((f"direct >= 1.0x reference on {res}", ratio >= 1.0))
    print("\n| source | source bitrate | ingest: source h per core-h | segments | segment size | segment frames |")
    print("|---|---:|---:|---:|---:|---|")
    for res, r in ingest.items():
        t, h, w = r["shape"]
        print(f"| {res} | {r['source_mbit_s']:.1f} Mbit/s | {r['source_s'] / r['cpu_s']:.2f} | {r['segments']} | "
              f"{r['segment_kb']:.0f} kB | {t}x{h}x{w} |")
    if rss:
        (n1, r1), (n2, r2) = rss.items()
        print(f"\nShard reader, whole file streamed ({resolutions[0]} segments): peak RSS {r1['peak_rss_mib']:.0f} MiB "
              f"at {n1} rows, {r2['peak_rss_mib']:.0f} MiB at {n2} rows ({r2['clips_per_core_s']:.1f} clips/s per core).")
    print("\nTargets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets))


if __name__ == "__main__":
    main()
