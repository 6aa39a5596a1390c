"""Resume planning: a training dataset can start at a position in its input rows, and its clips
say how many input rows they used up, so a trainer knows where to resume.

Every dataset builder takes ``start``, a position in its sequence of input rows (items in direct
and image mode, shard rows in shard mode, over all epochs), and leaves the rows before it out
before anything is read or decoded. Output rows carry ``INPUT_ROWS``, the input rows each clip
stands for (itself plus the dropped rows before it), so a trainer that sums it over the clips it
consumed knows the position to resume at, drops included.
"""

from __future__ import annotations

import dataclasses

import numpy as np

INPUT_ROWS = "input_rows"
"""Output column: how many input rows of the dataset each clip accounts for (see ``input_rows``)."""


def input_rows(kept: list[int], n: int) -> np.ndarray:
    """Input rows each output row stands for, given the indices ``kept`` of the ``n`` input rows of
    a batch that gave a clip: itself plus the dropped rows before it, and the last one also the
    batch's trailing drops. Summed over consumed clips this counts consumed input rows, so a resume
    starts after the dropped rows too (only a batch that keeps nothing goes uncounted)."""
    if not kept:
        return np.zeros(0, dtype=np.int64)
    counts = np.diff(np.asarray([-1, *kept], dtype=np.int64))
    counts[-1] += n - 1 - kept[-1]
    return counts


def clips_batch(clips: list[np.ndarray], keys: list[int], kept: list[int], n: int, *,
                num_frames: int, size: int) -> dict[str, np.ndarray]:
    """A decode stage's output for a batch of ``n`` input rows whose rows ``kept`` gave ``clips``:
    {"clip": uint8 (B, num_frames, size, size, 3), "key": int64 (B,), INPUT_ROWS: int64 (B,)}
    (typed and shaped even when B is 0)."""
    if not clips:
        return {"clip": np.zeros((0, num_frames, size, size, 3), dtype=np.uint8), "key": np.zeros(0, np.int64),
                INPUT_ROWS: np.zeros(0, np.int64)}
    return {"clip": np.stack(clips), "key": np.asarray(keys, dtype=np.int64), INPUT_ROWS: input_rows(kept, n)}


def epoch_items(uris: list[str], *, seed: int, epochs: int, start: int = 0) -> list[dict]:
    """{"uri", "epoch"} rows of ``epochs`` passes over ``uris``, each pass in its own seeded order,
    from row ``start`` on. Built in the driver, so a resumed run never touches the rows before its
    position; whole epochs before it are not even permuted."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if not uris:
        return []
    first, offset = divmod(start, len(uris))
    items = []
    for epoch in range(first, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(uris))
        items += [{"uri": uris[i], "epoch": epoch} for i in order]
    if start and offset >= len(items):
        raise ValueError(f"start={start} is past the {epochs * len(uris)} rows of {epochs} epochs")
    return items[offset:]


@dataclasses.dataclass(frozen=True)
class RowRange:
    """Rows [lo, hi) of one shard file, read and decoded by one task for epoch ``epoch``."""

    path: str
    lo: int
    hi: int
    epoch: int


def plan_row_ranges(paths: list[str], counts: list[int], *, rows_per_range: int, seed: int, epochs: int,
                    start: int = 0) -> list[RowRange]:
    """Shard mode's read plan: every file (``counts`` rows each, aligned with ``paths``) cut into
    ranges of ``rows_per_range`` rows, each epoch over all ranges in its own seeded order, from row
    ``start`` on. Whole epochs and whole ranges before the position are left out, and the range it
    falls in starts at its first unconsumed row, so a resumed run never reads them."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if rows_per_range < 1:
        raise ValueError(f"rows_per_range must be >= 1, got {rows_per_range}")
    total = sum(counts)
    first, skip = divmod(start, total) if total else (0, 0)
    if start and (not total or first >= epochs):
        raise ValueError(f"start={start} is past the {epochs * total} rows of {epochs} epochs")
    ranges = [(path, lo, min(lo + rows_per_range, n)) for path, n in zip(paths, counts)
              for lo in range(0, n, rows_per_range)]
    plan = []
    for epoch in range(first, epochs):
        for i in np.random.default_rng([seed, epoch]).permutation(len(ranges)):
            path, lo, hi = ranges[i]
            if skip >= hi - lo:  # only in the first epoch: wholly consumed before the position
                skip -= hi - lo
                continue
            plan.append(RowRange(path, lo + skip, hi, epoch))
            skip = 0
    return plan
