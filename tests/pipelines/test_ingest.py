"""Ingest: the incremental diff and the per-batch transform without servers, then the whole Ray
Data job against real SeaweedFS with the bad-input corpus (every case), re-ingested incrementally,
and from a local folder through the CLI."""

import json

import pyarrow.parquet as pq
import pytest
from video_corpus import CASES, SMALL_SPEC, encode, make_corpus, moving_frames, two_seconds

from pipelines import ingest as ingest_module
from pipelines import manifest as mf
from pipelines import storage
from pipelines.ingest import IngestError, ingest, ingest_batch
from pipelines.shards import decode_segment, shard_uris, video_rows
from pipelines.storage import ObjectInfo

# --- unit: no server ------------------------------------------------------------------------------


def objs(*specs: str) -> list[ObjectInfo]:
    """"a:e1" -> ObjectInfo("a", 1, "e1")."""
    return [ObjectInfo(uri, 1, etag) for uri, etag in (s.split(":") for s in specs)]


def old_rows(*specs: str) -> list[dict]:
    """"a:e1:shard" -> a previous manifest row."""
    return [{"uri": u, "etag": e, "shard": sh} for u, e, sh in (s.split(":") for s in specs)]


def test_diff_listing_is_a_sorted_merge():
    processed, carried = [], []
    diff = mf.diff_listing(objs("a:1", "b:2", "d:1", "e:1"), old_rows("a:1:s1", "b:1:s1", "c:1:s2", "e:1:", "f:1:s3"),
                           reuse=True, process=processed.append, carry=carried.append)  # fmt: skip
    assert [o.uri for o in processed] == ["b", "d"] and [r["uri"] for r in carried] == ["a", "e"]
    assert (diff.listed, diff.new, diff.changed, diff.unchanged, diff.deleted) == (4, 1, 1, 2, 2)
    assert diff.stale_shards == {"s1", "s2", "s3"}  # b changed (s1), c and f deleted

    processed.clear()
    diff = mf.diff_listing(objs("a:1"), old_rows("a:1:s1"), reuse=False, process=processed.append, carry=carried.append)
    assert diff.changed == 1 and diff.stale_shards == {"s1"} and len(processed) == 1  # new clip spec: redo all

    with pytest.raises(ValueError, match="lexicographic"):
        mf.diff_listing(objs("b:1", "a:1"), [], reuse=True, process=processed.append, carry=carried.append)
    with pytest.raises(ValueError, match="not sorted"):
        mf.diff_listing([], old_rows("b:1:", "a:1:"), reuse=True, process=processed.append, carry=carried.append)


def test_listing_streams_into_chunks(tmp_path, monkeypatch):
    """The driver writes a chunk every LISTING_CHUNK_ROWS objects while the listing is still
    being paged through: it never holds the listing."""
    monkeypatch.setattr(ingest_module, "LISTING_CHUNK_ROWS", 10)
    staging = tmp_path / "staging"
    chunks_when_listed = []

    def listing(*args, **kwargs):
        for i in range(25):
            chunks_when_listed.append(len(list(staging.glob("todo-*.parquet"))))
            yield ObjectInfo(f"s3://b/raw/{i:03d}.mp4", 10, f"e{i}")

    monkeypatch.setattr(mf, "sorted_listing", listing)
    diff, chunks, carried = ingest_module._stage_listing(
        "s3://b/raw", str(staging), str(tmp_path / "no-manifest.parquet"), True, (".mp4",), False)
    assert (diff.listed, diff.new, len(chunks)) == (25, 25, 3)
    assert chunks_when_listed[9:12] == [0, 1, 1] and chunks_when_listed[20] == 2
    assert [len(mf.read_table(c)) for c in chunks] == [10, 10, 5] and list(mf.read_rows(carried)) == []


def test_ingest_batch_writes_one_shard_and_returns_manifest_rows(tmp_path):
    names = ["good.mp4", "too_short.mp4", "empty.mp4"]
    for name, data in make_corpus(names).items():
        (tmp_path / "src" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    batch = {"uri": [str(tmp_path / "src" / n) for n in names], "etag": ["e1", "e2", "e3"], "bytes": [1, 2, 3]}
    batch["uri"].append(str(tmp_path / "src" / "vanished.mp4"))
    batch["etag"].append("e4")
    batch["bytes"].append(4)
    kwargs = {"spec": SMALL_SPEC.to_dict(), "dataset_uri": str(tmp_path / "ds"), "run_id": "run1"}
    table = ingest_batch(batch, **kwargs)
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert table.schema == mf.MANIFEST_SCHEMA and list(rows) == [*names, "vanished.mp4"]
    assert (rows["good.mp4"]["status"], rows["good.mp4"]["segments"]) == ("ok", 2)
    assert (rows["too_short.mp4"]["flags"], rows["too_short.mp4"]["segments"]) == (["too_short"], 0)
    assert rows["empty.mp4"]["reason"] == "zero_bytes" and rows["vanished.mp4"]["reason"] == "fetch_failed"
    shard = rows["good.mp4"]["shard"]
    assert shard.startswith("shards/run1-") and not rows["too_short.mp4"]["shard"]
    segments = pq.read_table(tmp_path / "ds" / shard).to_pylist()
    assert sorted(s["segment"] for s in segments) == [0, 1] and {s["etag"] for s in segments} == {"e1"}
    assert ingest_batch(batch, **kwargs)["shard"].to_pylist() == table["shard"].to_pylist()  # a retry overwrites
    assert len(list((tmp_path / "ds" / "shards").iterdir())) == 1

    batch = {"uri": [str(tmp_path / "src" / "good.mp4")] * 2, "etag": ["e1", "e5"], "bytes": [1, 1]}
    split = ingest_batch(batch, **kwargs, shard_bytes=1)  # a new shard file after every object
    assert split["segments"].to_pylist() == [2, 2] and len(set(split["shard"].to_pylist())) == 2


@pytest.mark.parametrize("name", ["good.mp4", "rotated_phone.mp4", "vfr.mp4", "ten_bit.mp4", "odd_size.mp4",
                                  "av1.mkv", "uhd_4k.mp4", "glitched.mp4", "too_short.mp4"])
def test_one_decode_pass_gives_the_reference_segments(name):
    """Probing and transcoding share one decode; the segments equal ``shards.video_rows``'s own."""
    data = make_corpus([name])[name]
    obj = ObjectInfo(f"s3://b/raw/{name}", len(data), "etag")
    probe, rows = ingest_module.probe_and_transcode(data, obj, SMALL_SPEC)
    assert (probe.status, probe.reason) == (CASES[name].status, CASES[name].reason)
    if probe.status == "quarantined" or "too_short" in probe.flags:
        assert rows == []
        return
    reference = list(video_rows(data, uri=obj.uri, etag="etag", spec=SMALL_SPEC))
    assert len(rows) == len(reference) > 0
    for got, want in zip(rows, reference):
        assert {k: v for k, v in got.items() if k != "mp4"} == {k: v for k, v in want.items() if k != "mp4"}
        assert (decode_segment(got["mp4"]) == decode_segment(want["mp4"])).all()


# --- integration: Ray Data + SeaweedFS ----------------------------------------------------------


def live_segments(dataset: str) -> set[tuple[str, str, int]]:
    """(uri, etag, segment) of every row in the shards dataset.json lists; checks the shape too."""
    found = set()
    info = json.loads(storage.get_bytes(storage.join_uri(dataset, "dataset.json")))
    for uri in shard_uris(dataset, info):
        for row in pq.read_table(storage.arrow_location(uri)[1], filesystem=storage.arrow_location(uri)[0]).to_pylist():
            clip = decode_segment(row["mp4"])
            assert clip.shape == (SMALL_SPEC.frames, row["height"], row["width"], 3), row["uri"]
            assert min(row["height"], row["width"]) == SMALL_SPEC.short_side, row["uri"]
            assert (row["fps"], row["n_frames"]) == (SMALL_SPEC.fps, SMALL_SPEC.frames)
            key = (row["uri"], row["etag"], row["segment"])
            assert key not in found
            found.add(key)
    # nothing else lies in shards/: replaced and emptied shards were deleted
    listed = {o.uri for o in storage.list_objects(storage.join_uri(dataset, "shards"), (".parquet",))}
    assert listed == set(shard_uris(dataset, info))
    return found


def manifest_rows(dataset: str) -> dict[str, dict]:
    rows = list(mf.read_rows(storage.join_uri(dataset, "manifest.parquet")))
    assert [r["uri"] for r in rows] == sorted(r["uri"] for r in rows)
    return {r["uri"].rsplit("/", 1)[1]: r for r in rows}


def expected_segments(rows: dict[str, dict]) -> set[tuple[str, str, int]]:
    return {(r["uri"], r["etag"], i) for r in rows.values() for i in range(r["segments"])}


@pytest.mark.integration
def test_ingest_bad_corpus_from_seaweedfs_then_incrementally(s3_env, ray_local, monkeypatch):
    # Several staging chunks, as at scale; a multiple of batch_objects, so the batches (and which
    # videos share a shard) follow the sorted listing exactly: 4 names per batch.
    monkeypatch.setattr(ingest_module, "LISTING_CHUNK_ROWS", 8)
    raw = f"s3://{s3_env.bucket}/ingest-test/raw"
    dataset = f"s3://{s3_env.bucket}/datasets/ingest-test"
    corpus = make_corpus()
    for name, data in corpus.items():
        storage.put_bytes(f"{raw}/{name}", data)
    storage.put_bytes(f"{raw}/good.state.parquet", b"sidecar: not listed")  # not a video suffix

    first = ingest(raw, dataset, SMALL_SPEC, batch_objects=4, progress=False)
    print(first.summary())
    assert (first.objects, first.new, first.unchanged, first.deleted) == (len(CASES), len(CASES), 0, 0)
    rows = manifest_rows(dataset)
    assert set(rows) == set(CASES)
    for name, case in CASES.items():
        row = rows[name]
        assert (row["status"], row["reason"], tuple(row["flags"])) == (case.status, case.reason, case.flags), name
        assert row["etag"] and row["bytes"] == len(corpus[name])
        kept_with_clips = case.status != "quarantined" and "too_short" not in case.flags
        assert (row["segments"] > 0) == kept_with_clips and bool(row["shard"]) == kept_with_clips, name
    assert rows["uhd_4k.mp4"]["segments"] == 1 and rows["good.mp4"]["segments"] == 2
    quarantine = {r["uri"].rsplit("/", 1)[1]: r["reason"] for r in mf.read_rows(f"{dataset}/quarantine.parquet")}
    assert quarantine == {n: c.reason for n, c in CASES.items() if c.status == "quarantined"}
    assert live_segments(dataset) == expected_segments(rows)
    assert first.segments == first.segments_written == len(expected_segments(rows))
    assert first.quarantined_by_reason == {r: list(quarantine.values()).count(r) for r in set(quarantine.values())}
    info = json.loads(storage.get_bytes(f"{dataset}/dataset.json"))
    assert info["clip_spec"] == SMALL_SPEC.to_dict() and info["counts"]["objects"] == len(CASES)
    assert not list(storage.list_objects(f"{dataset}/_staging", None))

    # Re-ingest: one deleted, one overwritten (both share their shard with others), one added.
    assert rows["good.mp4"]["shard"] == rows["good_with_audio.mov"]["shard"]
    assert rows["vfr.mp4"]["shard"] == rows["vp9.webm"]["shard"]
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="ingest-test/raw/good.mp4")
    storage.put_bytes(f"{raw}/vfr.mp4", encode(moving_frames(16, seed=7)))  # new bytes, new etag
    storage.put_bytes(f"{raw}/zz_new.mp4", two_seconds())
    second = ingest(raw, dataset, SMALL_SPEC, batch_objects=4, progress=False)
    print(second.summary())
    assert (second.objects, second.new, second.changed, second.unchanged, second.deleted) == (
        len(CASES), 1, 1, len(CASES) - 2, 1)  # fmt: skip
    assert second.segments_written == 4 and second.shards_rewritten >= 1
    after = manifest_rows(dataset)
    assert "good.mp4" not in after and after["zz_new.mp4"]["segments"] == 2
    for survivor in ("good_with_audio.mov", "vp9.webm"):  # moved to a rewritten shard, segments kept
        assert after[survivor]["shard"] != rows[survivor]["shard"] and after[survivor]["segments"] == 2
    assert after["vfr.mp4"]["etag"] != rows["vfr.mp4"]["etag"] and after["vfr.mp4"]["status"] == "ok"
    for name in set(after) - {"vfr.mp4", "zz_new.mp4"}:  # carried, not processed again
        assert after[name]["run_id"] == first.run_id and after[name]["etag"] == rows[name]["etag"], name
    assert live_segments(dataset) == expected_segments(after)
    assert not any(uri.endswith("/good.mp4") for uri, _, _ in live_segments(dataset))

    third = ingest(raw, dataset, SMALL_SPEC, batch_objects=4, progress=False)
    assert (third.unchanged, third.processed, third.shards_written, third.shards_removed) == (len(CASES), 0, 0, 0)
    assert third.segments == second.segments


@pytest.mark.integration
def test_ingest_local_folder_through_the_cli(tmp_path, ray_local, capsys):
    from ray_jobs.cli import main

    src = tmp_path / "videos"
    src.mkdir()
    for name, data in make_corpus(["good.mp4", "too_short.mp4", "notes.mp4"]).items():
        (src / name).write_bytes(data)
    (src / "nested").mkdir()
    (src / "nested" / "clip.mov").write_bytes(two_seconds())
    dataset = tmp_path / "dataset"
    argv = ["ingest", str(src), "--dataset", str(dataset), "--fps", "4", "--short-side", "32", "--frames", "4",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 listed: 4 new" in out and "quarantined 1: not_video 1" in out and "flagged     too_short 1" in out
    rows = manifest_rows(str(dataset))
    assert set(rows) == {"good.mp4", "too_short.mp4", "notes.mp4", "clip.mov"}
    assert rows["clip.mov"]["uri"] == str(src / "nested" / "clip.mov")
    assert live_segments(str(dataset)) == expected_segments(rows) and len(expected_segments(rows)) == 4

    (src / "good.mp4").unlink()
    assert main(argv) == 0
    assert "3 listed: 0 new, 0 changed, 3 unchanged (skipped), 1 deleted" in capsys.readouterr().out
    assert live_segments(str(dataset)) == expected_segments(manifest_rows(str(dataset)))


def test_cli_ingest_help_and_bad_arguments(tmp_path, capsys):
    from ray_jobs.cli import main

    from pipelines.ingest import VIDEO_SUFFIXES
    from ray_jobs.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--help"])
    assert exit_info.value.code == 0 and "--short-side" in capsys.readouterr().out
    defaults = build_parser().parse_args(["ingest", "s3://b/raw", "--dataset", "s3://b/datasets/x"])
    assert defaults.suffixes == ",".join(VIDEO_SUFFIXES) and (defaults.fps, defaults.short_side) == (4.0, 288)
    with pytest.raises(SystemExit) as exit_info:  # an invalid clip spec is one line, before Ray starts
        main(["ingest", str(tmp_path), "--dataset", str(tmp_path / "ds"), "--short-side", "287"])
    assert exit_info.value.code == 2 and "short_side must be even" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # checked before Ray starts
        main(["ingest", str(tmp_path / "missing"), "--dataset", str(tmp_path / "ds")])
    assert exit_info.value.code == 2 and "source folder not found" in capsys.readouterr().err
    with pytest.raises(IngestError, match="source folder not found"):
        ingest(str(tmp_path / "missing"), str(tmp_path / "ds"), SMALL_SPEC)


def test_unreachable_object_store_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("JEPA_S3_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(IngestError, match="cannot list source s3://b/raw: Could not connect"):
        ingest("s3://b/raw", "s3://b/datasets/x", SMALL_SPEC)
