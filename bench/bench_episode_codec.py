"""What the episode video codec does to a reacher arm, next to how far one agent step moves it.

A world model learns the change between agent steps. If the codec changes the frames by more than
the arm moves, the model learns the codec's noise. This records one random-exploration episode as
the recorder does, encodes it several ways and prints, per encoding: bytes, decode time and the
mean / max absolute pixel error against the renders, beside the mean pixel change over one control
step and one agent step (``frameskip`` control steps).

    python bench/bench_episode_codec.py        # ~10 s
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.mujoco_record import RecordConfig, render_episode  # noqa: E402
from pipelines.shards import decode_segment  # noqa: E402
from pipelines.video import encode_mp4  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="reacher")
    ap.add_argument("--img-size", type=int, default=64)
    args = ap.parse_args()
    cfg = RecordConfig(env=args.env, episodes=1, img_size=args.img_size)
    spec, _, frames, _, _ = render_episode(cfg, 0)
    f = frames.astype(np.int16)
    print(f"{args.env} at {args.img_size} px, {len(frames)} frames; mean pixel change over one control step "
          f"{np.abs(np.diff(f, axis=0)).mean():.2f}, over one agent step ({cfg.frameskip} control steps) "
          f"{np.abs(f[cfg.frameskip:] - f[: -cfg.frameskip]).mean():.2f}")
    print(f"{'encoding':<22}{'kB':>6}{'decode ms':>11}{'mean err':>10}{'max err':>9}")
    for name, kwargs in (("yuv420p crf 18", {"crf": 18}), ("yuv420p crf 0", {"crf": 0}),
                         ("rgb lossless", {"lossless": True})):
        data = encode_mp4(frames, spec.fps, **kwargs)
        t0 = time.perf_counter()
        back = decode_segment(data).astype(np.int16)
        ms = (time.perf_counter() - t0) * 1e3
        err = np.abs(back - f)
        print(f"{name:<22}{len(data) / 1e3:>6.0f}{ms:>11.0f}{err.mean():>10.2f}{err.max():>9d}")


if __name__ == "__main__":
    main()
