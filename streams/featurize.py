"""The seed's feature hashing: positional tokens into signed buckets.

Kept exactly as DESIGN.md states it, because it is the baseline every later algorithm is
measured against. Vectors are returned *unnormalised* with small integer entries so that
dot products are exact in float32 whatever order BLAS sums them in; cosine similarity is
then computed from integer dot products and integer squared norms, which makes batched
and one-by-one scoring bit-identical.
"""

from __future__ import annotations

from functools import lru_cache

import mmh3
import numpy as np

from schemas.events import RawEvent


def seed_tokens(event: RawEvent) -> list[str]:
    """Tokens in the seed's order; empty tokens are kept as "" so positions stay put."""
    head = [
        event.process_name,
        event.parent_process,
        event.event_type,
        "" if event.local_port is None else str(event.local_port),
        "" if event.remote_port is None else str(event.remote_port),
    ]
    return [t.strip().lower() for t in head + event.cmdline.split(" ")]


@lru_cache(maxsize=1 << 18)
def _bucket(token: str, position: int, dims: int) -> tuple[int, int]:
    seed = position * 31
    index = mmh3.hash(token, seed, signed=False) % dims
    sign = 1 if mmh3.hash(token, seed + 1, signed=False) & 1 else -1
    return index, sign


def seed_vector(tokens: list[str], dims: int) -> np.ndarray:
    """Signed hashed counts (float32, integer-valued) for a token list."""
    vec = np.zeros(dims, dtype=np.float32)
    for position, token in enumerate(tokens):
        if token:
            index, sign = _bucket(token, position, dims)
            vec[index] += sign
    return vec


def normalised(vec: np.ndarray) -> np.ndarray:
    """L2-normalised copy (the seed's stored form); zero vectors stay zero."""
    norm = float(np.sqrt(np.dot(vec.astype(np.float64), vec.astype(np.float64))))
    return vec / norm if norm else vec.copy()
