"""The command line (`hf-gateway`, `python -m gateway`), kept light on purpose: flags are read and
the process's threads are sized (`engines.threads`) before torch, transformers or a model load,
because the thread libraries read their environment once, when they load."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from engines.threads import apply_environment, cpu_budget, plan_threads
    from gateway.settings import Settings

    settings = Settings.from_cli(argv)
    if settings.engine_flags_rejected_early(vllm_installed=importlib.util.find_spec("vllm") is not None):
        # Flags nobody here defines, and vLLM (whose flags they might be) cannot take them: say so
        # now, not after seconds of imports.
        hint = "" if settings.backend == "huggingface" else (
            " (flags not listed in --help are vLLM's, and vLLM is not installed)" if importlib.util.find_spec("vllm") is None
            else " (vLLM engine flags are accepted only when the vLLM engine serves)")
        print(settings.unknown_flags_error(hint), file=sys.stderr)
        raise SystemExit(2)
    problems = settings.problems()
    if problems:  # values no server can run with: a usage error, like the parser's own (exit 2)
        print(f"hf-gateway: error: {problems[0]} Run `hf-gateway --help` for the list of flags.", file=sys.stderr)
        raise SystemExit(2)
    threads = plan_threads(cpu_budget(), settings.cpu_threads)
    apply_environment(threads)

    from gateway.server import serve

    serve(settings, threads)
