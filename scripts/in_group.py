"""Run a command in a process group of its own, and stop that whole group when it ends.

    python scripts/in_group.py -- python -m pytest -q

Whatever the command started and left behind (a server a failing test did not stop, vLLM's engine
and worker processes, template workers) is stopped with it: SIGTERM to the group, then SIGKILL.
Ctrl-C or SIGTERM to this script go to the group. The exit status is the command's.

The command gets a temporary directory of its own (TMPDIR), removed when the group is stopped: what
the run leaves there (vLLM's IPC sockets, torch's compile cache, pytest's tmp_path folders) does not
pile up run after run on the machine's disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: in_group.py -- COMMAND [ARGS...]")
    tmpdir = tempfile.mkdtemp(prefix="hf-gateway-run-")
    env = {**os.environ, "TMPDIR": tmpdir}
    proc = subprocess.Popen(argv, start_new_session=True, env=env)

    def forward(sig: int, frame: object) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    status = proc.wait()
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the group is empty
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    shutil.rmtree(tmpdir, ignore_errors=True)
    raise SystemExit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
