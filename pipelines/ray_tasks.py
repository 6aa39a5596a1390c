"""Waiting on a set of Ray tasks with one progress bar: what every fan-out job here needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def finished(weights: dict, desc: str, unit: str, progress: bool = True) -> Iterator[tuple[Any, Any]]:
    """(object ref, result) of each task in ``weights`` (ref -> how many ``unit`` it stands for) in
    the order they finish; the bar advances by each one's weight."""
    import ray
    from tqdm import tqdm

    pending = list(weights)
    with tqdm(total=sum(weights.values()), desc=desc, unit=unit, disable=not progress) as bar:
        while pending:
            (done,), pending = ray.wait(pending, num_returns=1)
            yield done, ray.get(done)
            bar.update(weights[done])
