"""Shard rows cut from synthetic physics videos, shared by the shard-mode tests."""

from functools import cache

from pipelines.shards import ClipSpec, video_rows
from pipelines.synth_physics import PhysicsConfig, make_video

SPEC = ClipSpec(fps=4.0, short_side=48, frames=8)


@cache
def physics_segment_rows() -> tuple[dict, ...]:
    """Four shard rows (two 8-frame segments each of two 4 s, 64 px, 12 fps videos)."""
    rows = []
    for i in range(2):
        data, _ = make_video(PhysicsConfig(seconds=4.0, fps=12, size=64), seed=i)
        rows += list(video_rows(data, uri=f"s3://b/raw/v{i}.mp4", etag=f"e{i}", spec=SPEC))
    assert len(rows) == 4
    return tuple(rows)
