"""The command line (`hf-gateway`, `python -m gateway`), kept light on purpose: flags are read and
the process's threads are sized (`engines.threads`) before torch, transformers or a model load,
because the thread libraries read their environment once, when they load."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from engines.threads import apply_environment, cpu_budget, plan_threads
    from gateway.settings import Settings

    settings = Settings.from_cli(argv)
    problems = settings.problems()
    if problems:  # values no server can run with: a usage error, like the parser's own (exit 2)
        print(f"hf-gateway: error: {problems[0]} Run `hf-gateway --help` for the list of flags.", file=sys.stderr)
        raise SystemExit(2)
    threads = plan_threads(cpu_budget(), settings.cpu_threads)
    apply_environment(threads)

    from gateway.server import serve

    serve(settings, threads)
