"""`jepa ingest`: a bucket prefix (or folder) of video -> manifest, quarantine and training shards.

One run, ``RUN`` = UTC time + random suffix (``pipelines.manifest`` describes the files):

1. **List and diff** (driver, streaming). ``storage.list_objects`` pages through the source (1000
   keys a request) and ``manifest.diff_listing`` merges the pages with the previous
   ``manifest.parquet`` (both sorted by uri). New and changed objects go to parquet chunks
   ``_staging/RUN/todo-NNNNNN.parquet`` (``LISTING_CHUNK_ROWS`` rows each), unchanged rows to
   ``_staging/RUN/carried.parquet``. The driver holds one chunk at a time, never the listing;
   Ray Data workers read the chunks back (listing itself stays on the driver: an S3 listing
   cannot be split across tasks, each page needs the previous page's continuation token).
2. **Rewrite stale shards** (Ray tasks). Shard files are immutable; a shard holding segments of
   a deleted or changed object is rewritten under a new name with only its surviving rows (or
   dropped when none survive), and the carried rows are pointed at the new file.
3. **Process** (Ray Data). ``from_items(chunk URIs) -> read_listing_chunks ->
   repartition(batch_objects) -> map_batches(ingest_batch)``: each task downloads its objects and
   decodes each **once**: the probe's audit (``pipelines.probe.VideoScan``) feeds the segmenter
   (``pipelines.shards.segment_frames``: resample, rotate, resize, encode) frame by frame, and the
   segments are kept if the verdict at the end of the stream keeps the object. A task writes its
   segments to **one shard file** ``shards/RUN-<hash of its objects>.parquet`` (a retried task
   rewrites the same file) and returns its manifest rows; with ``preserve_order`` they reach the
   driver in listing order.
4. **Commit** (driver, streaming). Carried and new rows (both sorted) are merged into
   ``manifest.parquet`` and ``quarantine.parquet``; ``dataset.json`` with the live shard list is
   written last (the commit point: a reader of ``dataset.json`` only sees complete shards).
5. **Clean up**: shard files no longer listed and ``_staging/`` are deleted. One ingest per
   dataset at a time: a concurrent run's shards, or those a reader of an older ``dataset.json``
   still streams, would be deleted.

Liveness invariant, after every run: the rows of the shards listed in ``dataset.json`` are
exactly the segments of the manifest's kept objects at their current etag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from pipelines import manifest as mf
from pipelines import storage
from pipelines.probe import FLAGGED, QUARANTINED, ProbeResult, VideoScan
from pipelines.shards import (
    DATASET_JSON, SHARD_FORMAT_VERSION, SHARDS_DIR, ClipSpec, load_dataset_info, rows_to_table, segment_frames,
    segment_row, write_shard,
)  # fmt: skip
from pipelines.storage import ObjectInfo
from pipelines.video import VideoDecodeError

log = logging.getLogger(__name__)

DATASET_SCHEMA_VERSION = 1
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp")
"""Objects listed for ingest; anything else under the prefix (sidecars, thumbnails) is ignored."""
LISTING_CHUNK_ROWS = 10_000
"""Objects per staging chunk: the most the driver holds while listing."""
BATCH_OBJECTS = 16
"""Objects per Ray task (and so per shard file) unless the caller says otherwise."""
SHARD_TARGET_BYTES = 256 * 2**20
"""A task starts a new shard file (between two objects) once this many segment bytes are pending."""


class IngestError(RuntimeError):
    """The job cannot run at all: the source cannot be listed (missing folder or bucket, endpoint
    unreachable, access denied) or the dataset cannot be written. Bad objects never raise."""


@dataclass
class IngestReport:
    """What a run did and what the dataset now holds."""

    source: str
    dataset: str
    run_id: str
    objects: int = 0
    """Objects listed under the source (with a video suffix)."""
    new: int = 0
    changed: int = 0
    """Listed before with another etag: processed again."""
    unchanged: int = 0
    """Same etag as in the previous manifest: carried over, not downloaded."""
    deleted: int = 0
    """In the previous manifest, no longer listed: dropped with their segments."""
    bytes: int = 0
    """Total size of the listed objects."""
    hours: float = 0.0
    """Hours of kept (ok + flagged) video in the dataset."""
    ok: int = 0
    flagged: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    flagged_by_reason: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    """Training segments in the live shards."""
    shards: int = 0
    """Live shard files."""
    segments_written: int = 0
    shards_written: int = 0
    """Shard files written by this run: new batches plus rewrites of stale shards."""
    shards_rewritten: int = 0
    shards_removed: int = 0
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step: list (and diff), rewrite (stale shards), process (Ray Data, with the
    manifest merge it feeds), commit (dataset.json, clean-up)."""

    @property
    def processed(self) -> int:
        return self.new + self.changed

    def summary(self) -> str:
        def by_reason(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"

        gib = self.bytes / 2**30
        return "\n".join([
            f"ingest {self.source} -> {self.dataset} (run {self.run_id}, {self.wall_s:.1f} s)",
            f"  objects     {self.objects} listed: {self.new} new, {self.changed} changed, "
            f"{self.unchanged} unchanged (skipped), {self.deleted} deleted",
            f"  video       {self.hours:.3f} h kept, {self.bytes} bytes ({gib:.2f} GiB) listed",
            f"  kept        {self.ok + self.flagged} ({self.ok} ok, {self.flagged} flagged)",
            f"  flagged     {by_reason(self.flagged_by_reason)}",
            f"  quarantined {self.quarantined}: {by_reason(self.quarantined_by_reason)}",
            f"  shards      {self.shards} live with {self.segments} segments; this run wrote "
            f"{self.shards_written} ({self.segments_written} new segments, {self.shards_rewritten} rewritten), "
            f"removed {self.shards_removed}",
            "  time        " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
        ])  # fmt: skip

    def to_dict(self) -> dict:
        return {**asdict(self), "processed": self.processed}


# --- the per-batch transform (plain function: testable without Ray) -----------------------------


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def process_object(obj: ObjectInfo, spec: ClipSpec) -> tuple[ProbeResult, list[dict]]:
    """Download one object, then probe and transcode it -> (probe result, shard rows).

    Never raises for bad content: every failure becomes a quarantine reason."""
    try:
        data = storage.get_bytes(obj.uri)
    except FileNotFoundError:
        return ProbeResult().quarantine("fetch_failed", "object vanished between listing and download"), []
    except ClientError as err:  # e.g. access denied on this one object
        return ProbeResult().quarantine("fetch_failed", str(err)), []
    try:
        return probe_and_transcode(data, obj, spec)
    except Exception as err:  # a PyAV/FFmpeg surprise must not stop the job
        log.exception("probe failed on %s", obj.uri)
        return ProbeResult().quarantine("probe_error", f"{type(err).__name__}: {err}"), []


def probe_and_transcode(data: bytes, obj: ObjectInfo, spec: ClipSpec) -> tuple[ProbeResult, list[dict]]:
    """One decode pass: the probe's audit (``VideoScan``) feeds the segmenter
    (``shards.segment_frames``) frame by frame. Segments are encoded as they fill and kept only
    if the probe's verdict, known at the end of the stream, keeps the object."""
    with VideoScan(data, spec) as scan:
        frames = scan.timed_frames()
        rows: list[dict] = []
        failure: Exception | None = None
        try:
            for segment in segment_frames(frames, spec, sample_aspect=scan.sample_aspect):
                rows.append(segment_row(segment, uri=obj.uri, etag=obj.etag, spec=spec))
        except VideoDecodeError as err:  # no decodable frame: the probe says why
            failure = err
        except Exception as err:  # the conversion or encoder failed: still finish the audit
            log.exception("transcode failed on %s", obj.uri)
            failure = err
        for _ in frames:  # drain what the segmenter left, so the audit saw the whole stream
            pass
        probe = scan.result()
    if probe.status == QUARANTINED:
        return probe, []
    if failure is not None:
        return probe.quarantine("transcode_failed", f"{type(failure).__name__}: {failure}"), []
    return probe, rows


def ingest_batch(batch: dict[str, np.ndarray], *, spec: dict, dataset_uri: str, run_id: str,
                 shard_bytes: int = SHARD_TARGET_BYTES) -> pa.Table:
    """{"uri", "etag", "bytes"} -> manifest rows (``MANIFEST_SCHEMA``), in input order.

    Writes the batch's segments to shard files, cutting a new file between objects once
    ``shard_bytes`` of segments are pending (so a task holds about that much, however long its
    videos). Each shard is named by a hash of its objects' (uri, etag) pairs, so a retried task
    overwrites rather than duplicates it.
    """
    clip_spec = ClipSpec.from_dict(spec)
    objects = [ObjectInfo(str(u), int(s), str(e)) for u, e, s in zip(batch["uri"], batch["etag"], batch["bytes"])]
    probes: list[ProbeResult] = []
    shard_of: list[str] = []
    segments_of: list[int] = []
    pending: list[tuple[int, list[dict]]] = []  # (object index, its shard rows)
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending_bytes
        parts = [f"{objects[i].uri}\0{objects[i].etag}" for i, _ in pending]
        digest = _digest(run_id, json.dumps(spec, sort_keys=True), *parts)
        shard = f"{SHARDS_DIR}/{run_id}-{digest}.parquet"
        table = rows_to_table([row for _, rows in pending for row in rows], clip_spec)
        write_shard(table, storage.join_uri(dataset_uri, shard), shuffle_seed=int(digest, 16) % 2**32)
        for i, _ in pending:
            shard_of[i] = shard
        pending.clear()
        pending_bytes = 0

    for i, obj in enumerate(objects):
        probe, rows = process_object(obj, clip_spec)
        probes.append(probe)
        shard_of.append("")
        segments_of.append(len(rows))
        if rows:
            pending.append((i, rows))
            pending_bytes += sum(len(row["mp4"]) for row in rows)
            if pending_bytes >= shard_bytes:
                flush()
    if pending:
        flush()
    now = mf.utcnow()
    rows = [mf.manifest_row(obj, probe, segments=n, shard=shard, run_id=run_id, ingested_at=now)
            for obj, probe, n, shard in zip(objects, probes, segments_of, shard_of)]
    return pa.Table.from_pylist(rows, schema=mf.MANIFEST_SCHEMA)


def read_listing_chunks(batch: dict[str, np.ndarray]) -> pa.Table:
    """{"chunk": staging chunk URIs} -> their (uri, etag, bytes) rows, in order."""
    return pa.concat_tables([mf.read_table(str(uri)) for uri in batch["chunk"]])


def rewrite_shard(dataset_uri: str, old: str, new: str, keep: list[tuple[str, str]]) -> int:
    """Copy the rows of shard ``old`` whose (uri, etag) is in ``keep`` into shard ``new``."""
    table = mf.read_table(storage.join_uri(dataset_uri, old))
    keys = pc.binary_join_element_wise(table["uri"], table["etag"], "\0")
    table = table.filter(pc.is_in(keys, pa.array([f"{u}\0{e}" for u, e in keep])))
    write_shard(table, storage.join_uri(dataset_uri, new))
    return table.num_rows


# --- the job --------------------------------------------------------------------------------------


def check_access(source: str, dataset_uri: str) -> None:
    """Fail fast, with one clear line, when the job cannot run."""
    if not storage.is_s3(source) and not Path(source).is_dir():
        raise IngestError(f"source folder not found: {source}")
    try:
        if storage.is_s3(source):
            bucket, prefix = storage.parse_uri(source)
            client = storage.s3_client(max_attempts=storage.PREFLIGHT_ATTEMPTS)
            client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (ClientError, BotoCoreError) as err:  # no such bucket, access denied, endpoint unreachable
        raise IngestError(f"cannot list source {source}: {err}") from err
    try:
        if storage.is_s3(dataset_uri):
            storage.ensure_bucket(dataset_uri)
        else:
            Path(dataset_uri).mkdir(parents=True, exist_ok=True)
    except (ClientError, BotoCoreError, OSError) as err:
        raise IngestError(f"cannot write dataset {dataset_uri}: {err}") from err


def _stage_listing(source: str, staging: str, manifest_uri: str, reuse: bool, suffixes: Iterable[str],
                   progress: bool) -> tuple[mf.Diff, list[str], str]:
    """Step 1: stream the listing against the previous manifest into staging files.

    Returns (diff, todo chunk URIs, carried-rows URI)."""
    chunks: list[str] = []
    todo: list[dict] = []

    def flush() -> None:
        if todo:
            uri = storage.join_uri(staging, f"todo-{len(chunks):06d}.parquet")
            with mf.RowWriter(uri, mf.LISTING_SCHEMA) as w:
                w.write_table(pa.Table.from_pylist(todo, schema=mf.LISTING_SCHEMA))
            chunks.append(uri)
            todo.clear()

    def process(obj: ObjectInfo) -> None:
        todo.append({"uri": obj.uri, "etag": obj.etag, "bytes": obj.size})
        if len(todo) >= LISTING_CHUNK_ROWS:
            flush()

    carried_uri = storage.join_uri(staging, "carried.parquet")
    listing = mf.sorted_listing(source, suffixes)
    bar = tqdm(listing, desc="listing", unit=" objects", disable=not progress, mininterval=0.5)
    with mf.RowWriter(carried_uri, mf.MANIFEST_SCHEMA) as carried:
        try:
            diff = mf.diff_listing(bar, mf.read_rows(manifest_uri), reuse=reuse, process=process, carry=carried.write)
        except (ClientError, BotoCoreError) as err:
            raise IngestError(f"listing {source} failed: {err}") from err
        finally:
            bar.close()
    flush()
    return diff, chunks, carried_uri


def _rewrite_stale_shards(dataset_uri: str, run_id: str, stale: set[str], carried_uri: str) -> dict[str, str]:
    """Step 2: old shard path -> new shard path ("" when nothing in it survives)."""
    if not stale:
        return {}
    survivors: dict[str, list[tuple[str, str]]] = {s: [] for s in stale}
    for row in mf.read_rows(carried_uri, columns=["uri", "etag", "shard"]):
        if row["shard"] in survivors:
            survivors[row["shard"]].append((row["uri"], row["etag"]))
    renames = {old: "" for old, keep in survivors.items() if not keep}
    jobs = {old: f"{SHARDS_DIR}/{run_id}-{_digest(old, *(u + e for u, e in keep))}.parquet"
            for old, keep in survivors.items() if keep}  # fmt: skip
    if jobs:
        import ray

        task = ray.remote(num_cpus=1)(rewrite_shard)
        refs = [task.remote(dataset_uri, old, new, survivors[old]) for old, new in jobs.items()]
        ray.get(refs)
        renames.update(jobs)
    return renames


def _process(chunks: list[str], spec: ClipSpec, dataset_uri: str, run_id: str, batch_objects: int,
             progress: bool) -> Iterator[dict]:
    """Step 3: the Ray Data graph; yields manifest rows of processed objects in listing order."""
    if not chunks:
        return
    import ray.data

    # One row per chunk, read by the workers: ``read_parquet`` would do the same plus a file
    # listing task that cost 5-10 s per run here, more than a small incremental run itself.
    ds = ray.data.from_items([{"chunk": uri} for uri in chunks])
    ds = ds.map_batches(read_listing_chunks, batch_size=1, batch_format="numpy", num_cpus=0.25)
    ds = ds.repartition(target_num_rows_per_block=batch_objects)
    ds = ds.map_batches(
        ingest_batch,
        fn_kwargs={"spec": spec.to_dict(), "dataset_uri": dataset_uri, "run_id": run_id},
        batch_size=batch_objects,
        batch_format="numpy",
        num_cpus=1,
    )
    ds.context.execution_options.preserve_order = True  # rows come back sorted, like the listing
    ds.context.enable_progress_bars = progress
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


def _shard_files(dataset_uri: str) -> list[str]:
    return [obj.uri for obj in storage.list_objects(storage.join_uri(dataset_uri, SHARDS_DIR), (".parquet",))]


def ingest(
    source: str,
    dataset_uri: str,
    spec: ClipSpec = ClipSpec(),
    *,
    progress: bool = True,
    batch_objects: int = BATCH_OBJECTS,
    suffixes: Iterable[str] = VIDEO_SUFFIXES,
) -> IngestReport:
    """Ingest every video under ``source`` (``s3://B/prefix`` or a local folder) into the dataset
    at ``dataset_uri`` (``s3://B/datasets/NAME`` or a local folder); incremental by etag.

    ``batch_objects``: objects per Ray task; a task writes its segments to one shard file
    (several once they pass ``SHARD_TARGET_BYTES``). Bad objects are quarantined, never fatal;
    ``IngestError`` if the job cannot run at all.
    """
    if batch_objects < 1:
        raise ValueError(f"batch_objects must be >= 1, got {batch_objects}")
    start = time.monotonic()
    now = mf.utcnow()
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    source = source if storage.is_s3(source) else str(Path(source).resolve())
    dataset_uri = dataset_uri.rstrip("/") if storage.is_s3(dataset_uri) else str(Path(dataset_uri).resolve())
    report = IngestReport(source=source, dataset=dataset_uri, run_id=run_id)
    check_access(source, dataset_uri)

    def lap(step: str) -> None:
        report.timings[step] = time.monotonic() - start - sum(report.timings.values())

    manifest_uri = storage.join_uri(dataset_uri, mf.MANIFEST)
    previous_spec = mf.manifest_spec(manifest_uri)
    reuse = previous_spec == spec.to_dict()
    if previous_spec is not None and not reuse:
        log.warning("clip spec changed (%s -> %s): every object is processed again", previous_spec, spec.to_dict())
    staging = storage.join_uri(dataset_uri, mf.STAGING, run_id)

    diff, chunks, carried_uri = _stage_listing(source, staging, manifest_uri, reuse, suffixes, progress)
    report.objects, report.bytes = diff.listed, diff.listed_bytes
    report.new, report.changed, report.unchanged, report.deleted = diff.new, diff.changed, diff.unchanged, diff.deleted
    lap("list")
    renames = _rewrite_stale_shards(dataset_uri, run_id, diff.stale_shards, carried_uri)
    report.shards_rewritten = sum(1 for new in renames.values() if new)
    lap("rewrite")
    processed = _process(chunks, spec, dataset_uri, run_id, batch_objects, progress)
    shards = _write_manifest(mf.merge_sorted(mf.read_rows(carried_uri), processed), dataset_uri, spec, renames,
                             report, progress)
    lap("process")
    _write_dataset_json(dataset_uri, spec, report, shards, created_at=now)
    live = {storage.join_uri(dataset_uri, path) for path in shards}
    for uri in _shard_files(dataset_uri):  # replaced, emptied, or orphaned by a crashed run
        if uri not in live:
            mf.delete(uri)
            report.shards_removed += 1
    mf.delete(storage.join_uri(dataset_uri, mf.STAGING))  # this run's, and any a crashed run left
    lap("commit")
    report.wall_s = time.monotonic() - start
    return report


def _write_manifest(rows: Iterable[dict], dataset_uri: str, spec: ClipSpec, renames: dict[str, str],
                    report: IngestReport, progress: bool) -> dict[str, Counter]:
    """Step 4: sorted rows -> manifest.parquet and quarantine.parquet, tallied into ``report``.

    Returns the live shards: path -> Counter(segments, sources). Both files are written beside
    and then moved into place, so a crash mid-way leaves the previous ones intact."""
    manifest_uri = storage.join_uri(dataset_uri, mf.MANIFEST)
    quarantine_uri = storage.join_uri(dataset_uri, mf.QUARANTINE)
    shards: dict[str, Counter] = {}
    status, quarantined, flagged, written = Counter(), Counter(), Counter(), set()
    seconds = 0.0
    with (mf.RowWriter(manifest_uri + ".new", mf.MANIFEST_SCHEMA, mf.spec_metadata(spec.to_dict())) as manifest,
          mf.RowWriter(quarantine_uri + ".new", mf.QUARANTINE_SCHEMA) as quarantine):
        last = ""
        for row in tqdm(rows, desc="manifest", unit=" rows", disable=not progress, mininterval=0.5):
            if row["uri"] <= last:
                raise RuntimeError(f"internal: manifest rows out of order at {row['uri']!r}")
            last = row["uri"]
            if row["shard"] in renames:  # a carried row whose shard was rewritten (step 2)
                row["shard"] = renames[row["shard"]]
            manifest.write(row)
            status[row["status"]] += 1
            if row["status"] == QUARANTINED:
                quarantine.write(row)
                quarantined[row["reason"]] += 1
                continue
            seconds += row["duration_s"] or 0.0
            flagged.update(row["flags"] or [])
            if row["shard"]:
                shards.setdefault(row["shard"], Counter()).update(segments=row["segments"], sources=1)
                if row["run_id"] == report.run_id:
                    written.add(row["shard"])
                    report.segments_written += row["segments"]
    _replace(manifest_uri + ".new", manifest_uri)
    _replace(quarantine_uri + ".new", quarantine_uri)
    report.ok, report.flagged, report.quarantined = status["ok"], status[FLAGGED], status[QUARANTINED]
    report.quarantined_by_reason, report.flagged_by_reason = dict(quarantined), dict(flagged)
    report.hours = seconds / 3600
    report.shards = len(shards)
    report.segments = sum(c["segments"] for c in shards.values())
    report.shards_written = len(written) + report.shards_rewritten
    return shards


def _write_dataset_json(dataset_uri: str, spec: ClipSpec, report: IngestReport, shards: dict[str, Counter],
                        created_at) -> None:
    """The commit point: readers list shards from here, never from the folder."""
    previous = load_dataset_info(dataset_uri) or {}
    info = {
        "schema_version": DATASET_SCHEMA_VERSION,
        "shard_format": SHARD_FORMAT_VERSION,
        "clip_spec": spec.to_dict(),
        "source": report.source,
        "created_at": previous.get("created_at") or created_at.isoformat(),
        "updated_at": mf.utcnow().isoformat(),
        "last_run": report.run_id,
        "manifest": mf.MANIFEST,
        "quarantine": mf.QUARANTINE,
        "counts": {"objects": report.objects, "ok": report.ok, "flagged": report.flagged,
                   "quarantined": report.quarantined, "segments": report.segments, "shards": report.shards,
                   "hours": round(report.hours, 6), "bytes": report.bytes},
        "quarantined_by_reason": dict(sorted(report.quarantined_by_reason.items())),
        "flagged_by_reason": dict(sorted(report.flagged_by_reason.items())),
        "shards": [{"path": path, "segments": c["segments"], "sources": c["sources"]}
                   for path, c in sorted(shards.items())],
    }  # fmt: skip
    storage.put_bytes(storage.join_uri(dataset_uri, DATASET_JSON), json.dumps(info, indent=1).encode())


def _replace(src: str, dst: str) -> None:
    """Move a finished file into place (rename locally; copy + delete on S3)."""
    fs, src_path = storage.arrow_location(src)
    fs.move(src_path, storage.arrow_path(dst))
