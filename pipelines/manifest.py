"""The ingest's bookkeeping files and the incremental diff, declared once.

An ingested dataset ``s3://B/datasets/NAME/`` holds, besides ``shards/`` (``pipelines.shards``):

- ``manifest.parquet``: one row per source object (``MANIFEST_SCHEMA``), **sorted by uri**, every
  object of the last listing: kept, flagged and quarantined alike. ``shard`` names the shard file
  (relative to the dataset root) holding the object's ``segments`` training segments ("" if none).
  The clip spec the rows were made with is in the file's metadata (``jepa.clip_spec``).
- ``quarantine.parquet``: the quarantined rows only (``QUARANTINE_SCHEMA``: uri, etag, bytes,
  reason, detail, ingested_at), sorted by uri.
- ``dataset.json``: schema version, clip spec, counts, the live shard list (written last: it is the
  commit point of a run).

Incremental re-ingest is a **sorted merge** of the new listing against the previous manifest:
S3 lists keys in lexicographic order and the manifest is stored in that order, so the driver walks
both streams side by side and holds neither (``diff_listing``). Equal etag: the old row is carried
over untouched (no download, no decode). New or changed etag: the object is (re)processed. In the
manifest but no longer listed: deleted, and the shard files holding segments of deleted or changed
objects are rewritten without them (``pipelines.ingest``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.probe import ProbeResult
from pipelines.storage import ObjectInfo

MANIFEST_SCHEMA_VERSION = 1
MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.parquet"
STAGING = "_staging"
"""Per-run scratch folder inside the dataset (listing chunks, carried rows); removed after a run."""
SPEC_METADATA_KEY = b"jepa.clip_spec"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("etag", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | flagged | quarantined
        pa.field("reason", pa.string()),  # quarantine reason, "" otherwise
        pa.field("detail", pa.string()),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("container", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("width", pa.int32()),  # displayed (after rotation)
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("duration_s", pa.float64()),
        pa.field("n_frames", pa.int64()),
        pa.field("rotation", pa.int32()),
        pa.field("has_audio", pa.bool_()),
        pa.field("pix_fmt", pa.string()),
        pa.field("bit_depth", pa.int32()),
        pa.field("vfr", pa.bool_()),
        pa.field("corrupt_frames", pa.int64()),
        pa.field("segments", pa.int32()),  # training segments in `shard`
        pa.field("shard", pa.string()),  # shard file relative to the dataset root, "" if none
        pa.field("run_id", pa.string()),  # the ingest run that processed this object
        pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
QUARANTINE_SCHEMA = pa.schema([MANIFEST_SCHEMA.field(n) for n in
                               ("uri", "etag", "bytes", "reason", "detail", "ingested_at")])  # fmt: skip
LISTING_SCHEMA = pa.schema([MANIFEST_SCHEMA.field(n) for n in ("uri", "etag", "bytes")])
ROWS_PER_WRITE = 4096


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def manifest_row(obj: ObjectInfo, probe: ProbeResult, *, segments: int = 0, shard: str = "",
                 run_id: str = "", ingested_at: datetime | None = None) -> dict:
    """One manifest row from a listing entry and its probe."""
    fields = probe.to_dict()
    return {
        "uri": obj.uri, "etag": obj.etag, "bytes": obj.size,
        **{k: fields[k] for k in MANIFEST_SCHEMA.names if k in fields},
        "flags": list(probe.flags), "segments": segments, "shard": shard,
        "run_id": run_id, "ingested_at": ingested_at or utcnow(),
    }  # fmt: skip


# --- files: S3 or local, streamed ---------------------------------------------------------------


def exists(uri: str, settings: storage.S3Settings | None = None) -> bool:
    fs, path = storage.arrow_location(uri, settings)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(uri: str, settings: storage.S3Settings | None = None) -> None:
    """Delete a file, or a folder (prefix) with everything under it; missing is fine."""
    fs, path = storage.arrow_location(uri, settings)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif info.type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_metadata(uri: str, settings: storage.S3Settings | None = None) -> dict[bytes, bytes]:
    fs, path = storage.arrow_location(uri, settings)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).schema_arrow.metadata or {}


def read_table(uri: str, settings: storage.S3Settings | None = None) -> pa.Table:
    """A whole (small) parquet file: a listing chunk, a shard being rewritten."""
    fs, path = storage.arrow_location(uri, settings)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def read_rows(uri: str, columns: list[str] | None = None, settings: storage.S3Settings | None = None,
              batch_rows: int = ROWS_PER_WRITE) -> Iterator[dict]:
    """Rows of a parquet file as dicts, a batch at a time (never the whole file); none if missing."""
    fs, path = storage.arrow_location(uri, settings)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


class RowWriter:
    """Writes dict rows to one parquet file in batches. A local file appears only when complete
    (written beside, then renamed); on S3 the multipart upload completes on ``close``."""

    def __init__(self, uri: str, schema: pa.Schema, metadata: dict[bytes, bytes] | None = None,
                 settings: storage.S3Settings | None = None):
        self.uri, self.rows_written = uri, 0
        self.schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        self._fs, self._path = storage.arrow_location(uri, settings)
        self._final = self._path
        if not storage.is_s3(uri):
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._path = str(Path(self._path).with_name(f".{Path(self._path).name}.tmp{os.getpid()}"))
        self._writer = pq.ParquetWriter(self._path, self.schema, filesystem=self._fs)
        self._buffer: list[dict] = []

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= ROWS_PER_WRITE:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        self.flush()
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows_written += table.num_rows

    def flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self.rows_written += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        self.flush()
        self._writer.close()
        if self._path != self._final:
            os.replace(self._path, self._final)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self._writer.close()
        if self._path != self._final:
            Path(self._path).unlink(missing_ok=True)


def sorted_listing(prefix_uri: str, suffixes: Iterable[str], settings: storage.S3Settings | None = None,
                   page_size: int = 1000) -> Iterator[ObjectInfo]:
    """Objects under a prefix in ``uri`` order, streamed. S3 returns keys sorted (checked by
    ``diff_listing``); a local folder is walked by ``storage.list_objects`` in path order, which
    differs from string order, so local listings are sorted here (they are in memory anyway)."""
    if storage.is_s3(prefix_uri):
        yield from storage.list_objects(prefix_uri, tuple(suffixes), settings, page_size=page_size)
        return
    yield from sorted(storage.list_objects(os.path.abspath(prefix_uri), tuple(suffixes)), key=lambda o: o.uri)


# --- the incremental diff -----------------------------------------------------------------------


@dataclass
class Diff:
    """What a listing is, compared to the previous manifest."""

    listed: int = 0
    listed_bytes: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    stale_shards: set[str] = field(default_factory=set)
    """Shard files holding segments of deleted or changed objects (must be rewritten)."""


def diff_listing(listing: Iterable[ObjectInfo], previous: Iterable[dict], *, reuse: bool,
                 process: Callable[[ObjectInfo], None], carry: Callable[[dict], None]) -> Diff:
    """Walk the listing and the previous manifest rows (both sorted by uri) side by side.

    Calls ``process(obj)`` for new or changed objects and ``carry(old_row)`` for unchanged ones.
    ``reuse=False`` (e.g. the clip spec changed) treats every previous row as changed.
    Raises ``ValueError`` if either input is out of order (the merge would silently be wrong).
    """
    diff = Diff()
    old_iter = iter(previous)
    old = next(old_iter, None)
    last_uri = last_old = ""

    def advance() -> dict | None:
        nonlocal last_old
        row = next(old_iter, None)
        if row is not None:
            if row["uri"] <= last_old:
                raise ValueError(f"previous manifest not sorted by uri at {row['uri']!r}")
            last_old = row["uri"]
        return row

    def gone(row: dict) -> None:
        if row.get("shard"):
            diff.stale_shards.add(row["shard"])

    if old is not None:
        last_old = old["uri"]
    for obj in listing:
        if obj.uri <= last_uri:
            raise ValueError(f"listing not in lexicographic order at {obj.uri!r} (after {last_uri!r}); "
                             "the S3 endpoint must list keys sorted, as AWS S3 does")
        last_uri = obj.uri
        diff.listed += 1
        diff.listed_bytes += obj.size
        while old is not None and old["uri"] < obj.uri:
            diff.deleted += 1
            gone(old)
            old = advance()
        if old is not None and old["uri"] == obj.uri:
            if reuse and old["etag"] == obj.etag:
                diff.unchanged += 1
                carry(old)
            else:
                diff.changed += 1
                gone(old)
                process(obj)
            old = advance()
        else:
            diff.new += 1
            process(obj)
    while old is not None:
        diff.deleted += 1
        gone(old)
        old = advance()
    return diff


def merge_sorted(a: Iterable[dict], b: Iterable[dict]) -> Iterator[dict]:
    """Two row streams sorted by uri (disjoint) -> one sorted stream."""
    a_iter, b_iter = iter(a), iter(b)
    x, y = next(a_iter, None), next(b_iter, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x["uri"] < y["uri"]):
            yield x
            x = next(a_iter, None)
        else:
            yield y
            y = next(b_iter, None)


def spec_metadata(spec_dict: dict) -> dict[bytes, bytes]:
    return {SPEC_METADATA_KEY: json.dumps(spec_dict, sort_keys=True).encode(),
            b"jepa.manifest_schema": str(MANIFEST_SCHEMA_VERSION).encode()}


def manifest_spec(uri: str, settings: storage.S3Settings | None = None) -> dict | None:
    """The clip spec a manifest was made with (None if there is no manifest or no spec in it)."""
    if not exists(uri, settings):
        return None
    raw = read_metadata(uri, settings).get(SPEC_METADATA_KEY)
    return json.loads(raw) if raw else None
