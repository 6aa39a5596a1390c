"""Process-stable identities: which videos are held out, and the key of each clip drawn.

Ray runs transforms in many processes and Python's ``hash()`` is salted per process, so every
identity the data paths share (the held-out split, a row's key, the RNG seeds derived from it) is
a hash that is the same in every process and run, of the object key rather than the bucket.
"""

from __future__ import annotations

import hashlib

from pipelines import storage

HELD_OUT_SALT = "heldout"


def stable_hash(text: str) -> int:
    """64-bit hash that is the same in every process and run (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split_key(uri: str) -> str:
    """What identifies a source: the object key, not the bucket, so a copied dataset keeps its split."""
    return storage.parse_uri(uri)[1] if storage.is_s3(uri) else uri


def row_key(uri: str, segment: int, epoch: int) -> int:
    """Stable 63-bit id of one draw of one segment (fits int64; same in every process)."""
    return stable_hash(f"{split_key(uri)}#{int(segment)}#{int(epoch)}") >> 1


def is_held_out(uri: str, fraction: float, salt: str = HELD_OUT_SALT) -> bool:
    """Whether ``uri`` is held out: a hash of its key below ``fraction`` (no RNG, so the same
    videos are held out in every mode, and adding videos moves none)."""
    return fraction > 0 and stable_hash(f"{salt}:{split_key(uri)}") / 2**64 < fraction


def split_held_out(uris: list[str], fraction: float, salt: str = HELD_OUT_SALT) -> tuple[list[str], list[str]]:
    """(train, held_out) by ``is_held_out``: stable as videos are added.

    Each video lands in held_out with probability ``fraction``, so small sets may get none.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    train, held_out = [], []
    for uri in uris:
        (held_out if is_held_out(uri, fraction, salt) else train).append(uri)
    return train, held_out
