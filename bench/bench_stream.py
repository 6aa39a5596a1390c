"""The training data stream against the function it runs: clips per CPU-second, first batch, scale-out.

``bench_data.py`` measures ``decode_shard_batch``, the per-row function, in one pinned process.
Training gets the whole Ray Data stream (``shard_clip_dataset``: read tasks, decode tasks, the
object store, batches built in the consumer). This bench measures both in one run on the same
shards in the bucket, with the clip spec and masks of ``configs/vitl16.yaml`` (16 frames at 4 fps,
256 px, its mask configs):

- **function**: ``decode_shard_batch`` over every row, in N subprocesses at once, each pinned to
  its own core (N = the stream's decode CPUs, so both see the same load on the cores);
  clips / (user + sys CPU seconds).
- **stream**: a fresh Ray node started by the bench (``ray start --head --num-cpus N``), the
  dataset consumed with ``iter_torch_batches`` as a trainer does. CPU is counted over every process
  of the Ray node(s) and the consumer (driver, GCS, raylet, workers, ...), from ``/proc``. Reported:
  clips per CPU-second and per wall-second in the steady state (after ``--warmup-clips`` past the
  first batch), and the time to the first batch after the dataset is built; with 1 and with 2 CPUs
  for decode.
- **scale-out**: the same stream with its 2 decode CPUs on one node against 2 nodes of 1 CPU each
  (a second ``ray start --address``), alternated, as the two-node test builds its cluster, read by
  2 ranks as Ray Train feeds its workers (``streaming_split`` with locality hints). Both
  share this machine's cores, so the comparison is at equal total CPUs: what remains is the cost of
  spreading (more processes, blocks crossing between the nodes' object stores).

The shards: 2 synthetic 360p sources (``bench_data``'s) cut into 16x288x512 segments as ingest cuts
them, each segment repeated under distinct source URIs (the decode work per row is real; only the
pixels repeat), split into ``--shards`` shard files with a ``dataset.json``. Needs the stack's S3
(``make bench-stream`` starts it).

    python bench/bench_stream.py                        # ~21 min on 2 cores (3 runs of 6 settings)
    python bench/bench_stream.py --epochs 12,100 --no-scale-out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/bench_stream.py` imports bench.bench_data and the project

from bench.bench_data import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, sources  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None, help="where the bench dataset goes (default s3://$JEPA_BUCKET/datasets/bench-stream)")
    p.add_argument("--cache", default=".bench/data", help="folder for the generated sources")
    p.add_argument("--segments", type=int, default=192, help="shard rows in all")
    p.add_argument("--shards", type=int, default=3, help="shard files")
    p.add_argument("--config", default=str(ROOT / "configs/vitl16.yaml"), help="run config whose clip spec and masks to use")
    p.add_argument("--epochs", default="12,100", help="epoch counts the dataset is built with (comma-separated)")
    p.add_argument("--clips", type=int, default=1152, help="clips measured per stream run, after the warm-up")
    p.add_argument("--warmup-clips", type=int, default=768,
                   help="clips consumed after the first batch before the measurement starts (768: four passes over the "
                        "default segments, past the dearer first ~600 clips of a stream)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per consumer batch")
    p.add_argument("--rows-per-range", type=int, default=32, help="shard rows per read-and-decode task")
    p.add_argument("--decode-cpus", default="1,2", help="CPUs for decode, one measurement each (comma-separated)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each stream setting (alternated)")
    p.add_argument("--no-scale-out", action="store_true", help="skip the one-node vs two-node comparison")
    p.add_argument("--function", default=None, help=argparse.SUPPRESS)  # worker mode: JSON job
    p.add_argument("--stream", default=None, help=argparse.SUPPRESS)  # worker mode: JSON job
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# The dataset


def build_dataset(dataset: str, cache: Path, segments: int, n_shards: int) -> None:
    """Shards of ``segments`` rows and a dataset.json under ``dataset`` (kept if already there)."""
    from pipelines import shards, storage

    if shards.load_dataset_info(dataset) is not None:
        return
    spec = shards.ClipSpec(fps=CLIP_FPS, short_side=288, frames=CLIP_FRAMES)
    cache.mkdir(parents=True, exist_ok=True)
    base = []
    for path in sources(cache, "360p", videos=2, seconds=16.0):
        base += list(shards.video_rows(str(path), uri=f"file://{path}", etag="bench", spec=spec))
    rows = [{**row, "uri": row["uri"].replace(".mp4", f"-copy{i // len(base)}.mp4")}
            for i, row in zip(range(segments), [r for _ in range(-(-segments // len(base))) for r in base])]
    listed = []
    for k in range(n_shards):
        part = rows[k::n_shards]
        name = f"shards/part-{k:05d}.parquet"
        shards.write_shard(shards.rows_to_table(part, spec), storage.join_uri(dataset, name), shuffle_seed=k)
        listed.append({"path": name, "segments": len(part)})
    info = {"schema_version": 1, "clip_spec": spec.to_dict(), "shards": listed, "counts": {"segments": len(rows)}}
    storage.put_bytes(storage.join_uri(dataset, shards.DATASET_JSON), json.dumps(info).encode())
    print(f"[bench-stream] wrote {len(rows)} segments in {n_shards} shards to {dataset}", flush=True)


# ---------------------------------------------------------------------------------------------
# CPU of a process tree, from /proc


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + sys CPU seconds) of every process we can read."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class TreeCPU:
    """CPU seconds used by the process trees under ``roots`` while it runs. Sampled every 0.2 s, so
    a process that exits between samples loses at most its last 0.2 s; one that starts counts from 0.
    The sampling thread's own CPU (about 1% of a core: it reads all of /proc) is the instrument's,
    not the stream's: it is taken off this process's count."""

    def __init__(self, roots: list[int]):
        self.roots = set(roots)
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._own_cpu = 0.0  # the sampling thread's CPU seconds
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self, initial: bool = False) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [r for r in self.roots if r in table]
        while todo:
            pid = todo.pop()
            cpu = table[pid][1]
            if pid not in self._first:
                self._first[pid] = cpu if initial else 0.0
            if cpu > self._last.get(pid, -1.0):  # a Ray worker renames itself for each task
                name = "driver" if pid == os.getpid() else _comm(pid)
                self.names[pid] = self.names.get(pid, name) if name == "ray::IDLE" else name
            self._last[pid] = cpu
            todo += children.get(pid, [])

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            t0 = time.thread_time()
            self._sample()
            self._own_cpu += time.thread_time() - t0

    def read(self) -> dict[int, float]:
        """CPU seconds used since the start, per process (this one's without the sampling thread)."""
        self._sample()
        used = {p: self._last[p] - self._first[p] for p in self._last}
        if os.getpid() in used:
            used[os.getpid()] -= self._own_cpu
        return used

    def by_name(self, now: dict[int, float], before: dict[int, float]) -> dict[str, float]:
        """CPU seconds from ``before`` to ``now`` (two ``read()``s) per process name."""
        out: dict[str, float] = {}
        for pid, cpu in now.items():
            out[self.names[pid]] = out.get(self.names[pid], 0.0) + cpu - before.get(pid, 0.0)
        return out

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        return self.read()


# ---------------------------------------------------------------------------------------------
# Ray nodes started by the bench


class Node:
    """``ray start --block`` as a child process: a head (``address`` None) or a node joining one."""

    def __init__(self, cpus: int, address: str | None = None, port: int = 6390):
        self.address = address or f"127.0.0.1:{port}"
        args = [RAY, "start", "--block", f"--num-cpus={cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                "--object-store-memory=1000000000", "--disable-usage-stats"]
        args += [f"--address={address}"] if address else ["--head", f"--port={port}", "--include-dashboard=false"]
        self.log = tempfile.NamedTemporaryFile(prefix="bench-stream-ray-", suffix=".log", delete=False)
        env = os.environ | {"RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop(self) -> None:
        self.proc.terminate()  # `ray start --block` stops its raylet and workers on SIGTERM
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
        self.log.close()
        os.unlink(self.log.name)


def _await_cpus(address: str, cpus: int, timeout_s: float = 90.0) -> None:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(int(ray.cluster_resources().get('CPU', 0)))") % address
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(cpus)]:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the bench's Ray cluster at {address} never showed {cpus} CPUs")


# ---------------------------------------------------------------------------------------------
# Worker modes: each prints one JSON line


def function_worker(job: dict) -> dict:
    """``decode_shard_batch`` over every shard row, pinned to one core (as bench_data measures it)."""
    import torch

    torch.set_num_threads(1)
    from pipelines import shards
    from pipelines.shard_clips import SHARD_COLUMNS, decode_shard_batch, shard_rows_batch

    batches = [shard_rows_batch(rows) for uri in job["shards"]
               for rows in shards.iter_shard_batches(uri, columns=SHARD_COLUMNS, batch_rows=4)]
    kwargs = {"num_frames": CLIP_FRAMES, "size": CLIP_SIZE, "seed": 0}
    decode_shard_batch(batches[0], **kwargs)  # warm-up, untimed
    t0 = os.times()
    clips = sum(len(decode_shard_batch(b, **kwargs, epoch=1)["clip"]) for b in batches)
    t1 = os.times()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return {"clips": clips, "cpu_s": cpu, "clips_per_cpu_s": clips / cpu}


def stream_worker(job: dict) -> dict:
    """Build the dataset on the bench's cluster and consume ``warmup`` then ``clips`` clips (the
    measured ones) as a trainer does: in
    this driver, or (``ranks``) split over that many consumers, dealt round robin over the nodes,
    as Ray Train feeds its workers (``streaming_split(equal=True)`` with each rank's node as its
    locality hint, so blocks are handed to a consumer on the node that made them where possible)."""
    import ray

    from jepa.config import load_config
    from jepa.model import token_grid
    from pipelines.shard_clips import shard_clip_dataset

    cfg = load_config(job["config"])
    # Usage stats off here as on the bench's nodes (`--disable-usage-stats`); with them on, Ray Data
    # starts a usage-collection actor per cluster whose CPU would count against the stream.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address=job["address"], logging_level="ERROR", log_to_driver=False)
    cpu = TreeCPU(job["roots"] + [os.getpid()])
    t0 = time.time()
    ds = shard_clip_dataset(job["dataset"], num_frames=cfg.model.num_frames, size=cfg.model.img_size, fps=cfg.data.fps,
                            seed=0, epochs=job["epochs"], crop_scale=cfg.data.crop_scale,
                            crop_aspect=cfg.data.crop_aspect, flip=cfg.data.flip, mask_grid=token_grid(cfg.model),
                            mask_cfgs=cfg.masks, decode_cpus=1, decode_tasks=job["decode_tasks"],
                            batch_size=job["batch_size"], rows_per_range=job["rows_per_range"])
    ds.context.enable_progress_bars = False
    built = time.time()
    shape = (cfg.model.num_frames, cfg.model.img_size, cfg.model.img_size, 3)
    ranks = job.get("ranks", 0)
    b, share = job["batch_size"], max(ranks, 1)  # each consumer's marks: first batch, warmed up, done
    marks = (b, b + job["warmup"] // share, b + (job["warmup"] + job["clips"]) // share)
    if not ranks:
        consumer = consume(ds, marks, shape)
        next_mark = consumer.__next__
    else:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        hints = [nodes[i % len(nodes)] for i in range(ranks)]
        remote = ray.remote(num_cpus=0)(consume)
        consumers = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                         split, marks, shape)
                     for split, node in zip(ds.streaming_split(ranks, equal=True, locality_hints=hints), hints)]

        def next_mark() -> tuple[int, float]:  # a training step needs every rank's batch
            done = ray.get([next(c) for c in consumers])
            return sum(d[0] for d in done), max(d[1] for d in done)

    n_first, first = next_mark()
    cpu_first = cpu.read()
    n_start, start = next_mark()
    cpu_start = cpu.read()
    n_end, end = next_mark()
    cpu_end = cpu.stop()
    ray.shutdown()
    by_name = cpu.by_name(cpu_end, cpu_start)
    cpu_s = sum(by_name.values())
    by_name = {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    warmup_cpu_s = sum(cpu.by_name(cpu_start, cpu_first).values())
    return {"clips": n_end - n_start, "build_s": built - t0, "first_batch_s": first - built, "cpu_s": cpu_s,
            "clips_per_cpu_s": (n_end - n_start) / cpu_s, "warmup_clips_per_cpu_s": (n_start - n_first) / warmup_cpu_s, "clips_per_s": (n_end - n_start) / (end - start),
            "cpu_by_process": by_name}


def consume(data, marks: tuple[int, ...], shape: tuple[int, ...]):
    """Iterate ``data`` (a dataset or a split of one) in batches of ``marks[0]`` clips as a trainer
    does; yields (clips consumed, time) on reaching each of ``marks`` (the last ends it)."""
    import torch

    n, todo = 0, list(marks)
    for batch in data.iter_torch_batches(batch_size=marks[0], drop_last=True):
        assert batch["clip"].shape[1:] == shape and batch["clip"].dtype == torch.uint8
        n += len(batch["clip"])
        while len(todo) > 1 and n >= todo[0]:
            todo.pop(0)
            yield n, time.time()
        if n >= todo[0]:
            end = time.time()
            break  # the iterator closes here, while Ray is still up
    else:
        raise RuntimeError(f"the stream ended after {n} clips, before {todo[0]}")
    yield n, end


def run_json(flag: str, job: dict, cores: int = 0) -> list[dict]:
    """The worker mode ``flag`` in a subprocess, or with ``cores``, in that many at once, each
    pinned to a core of its own; their JSON answers."""
    cmd = [sys.executable, __file__, flag, json.dumps(job)]
    pins = sorted(os.sched_getaffinity(0))[:cores] or [None]
    if len(pins) < cores:
        raise RuntimeError(f"{cores} cores asked for, {len(pins)} available")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              preexec_fn=None if core is None else (lambda c=core: os.sched_setaffinity(0, {c})))
             for core in pins]
    outputs = [proc.communicate() for proc in procs]  # every process ends before any failure is raised
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"{flag} failed:\n{err[-4000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def measure_stream(job: dict, layout: list[int]) -> dict:
    """One stream measurement on fresh Ray nodes of ``layout`` CPUs (the first is the head)."""
    nodes = [Node(layout[0])]
    try:
        for cpus in layout[1:]:
            nodes.append(Node(cpus, address=nodes[0].address))
        _await_cpus(nodes[0].address, sum(layout))
        return run_json("--stream", {**job, "address": nodes[0].address, "roots": [n.proc.pid for n in nodes]})[0]
    finally:
        for node in reversed(nodes):
            node.stop()


# ---------------------------------------------------------------------------------------------


def _consumers(ranks: int) -> str:
    return f"{ranks} ranks" if ranks else "driver"


def main() -> None:
    args = parse_args()
    if args.function or args.stream:
        print(json.dumps(function_worker(json.loads(args.function)) if args.function else
                         stream_worker(json.loads(args.stream))))
        return

    from pipelines import shards

    dataset = args.dataset or f"s3://{os.environ.get('JEPA_BUCKET', 'jepa')}/datasets/bench-stream-{args.segments}x{args.shards}"
    t_start = time.perf_counter()
    build_dataset(dataset, Path(args.cache), args.segments, args.shards)
    shard_uris = shards.shard_uris(dataset)

    base = {"dataset": dataset, "config": args.config, "clips": args.clips, "warmup": args.warmup_clips,
            "batch_size": args.batch_size, "rows_per_range": args.rows_per_range}

    results: dict[tuple, list[dict]] = {}
    # (epochs, decode CPUs, CPUs per node, consumers: 0 = the driver, else ranks over the nodes)
    settings = [(epochs, cpus, (cpus,), 0) for epochs in map(int, args.epochs.split(",")) for cpus in map(int, args.decode_cpus.split(","))]
    if not args.no_scale_out:
        spread_epochs = int(args.epochs.split(",")[0])
        settings += [(spread_epochs, 2, (2,), 2), (spread_epochs, 2, (1, 1), 2)]
    functions: dict[int, list[float]] = {}  # pinned cores at once -> clips per CPU-s of each run

    def function_run(cores: int) -> float:
        print(f"[bench-stream] function: decode_shard_batch on {cores} pinned core(s) at once", flush=True)
        runs = run_json("--function", {"shards": shard_uris}, cores=cores)
        functions.setdefault(cores, []).append(sum(r["clips"] for r in runs) / sum(r["cpu_s"] for r in runs))
        return functions[cores][-1]

    # Function and stream runs alternate, and each stream run is compared with the mean of the
    # function runs just before and after it, on as many cores as it decodes on (so both see the
    # same load on the cores): this machine's speed drifts by 30% over minutes.
    before = (0, 0.0)  # (cores, clips per CPU-s) of the latest function run
    for rep in range(args.repeats):
        for setting in settings:
            epochs, cpus, layout, ranks = setting
            if before[0] != cpus:
                before = (cpus, function_run(cpus))
            print(f"[bench-stream] stream: epochs {epochs}, {cpus} decode CPUs on nodes {list(layout)}, "
                  f"{_consumers(ranks)} (run {rep + 1})", flush=True)
            r = measure_stream({**base, "epochs": epochs, "decode_tasks": cpus, "ranks": ranks}, list(layout))
            after = function_run(cpus)
            r["vs_function"] = r["clips_per_cpu_s"] / statistics.mean([before[1], after])
            before = (cpus, after)
            results.setdefault(setting, []).append(r)

    med = {k: {m: statistics.median(r[m] for r in runs) for m in runs[0] if m != "cpu_by_process"}
           for k, runs in results.items()}
    print(f"\n[bench-stream] done in {time.perf_counter() - t_start:.0f} s; {args.segments} segments in {args.shards} shards, "
          f"clips {CLIP_FRAMES}x{CLIP_SIZE}x{CLIP_SIZE} with the masks of {Path(args.config).name}, batch {args.batch_size}, "
          f"{args.clips} clips measured after {args.warmup_clips} past the first batch, median of {args.repeats} runs\n")
    for cores, runs in sorted(functions.items()):
        print(f"function (`decode_shard_batch`) on {cores} pinned core(s) at once: {statistics.median(runs):.1f} clips "
              f"per CPU-second (runs: {[round(f, 1) for f in runs]})")
    print()
    print("| epochs | decode CPUs | nodes | consumers | stream clips per CPU-s | vs function (runs) | warm-up clips per CPU-s "
          "| clips per wall-s | first batch s (max) | build s |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for (epochs, cpus, layout, ranks), m in med.items():
        runs = results[(epochs, cpus, layout, ranks)]
        print(f"| {epochs} | {cpus} | {' + '.join(map(str, layout))} | {_consumers(ranks)} | {m['clips_per_cpu_s']:.1f} | "
              f"{m['vs_function']:.2f}x ({', '.join(format(r['vs_function'], '.2f') for r in runs)}) | "
              f"{m['warmup_clips_per_cpu_s']:.1f} | {m['clips_per_s']:.1f} | {m['first_batch_s']:.1f} ({max(r['first_batch_s'] for r in runs):.1f}) | "
              f"{m['build_s']:.1f} |")
    print("\nCPU seconds by process over the measured clips (the last run of each setting; ray:: are Ray workers):")
    for (epochs, cpus, layout, ranks), runs in results.items():
        print(f"- epochs {epochs}, {cpus} decode CPUs on nodes {list(layout)}, {_consumers(ranks)}: {runs[-1]['cpu_by_process']}")
    summary = {"function_clips_per_cpu_s": {str(k): v for k, v in functions.items()},
               "stream": [{"epochs": e, "decode_cpus": c, "nodes": list(l), "ranks": r, **m} for (e, c, l, r), m in med.items()]}
    if not args.no_scale_out:
        one, two = results[(spread_epochs, 2, (2,), 2)], results[(spread_epochs, 2, (1, 1), 2)]
        ratios = [b["clips_per_s"] / a["clips_per_s"] for a, b in zip(one, two)]  # runs next to each other
        summary["spread_ratio"] = statistics.median(ratios)
        print(f"\nscale-out at 2 decode CPUs and 2 ranks, clips per wall-s of 2 nodes x 1 CPU / 1 node x 2 CPUs: "
              f"{summary['spread_ratio']:.2f}x (runs: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"{[round(r['clips_per_s'], 1) for r in two]} vs {[round(r['clips_per_s'], 1) for r in one]} clips/s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
