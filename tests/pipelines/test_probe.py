"""Probe unit tests: every case of the bad-input corpus (made here, in memory), no servers."""

import numpy as np
import pytest
from video_corpus import CASES, SMALL_SPEC, encode, moving_frames, two_seconds

from pipelines.probe import FLAGS, QUARANTINE_REASONS, VideoScan, grid_frames, iso_box_problem, probe_object, sniff


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return {}  # filled lazily: each case is built once per module, by the first test that needs it


def built(corpus: dict[str, bytes], name: str) -> bytes:
    if name not in corpus:
        corpus[name] = CASES[name].build()
    return corpus[name]


@pytest.mark.parametrize("name", list(CASES))
def test_every_corpus_case_is_classified(name, corpus):
    case = CASES[name]
    result = probe_object(built(corpus, name), SMALL_SPEC)
    assert (result.status, result.reason, tuple(result.flags)) == (case.status, case.reason, case.flags), result
    for key, value in case.extra.items():
        assert getattr(result, key) == pytest.approx(value), (key, result)
    if case.status == "quarantined":
        assert result.detail  # a human-readable why, beside the reason code
    else:
        assert result.n_frames >= 2 and result.duration_s > 0 and result.fps > 0 and result.corrupt_frames == 0


def test_corpus_covers_every_reason_and_flag():
    assert {c.reason for c in CASES.values() if c.reason} == set(QUARANTINE_REASONS)
    assert {f for c in CASES.values() for f in c.flags} == set(FLAGS)


def test_too_short_needs_a_spec_and_matches_the_segment_grid(corpus):
    data = built(corpus, "too_short.mp4")
    assert probe_object(data).status == "ok"  # without a spec there is no clip length to compare
    # 16 frames at 8 fps: first and last frame 1.875 s apart -> grid 0, 0.25, ..., 1.75 at 4 fps = 8
    assert grid_frames(1.875, 4.0) == 8 and grid_frames(0.375, 4.0) == 2 and grid_frames(0.75, 4.0) == 4
    from pipelines.shards import ClipSpec

    good = built(corpus, "good.mp4")
    assert probe_object(good, ClipSpec(fps=4.0, short_side=32, frames=8)).flags == []
    assert probe_object(good, ClipSpec(fps=4.0, short_side=32, frames=9)).flags == ["too_short"]


def test_scan_yields_each_frame_once_while_auditing(corpus):
    with VideoScan(built(corpus, "rotated_phone.mp4"), SMALL_SPEC) as scan:
        frames = list(scan.frames())
        result = scan.result()
    assert len(frames) == result.n_frames == 16
    assert [round(f.time, 3) for f in frames] == [round(i / 8, 3) for i in range(16)]
    assert result.rotation == 90 and (result.width, result.height) == (48, 64)
    with VideoScan(b"", SMALL_SPEC) as scan:  # header verdicts decode nothing
        assert list(scan.frames()) == [] and scan.result().reason == "zero_bytes"


def test_corrupt_frames_are_counted_and_quarantined(corpus):
    result = probe_object(built(corpus, "glitched.mp4"), SMALL_SPEC)
    assert result.corrupt_frames == 3 and result.n_frames == 29
    assert "3 of 32" in result.detail


def test_truncation_at_any_point_never_raises():
    data = two_seconds(True)  # moov first: every cut leaves a readable header
    for cut in np.linspace(0.05, 0.95, 10):
        result = probe_object(data[: int(len(data) * cut)], SMALL_SPEC)
        assert (result.status, result.reason) == ("quarantined", "truncated"), (cut, result)
    assert probe_object(data, SMALL_SPEC).status == "ok"


def test_vfr_reports_the_mean_rate():
    result = probe_object(CASES["vfr.mp4"].build())
    assert result.vfr and result.fps == pytest.approx(15 / 1.85, rel=1e-3)
    assert not probe_object(encode(moving_frames(16), fps=29.97)).vfr  # NTSC rates are not VFR


def test_sniff_and_mp4_boxes():
    assert sniff(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 8) == "iso"
    assert sniff(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 8) == "heif"  # an iPhone photo named .mp4
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\x00" * 12) == "matroska"
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8) == "image"
    assert sniff(b"hello") == "unknown"
    data = two_seconds()
    assert iso_box_problem(data) == ""
    assert "no complete moov" in iso_box_problem(data[: len(data) // 2])
    assert probe_object(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64).reason == "still_image"


def test_encoding_the_av1_case_keeps_this_process_scheduling_policy():
    """As root, SVT-AV1 makes the encoding thread real-time (SCHED_FIFO 99); the corpus undoes it,
    or every server a later test starts would inherit it (video_corpus.scheduling_kept)."""
    import os

    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    CASES["av1.mkv"].build()
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
