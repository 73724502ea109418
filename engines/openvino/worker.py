"""The OpenVINO engine's process: one `ContinuousBatchingPipeline` and the loop that steps it.

OpenVINO GenAI's Python binding holds the GIL for the whole of `step()` (tens of milliseconds),
so the pipeline cannot share a process with an event loop. It runs here, in a child process
started by `engines.openvino.engine`, which imports nothing of ours but this file: numpy,
openvino and openvino_genai only.

The parent talks over one `multiprocessing.connection.Connection` (a socket pair it created):

    parent -> worker   ("add", id, prompt_ids, config)   config: GenerationConfig fields, plain values
                       ("abort", id)
                       ("stop",)
    worker -> parent   ("ready", info)                   once, after the pipeline is built
                       ("out", [(id, token_ids, logprobs, finish), ...], active)
                                                         after a step; `active`: requests left in
                                                         the pipeline
                       ("error", id, message)            a request the pipeline refused
                       ("fatal", message)                the pipeline failed; the worker exits

`finish` is None while a request runs, else "stop", "length" or "aborted". A request that the
parent aborts reports nothing more. When the parent goes away the worker exits: it sees end of
file on its socket before every step. (Not the kernel's parent-death signal: that fires when the
*thread* that started the worker ends, and the parent starts it from a passing thread.)
"""

from __future__ import annotations

import json
import os
import sys
from multiprocessing.connection import Connection
from typing import Any


def _pipeline(options: dict[str, Any]) -> Any:
    import openvino_genai as ov_genai

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = max(1, int(round(options["kv_cache_gb"])))
    scheduler.max_num_seqs = int(options["max_num_seqs"])
    scheduler.max_num_batched_tokens = int(options["max_num_batched_tokens"])
    scheduler.enable_prefix_caching = bool(options["prefix_caching"])
    scheduler.dynamic_split_fuse = True  # long prompts are prefilled in chunks between decode steps
    return ov_genai.ContinuousBatchingPipeline(options["model_dir"], scheduler, "CPU", dict(options["properties"]))


def _config(fields: dict[str, Any]) -> Any:
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    structured = fields.pop("structured", None)
    stop_ids = fields.pop("stop_token_ids", ())
    for name, value in fields.items():
        setattr(config, name, value)
    config.stop_token_ids = set(stop_ids)
    if structured is not None:
        kind, value = structured
        config.structured_output_config = ov_genai.StructuredOutputConfig(**{kind: value})
    return config


def serve(conn: Connection, options: dict[str, Any]) -> None:
    import numpy as np
    import openvino as ov
    from openvino_genai import GenerationFinishReason, GenerationStatus

    pipe = _pipeline(options)
    conn.send(("ready", {"pid": os.getpid()}))

    handles: dict[int, Any] = {}
    running = GenerationStatus.RUNNING
    reasons = {GenerationFinishReason.STOP: "stop", GenerationFinishReason.LENGTH: "length"}

    def receive(block: bool) -> bool:
        """Take every waiting command; False when the parent is gone or asked us to stop."""
        timeout = None if block else 0
        while conn.poll(timeout):
            timeout = 0
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return False
            kind = message[0]
            if kind == "add":
                _, rid, prompt, fields = message
                try:
                    tensor = ov.Tensor(np.asarray([prompt], dtype=np.int64))
                    handles[rid] = pipe.add_request(rid, tensor, _config(fields))
                except Exception as exc:  # noqa: BLE001 - the request's own fault, reported to it
                    conn.send(("error", rid, f"{type(exc).__name__}: {exc}"))
            elif kind == "abort":
                handle = handles.pop(message[1], None)
                if handle is not None:
                    handle.cancel()
            elif kind == "stop":
                return False
        return True

    reported = 0  # requests in the pipeline, as last told to the parent
    while receive(block=not handles):
        if not handles:
            if reported:  # everything left was aborted
                conn.send(("out", [], 0))
                reported = 0
            continue
        try:
            pipe.step()
        except Exception as exc:  # noqa: BLE001 - the pipeline's state is unknown now: start afresh
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
            return
        updates = []
        for rid, handle in list(handles.items()):
            status = handle.get_status()
            tokens: list[int] = []
            logprobs: list[float] = []
            finish = None
            while handle.can_read():
                for output in handle.read().values():
                    tokens.extend(output.generated_ids)
                    logprobs.extend(output.generated_log_probs)
                    if output.finish_reason in reasons:
                        finish = reasons[output.finish_reason]
            if status != running:
                del handles[rid]
                finish = finish or ("length" if status == GenerationStatus.FINISHED else "aborted")
            if tokens or finish:
                updates.append((rid, tokens, logprobs, finish))
        if updates or len(handles) != reported:
            reported = len(handles)
            conn.send(("out", updates, reported))


def main() -> None:
    fd = int(sys.argv[1])
    options = json.loads(sys.argv[2])
    conn = Connection(fd)
    try:
        serve(conn, options)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass
    except Exception as exc:  # noqa: BLE001 - say why before going
        try:
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


if __name__ == "__main__":
    main()
