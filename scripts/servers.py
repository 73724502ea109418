"""What the benchmark and soak scripts share: `python -m gateway` as a real process, the CPU they
ran on, and how a report is printed and written."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's name, which every benchmark prints with its numbers."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def report(lines: list[str], out: Path | None) -> None:
    """Print a benchmark's Markdown report, and write it to `out` when asked."""
    text = "\n".join(lines)
    print("\n" + text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nothing listens on, taken from below the kernel's ephemeral range. A server binds
    it only seconds later (after loading its model); a port from the ephemeral range could be
    taken meanwhile as the local port of some client's outgoing connection."""
    top = _ephemeral_range_start()
    low = max(1024, top - 10000)
    with contextlib.suppress(ValueError):  # `make test` gives each leg running beside the others a slice
        index, count = map(int, os.environ.get("HF_GATEWAY_PORT_SLICE", "").split("/"))
        size = (top - low) // count
        low, top = low + index * size, low + (index + 1) * size
    for _ in range(100):
        port = random.randrange(low, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """Stop a process started with `start_new_session=True` and everything it started (vLLM's
    engine and workers, template workers): SIGTERM to the group, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone; its children may not be
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


@contextlib.contextmanager
def gateway_process(args: list[str], python: str = sys.executable, *, grpc_port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (http://127.0.0.1:PORT, process) once /openai/v1/models answers; stop it (and every
    process it started) afterwards, also when the caller fails."""
    port = free_port()
    grpc_args = ["--grpc_port", str(grpc_port)] if grpc_port else []
    cmd = [python, "-m", "gateway", "--host", "127.0.0.1", "--http_port", str(port), *grpc_args, "--disable_log_requests", *args]
    with _serving(cmd, f"http://127.0.0.1:{port}", "/openai/v1/models") as proc:
        yield f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def plain_vllm_process(python: str, model_dir: str, args: list[str]) -> Iterator[str]:
    """vLLM's own OpenAI server (the peer we measure against); yields its /v1 base URL."""
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port), "--model", model_dir,
           "--served-model-name", "model", "--disable-log-stats", *args]
    with _serving(cmd, f"http://127.0.0.1:{port}", "/v1/models"):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def _serving(cmd: list[str], base: str, probe: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 900  # a hang guard: a loaded machine starts vLLM slowly
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {cmd} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}{probe}", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.3)
        yield proc
    finally:
        stop_group(proc)
