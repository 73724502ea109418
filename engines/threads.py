"""Threads sized for the CPU the process really has, not the CPUs the machine has.

torch, OpenMP, the tokenizers' Rust pool and Python's default executor all size themselves from
the machine's core count. In a Kubernetes pod with a CPU limit, in a container pinned to a few
cores, or on a host where other jobs run, that is too many threads, and OpenMP threads that spin
while they wait for a descheduled partner burn the time the partner needs: the same answer took
10x longer on a busy 2-core machine.

The budget is the smaller of the CPU affinity (`sched_getaffinity`) and the cgroup CPU quota
(cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, the tightest on the way to the
root), rounded up. From it:

- torch intra-op threads = the budget; inter-op threads = 1 (one scheduler thread drives the model);
- the tokenizers' Rust pool (`RAYON_NUM_THREADS`) = the budget;
- OpenMP waits by spinning only briefly (`GOMP_SPINCOUNT`), then sleeps, so a thread waiting for a
  descheduled partner gives the CPU back (measured: scripts/bench_contention.py);
- the event loop's default executor (tokenization) = budget + 4 threads.

`OMP_NUM_THREADS`, `GOMP_SPINCOUNT`, `OMP_WAIT_POLICY` and `RAYON_NUM_THREADS` set by the operator
win; `--cpu_threads N` sets the budget, `--cpu_threads 0` leaves every library's own default.
Environment variables only take effect before torch is imported: `apply_environment` runs first
thing in the command-line entry point.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# OpenMP's wait before it sleeps: libgomp's default is 300000 spins (~0.1-1 ms). Long enough to
# keep the hand-offs of one decoding step hot on an idle machine, short enough that a thread whose
# partner was descheduled stops competing with it.
SPIN_COUNT = "30000"


@dataclass(frozen=True)
class CpuBudget:
    affinity: int  # CPUs this process may run on
    quota: float | None  # cgroup CPU limit in CPUs, None without one
    usable: int  # what the thread pools are sized for

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        return f"{self.usable} usable CPU(s) (affinity {self.affinity}, cgroup quota {quota})"


@dataclass(frozen=True)
class ThreadPlan:
    budget: CpuBudget
    intra_op: int | None  # None: leave the library's default
    inter_op: int | None
    tokenizers: int | None
    executor: int | None
    source: str  # where the sizes came from, for the start-up log line

    def describe(self) -> str:
        if self.intra_op is None:
            return f"CPU: {self.budget.describe()}; thread sizing off (--cpu_threads 0): the libraries' defaults"
        spin = os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY") or "default"
        return (
            f"CPU: {self.budget.describe()}; threads ({self.source}): torch {self.intra_op} intra-op / {self.inter_op} inter-op, "
            f"tokenizers {self.tokenizers}, executor {self.executor}, OpenMP spin {spin}"
        )


def _quota_v2(root: Path, relative: str) -> float | None:
    best = None
    path = root / "sys/fs/cgroup" / relative.lstrip("/")
    while True:
        try:
            limit, period = (path / "cpu.max").read_text().split()[:2]
            if limit != "max":
                value = int(limit) / int(period)
                best = value if best is None else min(best, value)
        except (OSError, ValueError):
            pass
        if path == root / "sys/fs/cgroup":
            return best
        path = path.parent


def _quota_v1(root: Path, relative: str) -> float | None:
    for mount in ("sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpuacct,cpu"):
        for base in (root / mount / relative.lstrip("/"), root / mount):
            try:
                quota = int((base / "cpu.cfs_quota_us").read_text())
                period = int((base / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_quota(root: Path = Path("/")) -> float | None:
    """The cgroup CPU limit of this process in CPUs (v2, else v1), or None when unlimited."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            quotas.append(_quota_v2(root, relative))
        elif "cpu" in controllers.split(","):
            quotas.append(_quota_v1(root, relative))
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def cpu_budget(root: Path = Path("/")) -> CpuBudget:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = cgroup_quota(root)
    usable = max(1, min(affinity, math.ceil(quota))) if quota is not None else max(1, affinity)
    return CpuBudget(affinity, quota, usable)


def plan_threads(budget: CpuBudget, requested: int | None, environ: dict[str, str] | os._Environ = os.environ) -> ThreadPlan:
    """`requested`: --cpu_threads (None: from the budget; 0: leave the libraries' defaults)."""
    if requested == 0:
        return ThreadPlan(budget, None, None, None, None, "off")
    if requested is not None:
        threads, source = requested, "--cpu_threads"
    elif environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        threads, source = int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads, source = budget.usable, "from the CPU budget"
    return ThreadPlan(budget, threads, 1, threads, min(32, threads + 4), source)


def apply_environment(plan: ThreadPlan, environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Environment for the libraries that read it once, when they load: before importing torch.
    What the operator set already stays."""
    if plan.intra_op is None:
        return
    # Not MKL_NUM_THREADS: torch sets MKL's threads itself (apply_torch), and vLLM's CPU worker,
    # which binds its own OpenMP threads to cores, decoded ~10x slower with it set (measured).
    environ.setdefault("OMP_NUM_THREADS", str(plan.intra_op))
    environ.setdefault("RAYON_NUM_THREADS", str(plan.tokenizers))
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def apply_torch(plan: ThreadPlan) -> None:
    """torch's own pools (also when torch was imported before the environment was set)."""
    if plan.intra_op is None:
        return
    import torch

    torch.set_num_threads(plan.intra_op)
    try:
        torch.set_num_interop_threads(plan.inter_op or 1)
    except RuntimeError:  # inter-op work already ran in this process: its pool keeps its size
        pass


class ThreadTuner:
    """Chooses, while serving, how many intra-op threads the decoding steps use.

    On an idle machine more threads decode faster; on a crowded one (other processes, a
    throttled pod) every parallel region waits for its slowest thread and one thread is faster.
    Which case holds changes while the server runs, so the tuner measures instead of guessing:
    it serves with one thread count, and every `explore_every` seconds it times the candidates
    in turn (`window` seconds of decoding each, twice, interleaved), then keeps the fastest. Steps
    are compared at equal batch sizes (a step of 8 rows is slower than one of 2 whatever the
    threads), by their mean time; a challenger must be faster by `margin`.

    It runs on the thread that calls the model (torch's thread count is per calling thread).
    """

    def __init__(self, maximum: int, *, window: float = 1.0, explore_every: float = 30.0, margin: float = 0.1) -> None:
        self.candidates = sorted({maximum, max(1, maximum // 2), 1}, reverse=True) if maximum > 1 else [1]
        self.current = self.candidates[0]
        self.window = window
        self.explore_every = explore_every
        self.margin = margin
        self.decisions = 0  # how often a probe round ended (for tests and stats)
        self._applied: int | None = None
        self._plan: list[int] = []  # the probe round still to run
        self._steps: dict[int, dict[int, list[float]]] = {}  # threads -> batch size -> [seconds, steps]
        self._busy = 0.0
        self._last_probe = -math.inf  # the first window starts a probe: the machine may be busy from the start

    @property
    def threads(self) -> int:
        return self._plan[0] if self._plan else self.current

    def before_step(self) -> None:
        wanted = self.threads
        if wanted != self._applied:
            import torch

            torch.set_num_threads(wanted)
            self._applied = wanted

    def after_step(self, rows: int, seconds: float) -> None:
        """One decoding step of `rows` rows took `seconds`."""
        if len(self.candidates) == 1:
            return
        if self._plan:
            cell = self._steps.setdefault(self._plan[0], {}).setdefault(rows, [0.0, 0])
            cell[0] += seconds
            cell[1] += 1
        self._busy += seconds
        if self._busy < self.window:
            return
        self._busy = 0.0
        if self._plan:
            self._plan.pop(0)
            if not self._plan:
                self._decide()
        elif time.monotonic() - self._last_probe >= self.explore_every:
            self._last_probe = time.monotonic()
            self._steps = {}
            self._plan = self.candidates * 2  # interleaved, so a change in load touches every candidate alike

    def speedup(self, candidate: int) -> float | None:
        """How much faster `candidate` decoded than the current count in the last probe round:
        the step-weighted geometric mean of the time ratios at the batch sizes both saw."""
        ours, theirs = self._steps.get(self.current, {}), self._steps.get(candidate, {})
        total = weight = 0.0
        for rows in ours.keys() & theirs.keys():
            (t_ours, n_ours), (t_theirs, n_theirs) = ours[rows], theirs[rows]
            w = min(n_ours, n_theirs)
            total += w * math.log((t_ours / n_ours) / (t_theirs / n_theirs))
            weight += w
        return math.exp(total / weight) if weight else None

    def _decide(self) -> None:
        self.decisions += 1
        speedups = {n: self.speedup(n) for n in self.candidates if n != self.current}
        measured = {n: v for n, v in speedups.items() if v is not None}
        if not measured:
            return
        best = max(measured, key=measured.__getitem__)
        summary = ", ".join(f"{n} thread(s) x{v:.2f}" for n, v in sorted(measured.items(), reverse=True))
        if measured[best] > 1 + self.margin:
            log.info("Decoding with %d thread(s) now, not %d (speed against %d: %s)", best, self.current, self.current, summary)
            self.current = best
        else:
            log.debug("Decoding stays at %d thread(s) (speed against it: %s)", self.current, summary)
