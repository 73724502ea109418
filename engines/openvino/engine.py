"""OpenVINOEngine: the backend over OpenVINO GenAI's continuous-batching pipeline.

OpenVINO schedules and samples (paged KV cache, prefix caching, chunked prefill, its own
kernels, penalties, seeds, xgrammar for structured outputs); we own everything a client sees.
As with vLLM, the pipeline is asked for token ids only: each id goes through the same
`ChoiceState` as on the other engines, so text, stop strings, `min_tokens`, finish reasons,
logprob items and usage are exactly theirs, and a choice that a stop string ends is aborted in
the pipeline at once.

The pipeline runs in a child process (`engines.openvino.worker`: its Python binding holds the GIL
for a whole step). One reader thread here turns the worker's per-step output into deltas; the
serving loop only sends commands. If the pipeline fails, the requests it was running end with an
error and a fresh worker is started.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from engines.backend import Emit, LoadedBackend
from engines.choice import ChoiceState, merge_deltas, output_budget
from engines.errors import EngineError, ErrorCode, deadline_exceeded
from engines.loader import LoadedModel
from engines.structured import Constraint, ConstraintFailed, GrammarCompiler
from engines.types import GenerationDelta, GenerationParams, StructuredOutput

log = logging.getLogger(__name__)

# What the pipeline cannot do, by the neutral parameter name the frontend reports in its 400.
_UNSUPPORTED = {
    "top_logprobs": lambda p: bool(p.logprobs),  # the chosen token's logprob only, no alternatives
    "prompt_logprobs": lambda p: p.prompt_logprobs is not None,
    "logit_bias": lambda p: bool(p.logit_bias),
    "structured_outputs.grammar": lambda p: p.structured is not None and p.structured.kind == "lark",
    "model": lambda p: p.adapter is not None,
}
_STARTUP_TIMEOUT_S = 600.0


class _Grammars(GrammarCompiler):
    """llguidance's checks (as on the other engines), then xgrammar's: both must take a schema
    before the request is admitted."""

    def validate(self, spec: StructuredOutput) -> None:
        super().validate(spec)
        _structured(spec)


@functools.lru_cache(maxsize=64)
def _structured(spec: StructuredOutput) -> tuple[str, str]:
    """The constraint as OpenVINO's xgrammar takes it. A JSON schema becomes an EBNF grammar
    without free whitespace and with compact separators, which is what llguidance allows on the
    other engines (xgrammar's own JSON mode would allow any whitespace, and a model may emit it
    forever); a regex goes as it is."""
    if spec.kind == "regex":
        return ("regex", spec.value)
    import xgrammar

    try:
        grammar = xgrammar.Grammar.from_json_schema(spec.value, any_whitespace=False, separators=(",", ":"))
    except Exception as exc:  # noqa: BLE001 - xgrammar's refusal of a schema llguidance took
        raise EngineError(ErrorCode.INVALID_REQUEST, f"The OpenVINO engine cannot enforce this JSON schema: {exc}", param="response_format") from None
    # OpenVINO's own (older) xgrammar reads no `{n, -1}` ("n or more") that newer ones write.
    return ("grammar", _OPEN_REPEAT.sub(lambda m: {"0": "*", "1": "+"}.get(m.group(1), f"{{{m.group(1)},}}"), str(grammar)))


_OPEN_REPEAT = re.compile(r"\{(\d+), -1\}")


@dataclasses.dataclass
class _Part:
    request_id: str
    choice: ChoiceState
    constraint: Constraint | None
    deadline: float | None
    emit: Emit
    logprobs: bool


class OpenVINOEngine(LoadedBackend):
    """Text generation on OpenVINO GenAI (CPU)."""

    def __init__(self, loaded: LoadedModel, *, served_name: str, worker_options: dict[str, Any], max_num_seqs: int, max_waiting: int, precision: str) -> None:
        super().__init__(loaded, served_name=served_name, extra={"ir": worker_options["model_dir"]})
        self._capabilities = dataclasses.replace(self._capabilities, engine="openvino", dtype=precision)
        self._options = worker_options
        self._eos = frozenset(loaded.eos_token_ids) | self._tokenizer.eos_token_ids
        self.grammars = _Grammars(loaded.hf_tokenizer, int(getattr(loaded.config, "vocab_size", 0) or self._tokenizer.vocab_size))
        self._max_num_seqs = max_num_seqs
        self.max_in_flight = max_num_seqs + max_waiting
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards _parts, _by_name and sends on _conn
        self._parts: dict[int, _Part] = {}
        self._by_name: dict[str, int] = {}
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._in_pipeline = 0  # requests the worker's pipeline holds, as it last reported
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        import asyncio

        if self._conn is None:
            await asyncio.to_thread(self._spawn)

    async def stop(self) -> None:
        import asyncio

        self._stopping = True
        await asyncio.to_thread(self._shutdown)

    async def check_health(self) -> bool:
        process = self._process
        return self._conn is not None and process is not None and process.poll() is None

    def stats(self) -> dict[str, int]:
        parts = len(self._parts)
        waiting = max(0, parts - self._max_num_seqs)
        return {"running": parts - waiting, "waiting": waiting, "engine_unfinished": self._in_pipeline}

    def _spawn(self) -> None:
        """Start a worker and wait until its pipeline is built (blocking: seconds)."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "engines.openvino.worker", str(theirs.fileno()), json.dumps(self._options)],
            pass_fds=(theirs.fileno(),), env=env,
        )
        theirs.close()
        conn = Connection(ours.detach())
        try:
            if not conn.poll(_STARTUP_TIMEOUT_S):
                raise RuntimeError(f"the OpenVINO worker did not start in {_STARTUP_TIMEOUT_S:.0f} s")
            message = conn.recv()
        except (EOFError, OSError):
            message = ("fatal", f"the OpenVINO worker exited with status {process.wait()} while loading the model")
        except BaseException:
            process.kill()
            conn.close()
            raise
        if message[0] != "ready":
            process.kill()
            conn.close()
            raise RuntimeError(f"OpenVINO could not load the model: {message[1]}")
        log.info("OpenVINO pipeline ready in worker process %d (%s)", process.pid, self._options["model_dir"])
        self._conn, self._process = conn, process
        self._reader = threading.Thread(target=self._read, args=(conn, process), name="openvino-reader", daemon=True)
        self._reader.start()

    def _shutdown(self) -> None:
        conn, process = self._conn, self._process
        self._conn = None
        if conn is not None:
            try:
                with self._lock:
                    conn.send(("stop",))
            except OSError:
                pass
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._fail_all(EngineError(ErrorCode.UNAVAILABLE, "The server is shutting down."))

    # -- requests -------------------------------------------------------------------------------

    def unsupported(self, params: GenerationParams) -> str | None:
        return next((name for name, used in _UNSUPPORTED.items() if used(params)), None)

    def _fields(self, params: GenerationParams, budget: int) -> dict[str, Any]:
        """`params` as GenerationConfig fields (plain values: they cross a process boundary)."""
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self._eos))
        fields: dict[str, Any] = {
            "max_new_tokens": budget,
            "min_new_tokens": min(params.min_tokens, budget),
            "ignore_eos": params.ignore_eos,
            "stop_token_ids": sorted(stop_ids),
            "logprobs": 1 if params.logprobs is not None else 0,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "repetition_penalty": params.repetition_penalty,
        }
        if params.greedy or params.min_p >= 1.0:  # min_p 1 keeps only the most likely token
            fields["do_sample"] = False
        else:
            # Unseeded requests need seeds of their own: the pipeline's default is the same for all.
            seed = params.seed if params.seed is not None else random.getrandbits(63)
            fields.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, min_p=params.min_p,
                          rng_seed=seed & 0x7FFF_FFFF_FFFF_FFFF)
            if params.top_k > 0:
                fields["top_k"] = params.top_k
        if params.structured is not None:
            fields["structured"] = _structured(params.structured)
        return fields

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Emit) -> None:
        budget = output_budget(params, len(prompt_ids), self._capabilities.max_model_len)
        choice = ChoiceState(self._tokenizer, prompt_ids, params, eos_token_ids=self._eos, budget=budget)
        if budget <= 0:
            emit(choice.end("length"))
            return
        # Our own matcher follows the pipeline's tokens to see when the grammar is complete: the
        # choice ends there, as on the other engines, instead of on a forced EOS one step later.
        constraint = self.grammars.constraint(params.structured) if params.structured is not None else None
        part = _Part(request_id, choice, constraint, deadline, emit, params.logprobs is not None)
        fields = self._fields(params, budget)
        rid = next(self._ids)
        with self._lock:
            if self._conn is None:
                raise EngineError(ErrorCode.UNAVAILABLE, "The OpenVINO engine is not running.")
            self._parts[rid] = part
            self._by_name[request_id] = rid
            try:
                self._conn.send(("add", rid, list(prompt_ids), fields))
            except OSError:
                self._parts.pop(rid, None)
                self._by_name.pop(request_id, None)
                raise EngineError(ErrorCode.UNAVAILABLE, "The OpenVINO engine is not running.") from None

    def abort(self, request_id: str) -> None:
        with self._lock:
            rid = self._by_name.pop(request_id, None)
            if rid is not None:
                self._parts.pop(rid, None)
                self._send(("abort", rid))

    def _send(self, message: tuple[Any, ...]) -> None:
        """With the lock held. A worker that is gone is noticed by the reader."""
        if self._conn is not None:
            try:
                self._conn.send(message)
            except OSError:
                pass

    def _drop(self, rid: int, *, abort: bool) -> None:
        with self._lock:
            part = self._parts.pop(rid, None)
            if part is not None:
                self._by_name.pop(part.request_id, None)
                if abort:
                    self._send(("abort", rid))

    # -- the reader thread ----------------------------------------------------------------------

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        reason = "the OpenVINO worker exited"
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "out":
                for rid, tokens, logprobs, finish in message[1]:
                    self._on_output(rid, tokens, logprobs, finish)
                self._in_pipeline = message[2]
            elif kind == "error":
                part = self._parts.get(message[1])
                self._drop(message[1], abort=False)
                if part is not None:
                    log.warning("OpenVINO refused request %s: %s", part.request_id, message[2])
                    part.emit(EngineError(ErrorCode.INVALID_REQUEST, f"The OpenVINO engine refused the request: {message[2]}"))
            elif kind == "fatal":
                reason = f"the OpenVINO pipeline failed: {message[1]}"
                break
        if self._stopping or self._conn is not conn:
            return
        log.error("%s; its requests end with an error and a new worker starts", reason)
        with self._lock:
            self._conn = None
        conn.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        self._fail_all(EngineError(ErrorCode.INTERNAL, "The OpenVINO engine failed while running this request."))
        self._in_pipeline = 0
        self.restarts += 1
        try:
            self._spawn()
        except Exception as exc:  # noqa: BLE001 - health checks report it from now on
            log.error("The OpenVINO worker could not be restarted: %s", exc)

    def _fail_all(self, error: EngineError) -> None:
        with self._lock:
            parts = list(self._parts.values())
            self._parts.clear()
            self._by_name.clear()
        for part in parts:
            part.emit(error)

    def _on_output(self, rid: int, tokens: list[int], logprobs: list[float], finish: str | None) -> None:
        part = self._parts.get(rid)
        if part is None:  # aborted: nothing more for it
            return
        if part.deadline is not None and time.monotonic() > part.deadline:
            self._drop(rid, abort=finish is None)
            part.emit(deadline_exceeded())
            return
        choice = part.choice
        deltas: list[GenerationDelta] = []
        for i, token in enumerate(tokens):
            entry = (float(logprobs[i]), ()) if part.logprobs and i < len(logprobs) else None
            grammar_done = False
            if part.constraint is not None and token not in self._eos:
                try:
                    part.constraint.advance(token)
                    grammar_done = part.constraint.finished
                except ConstraintFailed:  # xgrammar allows what llguidance does not: the pipeline ends it
                    part.constraint = None
            deltas.append(choice.step(token, entry, grammar_done=grammar_done))
            if choice.finished:
                break
        if not choice.finished and finish is not None:
            if finish == "aborted":
                self._drop(rid, abort=False)
                part.emit(EngineError(ErrorCode.UNAVAILABLE, "The request was aborted."))
                return
            deltas.append(choice.end("stop" if finish == "stop" else "length"))
        if choice.finished:
            self._drop(rid, abort=finish is None)
        if deltas:
            part.emit(merge_deltas(deltas))


__all__ = ["OpenVINOEngine"]
