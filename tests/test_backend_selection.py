"""Which engine serves, and why: KServe's backend rule with clear errors (spec/kserve.md §1e)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from engines import openvino as openvino_backend
from engines import vllm as vllm_backend
from gateway.server import StartupError, UsageError, build_engine
from gateway.settings import Settings

HAS_VLLM = vllm_backend.installed()
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed in this environment")
without_vllm = pytest.mark.skipif(HAS_VLLM, reason="checks the behaviour when vLLM is missing")
HAS_OPENVINO = openvino_backend.installed()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO GenAI is not installed in this environment")
without_openvino = pytest.mark.skipif(HAS_OPENVINO, reason="checks the behaviour when OpenVINO is missing")


def settings(*argv: str) -> Settings:
    return Settings.from_cli(list(argv), env={})


def test_importing_the_server_imports_no_optional_engine():
    code = ("import gateway.server, engines.vllm, engines.openvino, compat.kserve.dataplane, sys; "
            "print(sorted(m for m in ('vllm', 'openvino', 'openvino_genai', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@without_vllm
def test_backend_vllm_without_vllm_is_a_clear_startup_error(tiny_dir):
    with pytest.raises(StartupError, match="Backend is set to 'vllm' but vLLM is not installed"):
        build_engine(settings("--model_dir", str(tiny_dir), "--backend", "vllm"))


@without_vllm
@without_openvino
def test_auto_without_vllm_or_openvino_picks_transformers_and_says_why(tiny_dir, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    engine = build_engine(settings("--model_dir", str(tiny_dir)))
    assert engine.capabilities.engine == "transformers"
    assert "Engine: transformers (--backend auto: OpenVINO GenAI is not installed" in caplog.text
    assert "; vLLM is not installed" in caplog.text


@without_openvino
def test_backend_openvino_without_openvino_is_a_clear_startup_error(tiny_dir):
    with pytest.raises(StartupError, match="Backend is set to 'openvino' but OpenVINO GenAI is not installed"):
        build_engine(settings("--model_dir", str(tiny_dir), "--backend", "openvino"))


@needs_openvino
def test_auto_on_a_cpu_picks_openvino_and_says_why(tiny_dir, caplog):
    """On a machine without a GPU OpenVINO comes first, before vLLM (make bench: 1.9-2.4x plain
    vLLM's tokens/s here)."""
    caplog.set_level(logging.INFO, logger="gateway")
    engine = build_engine(settings("--model_dir", str(tiny_dir), "--kv_cache_memory_gb", "1", "--dtype", "float32"))
    assert engine.capabilities.engine == "openvino"  # built (the IR converted or found), not started
    assert "Engine: OpenVINO GenAI" in caplog.text and "serves LlamaForCausalLM for text_generation" in caplog.text


@needs_openvino
@without_vllm
def test_auto_with_a_gpu_does_not_take_openvino(tiny_dir, caplog, monkeypatch):
    """OpenVINO serves on the CPU here: on a GPU machine `auto` leaves it out."""
    from engines import selection

    monkeypatch.setattr(selection, "_has_gpu", lambda: True)
    caplog.set_level(logging.INFO, logger="gateway")
    engine = build_engine(settings("--model_dir", str(tiny_dir)))
    assert engine.capabilities.engine == "transformers"
    assert "vLLM is not installed" in caplog.text and "OpenVINO" not in caplog.text


@needs_openvino
def test_encoder_heads_stay_on_transformers_beside_openvino(tiny_bert_dirs, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    with pytest.raises(StartupError, match="Backend is set to 'openvino' but task fill_mask is served by the transformers engine"):
        build_engine(settings("--model_dir", str(tiny_bert_dirs["fill_mask"]), "--backend", "openvino"))
    engine = build_engine(settings("--model_dir", str(tiny_bert_dirs["fill_mask"])))
    assert engine.capabilities.engine == "transformers"


@needs_openvino
def test_vllm_flags_are_unknown_to_openvino(tiny_dir):
    with pytest.raises(UsageError, match=r"unknown flag\(s\): --enforce-eager"):
        build_engine(settings("--model_dir", str(tiny_dir), "--backend", "openvino", "--enforce-eager"))


@without_vllm
def test_vllm_flags_without_vllm_are_unknown_flags(tiny_dir):
    with pytest.raises(UsageError, match=r"unknown flag\(s\): --tensor-parallel-size 2 \(vLLM engine flags are accepted only"):
        build_engine(settings("--model_dir", str(tiny_dir), "--tensor-parallel-size", "2"))


def test_engine_flags_with_backend_huggingface_are_unknown_flags(tiny_dir):
    with pytest.raises(UsageError, match=r"unknown flag\(s\): --enforce-eager"):
        build_engine(settings("--model_dir", str(tiny_dir), "--backend", "huggingface", "--enforce-eager"))


def test_lora_needs_vllm(tiny_dir):
    with pytest.raises(StartupError, match="--lora-modules needs the vLLM engine"):
        build_engine(settings("--model_dir", str(tiny_dir), "--backend", "huggingface", "--lora-modules", "a=/x"))


@needs_vllm
def test_auto_with_vllm_picks_vllm_for_a_supported_decoder(tiny_dir, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    engine = build_engine(settings("--model_dir", str(tiny_dir), "--enforce-eager", "--kv_cache_memory_gb", "0.5"))
    assert engine.capabilities.engine == "vllm"  # built, not started: nothing is loaded in vLLM yet
    assert "Engine: vLLM" in caplog.text and "supports LlamaForCausalLM for text_generation" in caplog.text


@needs_vllm
def test_encoder_heads_stay_on_transformers_under_auto(tiny_bert_dirs, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    engine = build_engine(settings("--model_dir", str(tiny_bert_dirs["fill_mask"])))
    assert engine.capabilities.engine == "transformers"
    assert "served by the transformers engine" in caplog.text
    with pytest.raises(StartupError, match="Backend is set to 'vllm' but task fill_mask"):
        build_engine(settings("--model_dir", str(tiny_bert_dirs["fill_mask"]), "--backend", "vllm"))


@needs_vllm
def test_vllm_judges_flags_it_does_not_know(tiny_dir):
    with pytest.raises(UsageError, match=r"unknown flag\(s\): --no-such-vllm-flag"):
        build_engine(settings("--model_dir", str(tiny_dir), "--no-such-vllm-flag", "1"))
    with pytest.raises(UsageError, match="use --model_id or --model_dir"):
        build_engine(settings("--model_dir", str(tiny_dir), "--model", "other"))


@needs_vllm
def test_vllm_engine_args_come_from_our_settings_and_vllm_flags(tiny_dir):
    engine = build_engine(settings(
        "--model_dir", str(tiny_dir), "--dtype", "bfloat16", "--max_model_len", "1024", "--max_num_seqs", "7",
        "--enforce-eager", "--tensor-parallel-size", "1", "--speculative-model", str(tiny_dir), "--num-speculative-tokens", "2",
    ))
    args = engine._engine_args
    assert (args.model, args.dtype, args.max_model_len, args.max_num_seqs) == (str(tiny_dir), "bfloat16", 1024, 7)
    assert args.enforce_eager is True and args.tensor_parallel_size == 1
    assert args.speculative_config == {"model": str(tiny_dir), "num_speculative_tokens": 2}
