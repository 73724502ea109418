"""Start `python -m gateway` as a real process for the benchmark and soak scripts."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gateway_process(args: list[str], python: str = sys.executable, *, grpc_port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (http://127.0.0.1:PORT, process) once /openai/v1/models answers; stop it afterwards."""
    port = free_port()
    grpc_args = ["--grpc_port", str(grpc_port)] if grpc_port else []
    proc = subprocess.Popen(
        [python, "-m", "gateway", "--host", "127.0.0.1", "--http_port", str(port), *grpc_args, "--disable_log_requests", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {args} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/openai/v1/models", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(60)
