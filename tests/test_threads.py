"""Threads sized for the CPU the process has (affinity, cgroup quota), and the decoding thread count
chosen by measurement while serving (engines/threads.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engines.threads import CpuBudget, ThreadTuner, apply_environment, cgroup_quota, cpu_budget, plan_threads


def fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_quota_is_the_tightest_on_the_way_to_the_root(tmp_path):
    root = fake_root(tmp_path, "0::/kubepods/pod1/c1\n", {
        "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n",
        "sys/fs/cgroup/kubepods/pod1/cpu.max": "150000 100000\n",
        "sys/fs/cgroup/kubepods/cpu.max": "400000 100000\n",
    })
    assert cgroup_quota(root) == 1.5


def test_cgroup_v1_quota(tmp_path):
    root = fake_root(tmp_path, "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n", {
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_quota(root) == 0.5


def test_no_quota(tmp_path):
    assert cgroup_quota(fake_root(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"})) is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    assert cgroup_quota(fake_root(v1, "4:cpu:/\n", {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                                                   "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"})) is None


def test_the_budget_is_the_smaller_of_affinity_and_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    root = fake_root(tmp_path, "0::/pod\n", {"sys/fs/cgroup/pod/cpu.max": "50000 100000\n"})
    assert cpu_budget(root) == CpuBudget(affinity, 0.5, 1)  # half a CPU still gets one thread
    assert cpu_budget(tmp_path / "nowhere").usable == affinity


def test_plans_and_what_the_operator_set_wins():
    budget = CpuBudget(affinity=8, quota=2.5, usable=3)
    plan = plan_threads(budget, None, environ={})
    assert (plan.intra_op, plan.inter_op, plan.tokenizers, plan.executor) == (3, 1, 3, 7)
    assert plan_threads(budget, 5, environ={}).intra_op == 5
    assert plan_threads(budget, None, environ={"OMP_NUM_THREADS": "2"}).source == "OMP_NUM_THREADS"
    assert plan_threads(budget, 0, environ={}).intra_op is None  # --cpu_threads 0: libraries' defaults
    env = {"OMP_WAIT_POLICY": "ACTIVE", "RAYON_NUM_THREADS": "9"}
    apply_environment(plan, env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "RAYON_NUM_THREADS": "9", "OMP_NUM_THREADS": "3"}
    env = {}
    apply_environment(plan, env)
    assert env["GOMP_SPINCOUNT"] and env["RAYON_NUM_THREADS"] == "3"
    assert "3 usable CPU(s)" in plan.describe() and "quota 2.5 CPUs" in plan.describe()


class Machine:
    """Step times per thread count, as a CPU in a given state would give them: a step of `rows`
    rows takes rows / rate seconds. The batch size changes from step to step, as it does under a
    real load, so only a comparison at equal batch sizes is fair."""

    def __init__(self, rates: dict[int, float]) -> None:
        self.rates = rates

    def run(self, tuner: ThreadTuner, seconds: float) -> None:
        elapsed, k = 0.0, 0
        while elapsed < seconds:
            rows = (1, 8, 3, 8, 8, 5)[k % 6]
            k += 1
            tuner.before_step()
            step = rows / self.rates[tuner.threads]
            tuner.after_step(rows, step)
            elapsed += step


@pytest.fixture
def restore_torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_tuner_follows_the_faster_thread_count(restore_torch_threads, monkeypatch):
    import torch

    clock = [0.0]
    monkeypatch.setattr("engines.threads.time.monotonic", lambda: clock[0])
    tuner = ThreadTuner(2, window=1.0, explore_every=30.0)
    assert tuner.candidates == [2, 1]
    quiet, crowded = Machine({2: 120, 1: 70}), Machine({2: 25, 1: 45})
    quiet.run(tuner, 10)
    assert tuner.current == 2 and tuner.decisions == 1 and torch.get_num_threads() == 2
    clock[0] = 31.0  # the machine gets crowded; the next probe round finds out
    crowded.run(tuner, 10)
    assert tuner.current == 1 and torch.get_num_threads() == 1
    clock[0] = 62.0
    quiet.run(tuner, 10)
    assert tuner.current == 2 and tuner.decisions == 3
    clock[0] = 93.0
    Machine({2: 100, 1: 105}).run(tuner, 10)  # within the margin: no switch
    assert tuner.current == 2


def test_batch_sizes_that_differ_between_windows_do_not_fool_the_tuner(restore_torch_threads):
    """While 2 threads are timed the batch happens to be big, while 1 thread is timed it is small:
    rows per second favour 2 threads (75 against 55), but at the size both saw (4 rows) 1 thread
    takes 0.042 s a step against 0.058 s, so 1 thread wins."""
    tuner = ThreadTuner(2, window=1.0, explore_every=30.0)
    sizes = {2: (8, 8, 8, 4), 1: (1, 1, 1, 4)}
    per_row = {2: 0.012, 1: 0.008}
    k = 0
    while tuner.decisions == 0 and k < 100_000:
        tuner.before_step()
        n = tuner.threads
        rows = sizes[n][k % 4]
        k += 1
        tuner.after_step(rows, 0.01 + rows * per_row[n])
    assert tuner.decisions == 1 and tuner.current == 1
    assert tuner.speedup(2) is None or tuner.speedup(2) < 1  # measured against the new choice


def test_one_cpu_means_one_thread_and_no_probing():
    tuner = ThreadTuner(1)
    Machine({1: 50}).run(tuner, 5)
    assert tuner.candidates == [1] and tuner.decisions == 0
