"""`make test`'s runner (scripts/test_legs.py), driven with a Makefile whose targets stand in for the
installs and the pytest runs: a failing leg does not stop the others, the end says how each went,
and the OpenVINO install waits for `.venv`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKEFILE = """\
.venv/.installed-test:
\t@sleep 0.3; mkdir -p .venv; touch .venv/.installed-test; echo venv installed
browser:
\t@true
vllm-env:
\t@echo vllm installed
.venv-openvino/.installed-packages:
\t@echo openvino packages installed
openvino-env:
\t@test -e .venv/.installed-test || { echo "openvino installed before .venv"; exit 1; }
test-transformers:
\t@echo "5 passed, 1 skipped in 0.20s"
test-live:
\t@test -e .venv/.installed-test || { echo "live tests before .venv"; exit 1; }; echo "3 passed in 0.30s"
test-vllm:
\t@echo "E   AssertionError: the reason"; echo "1 failed, 3 passed in 0.10s"; exit 1
test-openvino:
\t@echo "2 passed in 0.10s"
"""


def test_every_leg_runs_and_the_end_says_how_each_went(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "test_legs.py"), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = done.stdout.split("== make test: each leg")[1].splitlines()[1:]
    assert [line.split()[:2] for line in summary] == [["transformers", "ok"], ["live", "ok"], ["vllm", "FAILED"], ["openvino", "ok"]]
    assert summary[0].endswith("5 passed, 1 skipped in 0.20s") and summary[2].endswith("1 failed, 3 passed in 0.10s")
    assert "== vllm: the end of .test-logs/vllm.log ==" in done.stdout and "AssertionError: the reason" in done.stdout
    assert "openvino installed before .venv" not in (tmp_path / ".test-logs" / "openvino.log").read_text()
    assert (tmp_path / ".test-logs" / "summary").read_text().splitlines() == summary


def test_a_leg_whose_install_fails_is_reported_and_the_rest_still_run(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE.replace("\t@echo vllm installed", "\t@echo no space left on device; exit 2"))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed-test").touch()  # without the transformers leg, .venv is there already
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "test_legs.py"), "--root", str(tmp_path), "vllm", "openvino"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "vllm: FAILED in install" in done.stdout and "no space left on device" in done.stdout
    assert "openvino      ok" in done.stdout and "transformers" not in done.stdout.split("== make test")[1]
