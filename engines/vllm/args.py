"""vLLM engine arguments: the flags we do not define ourselves, judged by vLLM's own parser.

Our settings own the model and what both engines share (model location, revision, dtype,
max_model_len, max_num_seqs, trust_remote_code, the served name); they become the *defaults* of
vLLM's `AsyncEngineArgs` parser, so any vLLM engine flag the user passes wins over them, and no
vLLM flag is copied into our code. Nothing here overrides tensor or pipeline parallelism.

The translation of the old speculative-decoding flags (`--speculative-model M
--num-speculative-tokens N`, still in KServe's documentation) to `--speculative-config` is plain
Python and needs no vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Flags whose meaning our own settings already carry: passing them to vLLM would load another
# model than the one we resolved, or serve it under another name.
OWNED_BY_US = {
    "--model": "--model_id or --model_dir",
    "--tokenizer": "--model_id or --model_dir (the tokenizer is the model's)",
    "--revision": "--model_revision",
    "--served-model-name": "--model_name",
}

_LEGACY_SPECULATIVE = {
    "--speculative-model": ("model", str),
    "--num-speculative-tokens": ("num_speculative_tokens", int),
    "--speculative-draft-tensor-parallel-size": ("draft_tensor_parallel_size", int),
    "--speculative-max-model-len": ("max_model_len", int),
}


class EngineArgsError(ValueError):
    """A vLLM flag we cannot accept; the message says what to use instead."""


def _split(arg: str) -> tuple[str, str | None]:
    """`--a_b=c` -> (`--a-b`, "c"); `--a-b` -> (`--a-b`, None)."""
    name, eq, value = arg.partition("=")
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return name, (value if eq else None)


def translate_legacy_flags(argv: Sequence[str]) -> list[str]:
    """Rewrite the old speculative-decoding flags into one `--speculative-config` JSON flag.

    A `--speculative-config` given as well is merged (its keys win)."""
    out: list[str] = []
    spec: dict[str, Any] = {}
    explicit: dict[str, Any] | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, value = _split(arg)
        if name in _LEGACY_SPECULATIVE or name == "--speculative-config":
            if value is None:
                if i + 1 >= len(argv):
                    raise EngineArgsError(f"{arg} needs a value.")
                value = argv[i + 1]
                i += 1
            if name == "--speculative-config":
                try:
                    explicit = json.loads(value)
                except ValueError as exc:
                    raise EngineArgsError(f"--speculative-config must be JSON: {exc}") from None
            else:
                key, convert = _LEGACY_SPECULATIVE[name]
                try:
                    spec[key] = convert(value)
                except ValueError:
                    raise EngineArgsError(f"{arg} expects a number, got {value!r}.") from None
        else:
            out.append(arg)
        i += 1
    if spec or explicit is not None:
        if spec and "model" not in spec and "method" not in (explicit or {}):
            raise EngineArgsError("--num-speculative-tokens needs --speculative-model (or a method in --speculative-config).")
        out += ["--speculative-config", json.dumps({**spec, **(explicit or {})})]
    return out


def check_owned_flags(argv: Sequence[str]) -> None:
    for arg in argv:
        name, _ = _split(arg)
        if name in OWNED_BY_US:
            raise EngineArgsError(f"{arg} is set by our own flags here; use {OWNED_BY_US[name]} instead.")


def parse_engine_args(argv: Sequence[str], defaults: Mapping[str, Any]) -> Any:
    """vLLM's `AsyncEngineArgs` from the leftover flags, over our `defaults` (imports vLLM).

    Raises EngineArgsError for flags vLLM does not know either; vLLM's parser exits with status 2
    (its own message) on a bad value of a flag it does know."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = translate_legacy_flags(argv)
    check_owned_flags(argv)
    parser = FlexibleArgumentParser(prog="hf-gateway", add_help=False)
    parser = AsyncEngineArgs.add_cli_args(parser)
    parser.set_defaults(**defaults)
    namespace, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise EngineArgsError(f"unknown flag(s): {' '.join(unknown)} (neither ours nor a vLLM engine argument).")
    return AsyncEngineArgs.from_cli_args(namespace)


def lora_module(value: str) -> tuple[str, str, str | None]:
    """`name=path` or vLLM's JSON `{"name": ..., "path": ..., "base_model_name": ...}`."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return str(data["name"]), str(data["path"]), data.get("base_model_name")
        except (ValueError, KeyError, TypeError):
            raise EngineArgsError(f"--lora-modules: {value!r} is not JSON with `name` and `path`.") from None
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise EngineArgsError(f"--lora-modules: expected name=path, got {value!r}.")
    return name, path, None
