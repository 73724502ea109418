"""vLLM flag handling that needs no vLLM: legacy speculative flags, owned flags, LoRA modules,
and how the CLI keeps flags it does not define for the vLLM engine's parser."""

from __future__ import annotations

import json

import pytest

from engines.vllm.args import EngineArgsError, check_owned_flags, lora_module, translate_legacy_flags
from gateway.settings import Settings


def test_legacy_speculative_flags_become_speculative_config():
    argv = ["--enforce-eager", "--speculative-model=/mnt/draft", "--num-speculative-tokens", "5", "--max-num-seqs", "8"]
    out = translate_legacy_flags(argv)
    assert out[:3] == ["--enforce-eager", "--max-num-seqs", "8"]
    assert out[3] == "--speculative-config"
    assert json.loads(out[4]) == {"model": "/mnt/draft", "num_speculative_tokens": 5}


def test_snake_case_spellings_and_explicit_config_merge():
    out = translate_legacy_flags(["--speculative_model", "d", "--speculative-config", '{"num_speculative_tokens": 3, "method": "x"}'])
    assert json.loads(out[1]) == {"model": "d", "num_speculative_tokens": 3, "method": "x"}


def test_bad_speculative_values_are_clear_errors():
    with pytest.raises(EngineArgsError, match="expects a number"):
        translate_legacy_flags(["--speculative-model", "d", "--num-speculative-tokens", "five"])
    with pytest.raises(EngineArgsError, match="needs --speculative-model"):
        translate_legacy_flags(["--num-speculative-tokens", "5"])
    with pytest.raises(EngineArgsError, match="needs a value"):
        translate_legacy_flags(["--speculative-model"])
    assert translate_legacy_flags(["--tensor-parallel-size", "2"]) == ["--tensor-parallel-size", "2"]


@pytest.mark.parametrize(("flag", "ours"), [("--model", "--model_id"), ("--served_model_name=x", "--model_name"), ("--revision", "--model_revision")])
def test_flags_our_settings_own_are_refused(flag, ours):
    with pytest.raises(EngineArgsError, match=ours):
        check_owned_flags([flag, "v"])


def test_lora_modules_forms():
    assert lora_module("sql=/mnt/lora/sql") == ("sql", "/mnt/lora/sql", None)
    assert lora_module('{"name": "a", "path": "/p", "base_model_name": "m"}') == ("a", "/p", "m")
    for bad in ("no-equals", "=path", '{"name": "a"}'):
        with pytest.raises(EngineArgsError):
            lora_module(bad)


def test_cli_keeps_unknown_flags_for_the_engine_parser():
    s = Settings.from_cli(["--model_name", "m", "--tensor-parallel-size", "2", "--enforce-eager", "--dtype", "bfloat16"], env={})
    assert (s.model_name, s.dtype) == ("m", "bfloat16")
    assert s.engine_args == ("--tensor-parallel-size", "2", "--enforce-eager")
    assert "unknown flag(s): --tensor-parallel-size 2 --enforce-eager" in s.unknown_flags_error()


def test_lora_modules_flag_is_repeatable_and_reads_env():
    s = Settings.from_cli(["--lora-modules", "a=/x", "b=/y", "--lora_modules", "c=/z"], env={})
    assert s.lora_modules == ("a=/x", "b=/y", "c=/z")
    assert Settings.from_args([], env={"HF_GATEWAY_LORA_MODULES": "a=/x,b=/y"}).lora_modules == ("a=/x", "b=/y")
