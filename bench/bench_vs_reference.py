"""Our pretraining step beside the reference's (facebookresearch/vjepa2), timed the same way in one run.

Runs bench/bench_train_step.py and a reference anchor script in turn, each in its own process, for
each setting, and prints a table with the ratio ours / reference in clips/s. The anchor (--anchor or
$VJEPA2_ANCHOR; not part of this repository) builds the reference's own modules from $VJEPA2_REF
(default .ref/vjepa2: a fetched snapshot, never committed), takes the flags --model vit_ARCH --bs
--frames --crop --steps --warmup [--ckpt], and prints a JSON line with `clips_per_s` and
`peak_mem_gib`, timed as bench_train_step.py times ours. Meant for a GPU (bf16); on CPU use a small
--arch/--crop.

    VJEPA2_ANCHOR=PATH python bench/bench_vs_reference.py --arch large --bs 24 --settings ckpt,no-ckpt,compile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    """The last JSON line a benchmark prints; its stderr passes through."""
    out = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="large", help="our preset name (the reference's is vit_<arch>)")
    p.add_argument("--bs", type=int, default=24)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settings", default="ckpt,no-ckpt,compile",
                   help="comma list of no-ckpt, ckpt, compile, ckpt+compile (ours compiled beside the eager reference)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak (H200: ~790)")
    p.add_argument("--anchor", default=os.environ.get("VJEPA2_ANCHOR"),
                   help="the reference step script (default $VJEPA2_ANCHOR); see the module docstring")
    a = p.parse_args()
    if not a.anchor:
        p.error("no reference anchor: pass --anchor PATH or set VJEPA2_ANCHOR")
    env = os.environ | {"VJEPA2_REF": os.environ.get("VJEPA2_REF", str(ROOT / ".ref" / "vjepa2")),
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    device = "cuda" if _cuda() else "cpu"
    rows, references = [], {}
    for setting in a.settings.split(","):
        flags = set(setting.split("+"))
        if not flags <= {"ckpt", "no-ckpt", "compile"}:
            p.error(f"unknown setting {setting!r}")
        ckpt = ["--ckpt"] if "ckpt" in flags else []
        compiled = ["--compile"] if "compile" in flags else []
        ours = run_json([sys.executable, "bench/bench_train_step.py", "--arch", a.arch, "--batch-size", str(a.bs),
                         "--frames", str(a.frames), "--img-size", str(a.crop), "--steps", str(a.steps),
                         "--warmup", str(a.warmup), "--device", device, "--json", "--peak-tflops", str(a.peak_tflops),
                         *ckpt, *compiled], env)
        if bool(ckpt) not in references:  # the reference runs eager, once per checkpointing choice
            references[bool(ckpt)] = run_json([sys.executable, a.anchor, "--model", f"vit_{a.arch}", "--bs", str(a.bs),
                                               "--frames", str(a.frames), "--crop", str(a.crop), "--steps",
                                               str(a.steps), "--warmup", str(a.warmup), *ckpt], env)
        rows.append((setting, ours, references[bool(ckpt)]))
    print(f"ViT-{a.arch} + predictor 12x384, {a.frames}x{a.crop}x{a.crop}, batch {a.bs}, {device}"
          f"{' bf16' if device == 'cuda' else ''}, median of {a.steps} steps after {a.warmup} warm-up")
    print("| setting | ours clips/s | TFLOP/step | TFLOP/s | of peak | ours peak GiB | reference clips/s (eager) "
          "| ours / reference | reference peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting, ours, ref in rows:
        print(f"| {setting} | {ours['clips_per_s']:.1f} | {ours['step_tflop']:.1f} | {ours['tflop_per_s']:.0f} "
              f"| {100 * ours['fraction_of_peak']:.0f}% | {ours['peak_mem_gib']} | {ref['clips_per_s']:.1f} "
              f"| {ours['clips_per_s'] / ref['clips_per_s']:.2f} | {ref['peak_mem_gib']} |")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
