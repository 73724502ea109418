"""The container images and the KServe manifests, checked as far as this machine allows.

There is no Docker engine here, so the images are not built; instead every file they copy must
exist, they must run our CLI as entrypoint, and every `args:` list in deploy/kserve/ must be
accepted by our CLI parser (and, where vLLM is installed, by vLLM's engine-argument parser)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from engines import vllm as vllm_backend
from engines.vllm.args import check_owned_flags, lora_module, translate_legacy_flags
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.gpu"]


def our_arg_lists(doc: dict) -> list[list[str]]:
    """Every args list that our image receives in one manifest."""
    spec = doc.get("spec", {})
    if doc["kind"] == "ClusterServingRuntime":
        return [c.get("args", []) for c in spec["containers"]]
    out = []
    model = spec.get("predictor", {}).get("model")
    if model and model["modelFormat"]["name"] == "huggingface":
        out.append(model.get("args", []))
    for container in spec.get("transformer", {}).get("containers", []):
        if "hf-gateway" in container["image"]:
            out.append(container.get("args", []))
    return out


def test_there_is_a_manifest_for_each_documented_deployment():
    names = {m.stem for m in MANIFESTS}
    assert {"runtime", "bert-fill-mask", "triton-transformer", "llama-vllm", "speculative-decoding",
            "t5-huggingface-backend", "cpu-vllm", "multi-gpu-tensor-parallel"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_args_pass_our_cli(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    lists = [args for doc in docs for args in our_arg_lists(doc)]
    assert lists, f"{path.name} configures no hf-gateway container"
    for args in lists:
        settings = Settings.from_cli([str(a) for a in args], env={})  # exits 2 on a bad value of our flags
        for module in settings.lora_modules:
            lora_module(module)
        rest = translate_legacy_flags(settings.engine_args)
        check_owned_flags(rest)
        if settings.engine_args:
            assert settings.backend != "huggingface", f"{path.name}: vLLM flags with --backend=huggingface: {rest}"
            if vllm_backend.installed():
                from engines.vllm.args import parse_engine_args

                parse_engine_args(settings.engine_args, {"model": "m"})  # vLLM's own parser judges them
            else:
                assert all(not a.startswith("--") or re.fullmatch(r"--[a-z0-9-]+(=.*)?", a) for a in rest), rest


def test_runtime_declares_our_ports_protocols_and_metrics():
    runtime = yaml.safe_load((ROOT / "deploy/kserve/runtime.yaml").read_text())
    spec = runtime["spec"]
    assert spec["supportedModelFormats"][0]["name"] == "huggingface"
    assert set(spec["protocolVersions"]) == {"v1", "v2"}
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"
    container = spec["containers"][0]
    assert container["ports"][0]["containerPort"] == Settings().http_port == 8080
    assert Settings().grpc_port == 8081
    assert {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]} == {"/ready", "/health"}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists_and_runs_our_cli(path: Path):
    instructions = dockerfile_instructions(path)
    copies = [rest.split()[:-1] for word, rest in instructions if word == "COPY"]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
    copied = {s for sources in copies for s in sources}
    assert {"gateway", "engines", "compat", "pyproject.toml"} <= copied
    values = {word: rest for word, rest in instructions}
    assert values["ENTRYPOINT"] == '["hf-gateway"]'
    assert "hf-gateway" in Path(ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n")[1]
    assert values["USER"] not in ("root", "0")
    assert set(values["EXPOSE"].split()) == {"8080", "8081"}
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    for variable in ("HF_HOME=/tmp/huggingface", "HF_HUB_DISABLE_TELEMETRY=1", "SAFETENSORS_FAST_GPU=1"):
        assert variable in env
    assert "/health" in values["HEALTHCHECK"]
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    if path.name == "Dockerfile":
        assert "torch==2.13.0" in run and "download.pytorch.org/whl/cpu" in run
        assert "uninstall -y torchvision torchaudio torchcodec" in run
    else:
        assert "'.[vllm]'" in run


def test_dockerignore_keeps_local_environments_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".venv-vllm/", ".git/"} <= set(ignored)
