"""Every flag, defined once: type, default, help. The CLI, env vars and KServe `args:` derive from it.

Each flag is accepted as `--snake_name` and `--kebab-name` (KServe YAMLs use the first, vLLM-style
flags the second). An environment variable `HF_GATEWAY_<NAME>` overrides a default; a flag on the
command line overrides both. Nothing here reads argv or the environment at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from compat.kserve.options import KServeOptions
from engines.options import BACKENDS, EngineOptions, RequestLimits
from gateway.openai.config import CHAT_DEFAULT_MAX_TOKENS, OpenAIConfig

Section = TypeVar("Section")

ENV_PREFIX = "HF_GATEWAY_"
DTYPE_CHOICES = ("auto", "float16", "half", "bfloat16", "float32", "float")
BACKEND_CHOICES = BACKENDS
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _flag(
    help: str, *, aliases: Sequence[str] = (), choices: Sequence[str] | None = None, metavar: str | None = None, repeat: bool = False
) -> dict[str, Any]:
    return {"metadata": {"help": help, "aliases": tuple(aliases), "choices": choices, "metavar": metavar, "repeat": repeat}}


@dataclass(frozen=True)
class Settings:
    # -- model (KServe huggingfaceserver) -------------------------------------------------------
    model_name: str = field(default="model", **_flag("Name the model is served under: URLs, `model` fields, /openai/v1/models."))
    model_id: str | None = field(default=None, **_flag("Hugging Face hub id (or local path); wins over --model_dir. Fetched through the Hugging Face cache; set HF_HUB_OFFLINE=1 to use only what is cached."))
    model_dir: str | None = field(default=None, **_flag("Local model directory (config.json + weights, or one .gguf file). Default: /mnt/models when it holds a model, else the packaged SmolLM2-135M-Instruct."))
    model_revision: str | None = field(default=None, **_flag("Model revision (branch, tag or commit) in the local hub cache."))
    tokenizer_revision: str | None = field(default=None, **_flag("Tokenizer revision; defaults to the model revision."))
    max_model_len: int | None = field(default=None, **_flag("Context length in tokens (prompt + output). Default: derived from the model config.", aliases=("max_length",)))
    dtype: str = field(default="auto", **_flag("Weight dtype. auto: the config's dtype, else float16 on GPU and float32 on CPU.", choices=DTYPE_CHOICES))
    backend: str = field(default=EngineOptions.backend, **_flag("Engine: auto takes vLLM, then OpenVINO, where installed and able to serve the model, else transformers; huggingface forces the transformers engine, vllm and openvino that engine.", choices=BACKEND_CHOICES))
    task: str | None = field(default=None, **_flag("Task (KServe names, e.g. text_generation). Default: inferred from the model architecture."))
    trust_remote_code: bool = field(default=False, **_flag("Allow model repositories to run their own Python code."))
    # -- KServe post-processing ----------------------------------------------------------------
    return_probabilities: bool = field(default=KServeOptions.return_probabilities, **_flag("Classification and fill-mask answer with softmax probabilities instead of the argmax."))
    return_raw_logits: bool = field(default=KServeOptions.return_raw_logits, **_flag("Classification and fill-mask answer with raw logits instead of the argmax."))
    disable_special_tokens: bool = field(default=KServeOptions.disable_special_tokens, **_flag("Tokenize KServe v1/v2 inputs without special tokens ([CLS], [SEP], ...)."))
    disable_lower_case: bool = field(default=False, **_flag("Do not lower-case text for encoder models (KServe lower-cases by default, even for cased models)."))
    return_offsets_mapping: bool = field(default=KServeOptions.return_offsets_mapping, **_flag("Token classification also returns each token's character offsets (output `offset_mapping`)."))
    return_label_names: bool = field(default=KServeOptions.return_label_names, **_flag("Beyond KServe: classification also returns the id2label names (output `label_names`)."))
    scores_as_numbers: bool = field(default=KServeOptions.scores_as_numbers, **_flag("Beyond KServe: with --return_probabilities/--return_raw_logits, v2 scores are FP64 tensors, not Python-repr strings."))
    ragged_token_classification: bool = field(default=KServeOptions.ragged_token_classification, **_flag("Beyond KServe: token classification answers each input's own tokens (v1) and pads v2 rows with -1, instead of KServe's batch padded to its longest input with the model's labels at the padding."))
    fill_mask_top_k: int = field(default=KServeOptions.fill_mask_top_k, **_flag("Beyond KServe: fill-mask answers the k best tokens with scores instead of the argmax (0 = off)."))
    # -- KServe transformer mode ---------------------------------------------------------------
    predictor_host: str | None = field(default=None, **_flag("Transformer mode: tokenize here, run the model on this predictor (host:port), post-process here."))
    predictor_protocol: str = field(default="v1", **_flag("Protocol to call the predictor with.", choices=("v1", "v2", "grpc-v2")))
    predictor_use_ssl: bool = field(default=False, **_flag("Call the predictor over TLS."))
    predictor_request_timeout_seconds: int = field(default=600, **_flag("Timeout of one predictor call."))
    predictor_request_retries: int = field(default=0, **_flag("Retries of a failed predictor call."))
    enable_predictor_health_check: bool = field(default=False, **_flag("Readiness also asks the predictor."))
    tensor_input_names: str | None = field(default=None, **_flag("Comma list of tokenizer outputs sent to the predictor (default: input_ids, attention_mask)."))
    return_token_type_ids: bool = field(default=False, **_flag("Also send token_type_ids to the predictor."))
    # -- server ------------------------------------------------------------------------------
    host: str = field(default="0.0.0.0", **_flag("Address to listen on."))
    http_port: int = field(default=8080, **_flag("HTTP port (OpenAI and KServe REST)."))
    grpc_port: int = field(default=8081, **_flag("Port of the KServe v2 gRPC face."))
    enable_grpc: bool = field(default=True, **_flag("Serve KServe v2 over gRPC on --grpc_port."))
    grpc_max_send_message_length: int = field(default=8 << 20, **_flag("Largest gRPC message the server sends, in bytes."))
    grpc_max_receive_message_length: int = field(default=8 << 20, **_flag("Largest gRPC message the server accepts, in bytes."))
    timeout_keep_alive: int = field(default=65, **_flag("HTTP keep-alive timeout in seconds (longer than typical proxy idle timeouts)."))
    timeout_request_headers: float = field(default=15.0, **_flag("Seconds a client has to send a request's line and headers (from connecting, or from the request's first byte); then 408."))
    timeout_request_body: float = field(default=60.0, **_flag("Seconds a client has to send a request's body after its headers; then 408."))
    max_request_header_bytes: int = field(default=32 << 10, **_flag("Largest request line plus headers, in bytes; larger is a 431."))
    open_grpc_reflection: bool = field(default=False, **_flag("Let gRPC clients use server reflection without an API key (with --api_key set)."))
    log_level: str = field(default="info", **_flag("Log level.", choices=LOG_LEVELS))
    disable_log_requests: bool = field(default=False, **_flag("Do not log received requests."))
    max_log_len: int | None = field(default=None, **_flag("Truncate prompts in request logs to this many characters."))
    cache_dir: str | None = field(default=None, **_flag("Where converted GGUF models are kept. Default: $XDG_CACHE_HOME/hf-gateway or ~/.cache/hf-gateway."))
    # -- engine capacity ---------------------------------------------------------------------
    adaptive_cpu_threads: bool = field(default=EngineOptions.adaptive_cpu_threads, **_flag("Transformers engine on CPU: measure, while serving, whether fewer threads decode faster (a crowded CPU) and use the faster count."))
    cpu_threads: int | None = field(default=None, **_flag("CPU threads for torch and the tokenizers. Default: the CPUs this process may use (its affinity and cgroup quota); 0 leaves every library's own default."))
    max_num_seqs: int = field(default=EngineOptions.max_num_seqs, **_flag("Most sequences the transformers engine decodes together in one batch."))
    max_waiting: int = field(default=EngineOptions.max_waiting, **_flag("Most requests waiting for a batch slot; beyond it new requests get 429."))
    kv_cache_memory_gb: float = field(default=EngineOptions.kv_cache_memory_gb, **_flag("KV-cache memory bound of the transformers engine, in GiB; rows beyond it wait or are preempted."))
    prefix_cache_memory_gb: float = field(default=EngineOptions.prefix_cache_memory_gb, **_flag("Transformers engine: GiB of finished sequences' KV kept, so that a prompt starting the same way (a chat's next turn, a shared system prompt) computes only the rest. 0 turns it off."))
    encoder_batch_wait_ms: float = field(default=EngineOptions.encoder_batch_wait_ms, **_flag("Milliseconds to gather more encoder requests before each forward pass. 0 (default): no wait; an idle encoder runs a request at once and requests that arrive during a pass share the next one."))
    encoder_max_batch: int = field(default=EngineOptions.encoder_max_batch, **_flag("Most inputs in one encoder forward pass."))
    # -- OpenAI surface ----------------------------------------------------------------------
    default_temperature: float | None = field(default=None, **_flag("Server default temperature when a request sends none (OpenAI default: 1.0)."))
    default_top_p: float | None = field(default=None, **_flag("Server default top_p (OpenAI default: 1.0)."))
    default_top_k: int | None = field(default=None, **_flag("Server default top_k (default: off)."))
    max_output_tokens: int = field(default=CHAT_DEFAULT_MAX_TOKENS, **_flag("Output tokens of a chat completion that sends no max_tokens / max_completion_tokens (chat UIs often send none); a request's own limit always wins. 0: OpenAI's rule, the rest of the context."))
    stream_ping_interval: float = field(default=OpenAIConfig.ping_interval, **_flag("Seconds between SSE keep-alive comments while a stream waits."))
    max_n: int = field(default=OpenAIConfig.max_n, **_flag("Largest `n` (and `best_of`) a request may ask for."))
    max_logprobs: int = field(default=OpenAIConfig.max_logprobs, **_flag("Largest number of alternatives per token for `logprobs` / `top_logprobs`."))
    trust_request_chat_template: bool = field(default=OpenAIConfig.trust_request_chat_template, **_flag("Let requests bring their own `chat_template` (rendered in a sandboxed worker process with the bounds below)."))
    chat_template_timeout: float = field(default=5.0, **_flag("Seconds one chat-template render may take (the model's template or a request's); longer is a 400."))
    chat_template_memory_mb: int = field(default=512, **_flag("Memory, in MiB, a chat-template worker process may use for one render; more is a 400."))
    # -- operations ----------------------------------------------------------------------------
    api_key: tuple[str, ...] = field(default=(), **_flag("Require this API key (repeatable; env: comma-separated) as `Authorization: Bearer <key>` or `x-api-key`, on every face.", repeat=True, metavar="KEY"))
    api_key_file: str | None = field(default=None, **_flag("A file with one API key per line (Kubernetes secrets mount well here)."))
    auth_health_and_metrics: bool = field(default=False, **_flag("Also require the key on /, /health, /ready, /metrics and the v2 health routes (open by default for probes and scrapers)."))
    max_request_body_bytes: int = field(default=16 << 20, **_flag("Largest request body accepted; larger is a 413."))
    max_request_parts: int = field(default=RequestLimits.max_request_parts, **_flag("Most generation parts one request may have, on every face: prompts x choices (OpenAI n, best_of, prompt lists), KServe v1 instances, v2 batch rows, gRPC elements. A request is admitted whole or refused (429) with nothing started."))
    max_prompt_tokens: int | None = field(default=RequestLimits.max_prompt_tokens, **_flag("Largest prompt in tokens, on every face (default: only the context length limits it)."))
    max_stop_length: int = field(default=RequestLimits.max_stop_length, **_flag("Longest stop string, in characters."))
    max_scored_prompt_tokens: int = field(default=RequestLimits.max_scored_prompt_tokens, **_flag("Most prompt tokens one request may have scored (completions `echo` with `logprobs`), over all its prompts and choices."))
    max_total_tokens: int | None = field(default=RequestLimits.max_total_tokens, **_flag("Most tokens one request may ask to generate over all its choices (n x max_tokens; best_of counts). On every face. Default: no limit beyond --max_n and --max_request_parts."))
    request_timeout: float | None = field(default=None, **_flag("Default deadline of a request in seconds; generation is aborted when it passes. Clients may send x-request-timeout."))
    cors_allowed_origins: tuple[str, ...] = field(default=(), **_flag("Origins allowed to call the API from a browser (repeatable; * for any). Default: no CORS headers.", repeat=True, metavar="ORIGIN"))
    log_format: str = field(default="plain", **_flag("Format of the one-line-per-request access log.", choices=("plain", "json")))
    log_prompts: bool = field(default=False, **_flag("Also log prompts and sampling parameters (truncated by --max_log_len). Off: prompts are never logged."))
    disable_playground: bool = field(default=False, **_flag("Do not serve the browser playground at /playground (and / stays JSON for browsers too)."))
    shutdown_grace_period: float = field(default=30.0, **_flag("On SIGTERM: seconds in-flight requests get to finish before they are aborted."))
    # -- vLLM ----------------------------------------------------------------------------------
    lora_modules: tuple[str, ...] = field(default=(), **_flag("vLLM backend: LoRA adapters served beside the base model, as name=path or vLLM's JSON form; address them by name in `model`. Repeatable; implies --enable-lora.", repeat=True, metavar="NAME=PATH"))
    # Flags we do not define ourselves: the vLLM engine's own arguments, parsed by vLLM's parser
    # when that backend is chosen (--tensor-parallel-size, --gpu-memory-utilization, ...).
    engine_args: tuple[str, ...] = field(default=(), metadata={"cli": False})

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Parse the command line (default: sys.argv[1:]) over env overrides over defaults."""
        parser = build_parser(env=os.environ if env is None else env)
        namespace = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        return cls(**_values(namespace))

    @classmethod
    def from_cli(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Like `from_args`, but flags we do not define are kept in `engine_args` for the vLLM
        engine's parser (which judges them once the backend is known) instead of failing here."""
        parser = build_parser(env=os.environ if env is None else env)
        namespace, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
        return cls(**_values(namespace), engine_args=tuple(rest))

    def problems(self) -> list[str]:
        """Values no server can run with, each as a sentence naming its flag (exit status 2)."""
        out: list[str] = []
        positive = ("max_num_seqs", "max_n", "max_request_parts", "max_logprobs", "max_stop_length", "max_request_body_bytes", "max_request_header_bytes",
                    "encoder_max_batch", "grpc_max_send_message_length", "grpc_max_receive_message_length", "chat_template_memory_mb",
                    "max_scored_prompt_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                out.append(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.cpu_threads is not None and self.cpu_threads < 0:
            out.append(f"--cpu_threads must not be negative, got {self.cpu_threads}.")
        for name in ("max_output_tokens", "max_waiting", "encoder_batch_wait_ms", "prefix_cache_memory_gb", "shutdown_grace_period", "fill_mask_top_k", "predictor_request_retries"):
            if getattr(self, name) < 0:
                out.append(f"--{name} must not be negative, got {getattr(self, name)}.")
        for name in ("kv_cache_memory_gb", "chat_template_timeout", "timeout_request_headers", "timeout_request_body",
                     "stream_ping_interval", "timeout_keep_alive", "predictor_request_timeout_seconds"):
            if not getattr(self, name) > 0:
                out.append(f"--{name} must be greater than 0, got {getattr(self, name)}.")
        for name in ("max_prompt_tokens", "max_total_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"--{name} must be at least 1, got {value}.")
        if self.request_timeout is not None and not self.request_timeout > 0:
            out.append(f"--request_timeout must be greater than 0, got {self.request_timeout}.")
        if self.return_probabilities and self.return_raw_logits:
            out.append("--return_probabilities and --return_raw_logits exclude each other.")
        return out

    def unknown_flags_error(self, hint: str = "") -> str:
        flags = [f for f in self.engine_args if f.startswith("-")]
        guesses = [(flag, g) for flag, g in ((f, did_you_mean(f)) for f in flags) if g]
        if len(flags) == 1 and guesses:
            guess = f" (did you mean {guesses[0][1]}?)"
        else:
            guess = f" (did you mean {', '.join(f'{g} for {flag}' for flag, g in guesses)}?)" if guesses else ""
        return (f"hf-gateway: error: unknown flag(s): {' '.join(self.engine_args)}{guess}{hint}. "
                "Run `hf-gateway --help` for the list of flags.")

    def engine_flags_rejected_early(self, vllm_installed: bool) -> bool:
        """True when flags nobody defines cannot be vLLM's here: say so before the heavy imports."""
        return bool(self.engine_args) and (not vllm_installed or self.backend in ("huggingface", "openvino") or bool(self.predictor_host))

    def section(self, cls: type[Section], **overrides: Any) -> Section:
        """A part's section of the settings (`EngineOptions`, `RequestLimits`, `KServeOptions`):
        its fields taken from the flags of the same name. The defaults live in the section."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{n: getattr(self, n) for n in names if hasattr(self, n)} | overrides)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# What other servers call our flags: the names a newcomer types first.
_OTHER_NAMES = {
    "--port": "--http_port", "--http-port": "--http_port", "--grpc-port": "--grpc_port", "--model": "--model_id",
    "--model-path": "--model_dir", "--served-model-name": "--model_name", "--api-key": "--api_key",
    "--max-num-seqs": "--max_num_seqs", "--max-model-len": "--max_model_len", "--device": "--backend",
    "--threads": "--cpu_threads", "--num-threads": "--cpu_threads",
}


def did_you_mean(flag: str) -> str | None:
    """The flag the user probably meant by `flag` (an unknown one), or None."""
    name = flag.split("=", 1)[0]
    if name in _OTHER_NAMES:
        return _OTHER_NAMES[name]
    known = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(name.replace("-", "_").replace("__", "--", 1), known, n=1, cutoff=0.75)
    return close[0] if close else None


def version_text() -> str:
    """`hf-gateway --version`: this package, Python, and the engines' packages (read from their
    metadata, nothing imported)."""
    import importlib.metadata as md
    import platform

    def of(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    engines = ", ".join(f"{label} {of(dist)}" for label, dist in (
        ("torch", "torch"), ("transformers", "transformers"), ("vLLM", "vllm"), ("OpenVINO GenAI", "openvino-genai")))
    return f"hf-gateway {of('hf-gateway')} (Python {platform.python_version()})\nengines: {engines}"


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        print(version_text())  # as written: argparse's own version action re-wraps the lines
        parser.exit(0)


def _values(namespace: argparse.Namespace) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(namespace).items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = f"unknown flag(s): {message.split(':', 1)[1].strip()}"
        self.exit(2, f"{self.prog}: error: {message}. Run `{self.prog} --help` for the list of flags.\n")


def _converter(f: dataclasses.Field) -> Callable[[str], Any]:
    kind = str(f.type)
    if "bool" in kind:
        return parse_bool
    if "int" in kind:
        return int
    if "float" in kind:
        return float
    return str


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = env or {}
    parser = _Parser(
        prog="hf-gateway",
        description="OpenAI-first inference gateway for one Hugging Face model (KServe huggingfaceserver compatible).",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Flags not listed here are vLLM engine arguments (--tensor-parallel-size, --gpu-memory-utilization, "
        "--enforce-eager, ...; see vLLM's engine arguments), accepted when the vLLM engine serves the model.",
    )
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        convert = _converter(f)
        names = [f.name, *meta["aliases"]]
        spellings: list[str] = []
        for name in names:
            for spelling in (name.replace("-", "_"), name.replace("_", "-")):
                if f"--{spelling}" not in spellings:
                    spellings.append(f"--{spelling}")
        default = f.default
        env_name = ENV_PREFIX + f.name.upper()
        if env_name in env:
            try:
                default = convert(env[env_name])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {env_name}={env[env_name]!r} is invalid: {exc}")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{meta['help']} [env: {env_name}]"}
        if meta["repeat"]:
            kwargs.update(action="extend", nargs="+", type=str, metavar=meta["metavar"] or f.name.upper())
            kwargs["default"] = default.split(",") if isinstance(default, str) else list(default)
        elif convert is parse_bool:
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        else:
            kwargs.update(type=convert, metavar=meta["metavar"] or f.name.upper())
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        parser.add_argument(*spellings, **kwargs)
    parser.add_argument("--version", "-V", action=_Version, nargs=0, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help="print the version and the engines installed, then exit")
    return parser


def apply_process_env(environ: dict[str, str] | None = None) -> None:
    """Process-wide defaults KServe's images set, unless the user set them already."""
    environ = os.environ if environ is None else environ
    environ.setdefault("SAFETENSORS_FAST_GPU", "1")
    environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
