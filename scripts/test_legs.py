"""`make test`: the legs side by side, then one line per leg.

    python3 scripts/test_legs.py [--root DIR] [LEG ...]      (default: transformers live vllm openvino)

Each leg installs its environment and runs its pytest (`make test-LEG`); the legs run at the same
time, because on a small machine much of a leg is waiting (pip downloads, a server loading, vLLM
compiling) and the other legs use that time. `.venv` is installed first (the OpenVINO environment
converts the packaged model with it, and the `live` leg, the real-process tests, shares it);
vLLM's environment starts installing at once. Every leg runs
to its end even when another fails. Each leg's output goes to `.test-logs/LEG.log`; the end prints
how each went (ok/FAILED, minutes, its pytest summary) and, for a leg that failed, the end of its
log. Exit status 1 if any leg failed. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where the Makefile is (--root: another, for this script's own test)
LEGS = ("transformers", "live", "vllm", "openvino")
# What a leg installs before its tests (make targets), and whether it waits for the transformers
# leg's install (.venv and the browser) first.
INSTALL = {"transformers": [".venv/.installed-test", "browser"], "live": [], "vllm": ["vllm-env"], "openvino": ["openvino-env"]}
NEEDS_VENV = {"live", "openvino"}
# What a leg that needs .venv can install before it is there (its own environment's packages).
EARLY = {"openvino": [".venv-openvino/.installed-packages"]}

_print_lock = threading.Lock()
_start = time.monotonic()


def say(text: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - _start:5.0f}s] {text}", flush=True)


def make(targets: list[str], log, env: dict[str, str]) -> int:
    log.write(f"$ make {' '.join(targets)}\n")
    log.flush()
    return subprocess.run(["make", "--no-print-directory", *targets], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def logs() -> Path:
    return ROOT / ".test-logs"


class Leg(threading.Thread):
    def __init__(self, name: str, index: int, count: int, venv_ready: threading.Event) -> None:
        super().__init__(name=name)
        self.leg, self.venv_ready = name, venv_ready
        # Each leg's tests take their ports from a slice of their own (scripts/servers.free_port).
        self.env = {**os.environ, "HF_GATEWAY_PORT_SLICE": f"{index}/{count}"}
        self.status: int | None = None
        self.seconds = 0.0
        self.stage = "install"

    def run(self) -> None:
        began = time.monotonic()
        with (logs() / f"{self.leg}.log").open("w") as log:
            try:
                status = 0
                if EARLY.get(self.leg):
                    say(f"{self.leg}: installing its packages")
                    status = make(EARLY[self.leg], log, self.env)
                if self.leg in NEEDS_VENV:
                    self.venv_ready.wait()
                if INSTALL[self.leg] and status == 0:
                    say(f"{self.leg}: installing")
                    status = make(INSTALL[self.leg], log, self.env)
                if self.leg == "transformers":
                    self.venv_ready.set()
                if status == 0:
                    self.stage = "tests"
                    say(f"{self.leg}: testing ({time.monotonic() - began:.0f}s of installs)")
                    status = make([f"test-{self.leg}"], log, self.env)
                self.status = status
            finally:
                if self.leg == "transformers":
                    self.venv_ready.set()  # installed or failed: the OpenVINO leg need not wait longer
                self.seconds = time.monotonic() - began
        say(f"{self.leg}: {'ok' if self.status == 0 else 'FAILED in ' + self.stage} after {self.seconds:.0f}s")


def summary_line(log: Path) -> str:
    found = [line for line in log.read_text(errors="replace").splitlines()
             if re.search(r"\d+ (passed|failed|error|deselected)|no tests ran", line)]
    return found[-1].strip("= ") if found else f"no pytest summary (see .test-logs/{log.name})"


def main() -> None:
    global ROOT
    args = sys.argv[1:]
    if args[:1] == ["--root"]:
        ROOT, args = Path(args[1]).resolve(), args[2:]
    names = args or list(LEGS)
    unknown = set(names) - set(LEGS)
    if unknown:
        raise SystemExit(f"unknown legs {sorted(unknown)}; choose from {LEGS}")
    logs().mkdir(exist_ok=True)
    for old in logs().iterdir():
        old.unlink()
    venv_ready = threading.Event()
    if "transformers" not in names:
        venv_ready.set()
    legs = [Leg(name, i, len(names), venv_ready) for i, name in enumerate(names)]
    say(f"running {', '.join(names)} side by side; logs in .test-logs/")
    for leg in legs:
        leg.start()
    for leg in legs:
        leg.join()
    failed = [leg for leg in legs if leg.status != 0]
    for leg in failed:
        tail = (logs() / f"{leg.leg}.log").read_text(errors="replace").splitlines()[-120:]
        print(f"\n== {leg.leg}: the end of .test-logs/{leg.leg}.log ==\n" + "\n".join(tail))
    lines = [f"{leg.leg:<13} {'ok' if leg.status == 0 else 'FAILED':<7} {leg.seconds:5.0f}s  {summary_line(logs() / f'{leg.leg}.log')}"
             for leg in legs]
    (logs() / "summary").write_text("\n".join(lines) + "\n")
    total = time.monotonic() - _start
    print(f"\n== make test: each leg (side by side, {total / 60:.1f} minutes in all) ==\n" + "\n".join(lines))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
