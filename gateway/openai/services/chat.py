"""Chat completions: messages -> chat template -> token ids -> n choices -> response or chunks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engines import Engine
from engines.tasks import Task
from gateway.openai.errors import invalid
from gateway.openai.protocol import (
    CHAT_ROLES,
    ChatCompletionRequest,
    ChatMessage,
    check_unsupported,
    max_tokens_param,
    structured_output,
    to_generation_params,
)
from gateway.openai.services.common import (
    Collected,
    Generation,
    OpenAIConfig,
    Prepared,
    ServiceBase,
    collect_all,
    merged,
    new_id,
    now,
    seeded,
    stream_usage_options,
    usage_of,
)
from gateway.openai.services.logprobs import chat_logprobs
from gateway.openai.services.tools import ToolPlan, plan_tools
from gateway.usage import UsageTracker


# Template arguments a request sets at the top level, where they are checked.
TOP_LEVEL_TEMPLATE_ARGS = frozenset({"chat_template", "add_generation_prompt", "continue_final_message", "tools", "documents"})
# Arguments of the rendering itself, or of the tokenizer after it: never the client's to set.
RESERVED_TEMPLATE_ARGS = frozenset({
    "messages", "conversation", "tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length",
    "tokenizer_kwargs", "return_assistant_tokens_mask", "sanitize_control_tokens",
})


@dataclass(frozen=True)
class TemplateOptions:
    add_generation_prompt: bool
    continue_final_message: bool
    chat_template: str | None
    kwargs: dict[str, Any]


@dataclass
class ChatPlan:
    prepared: Prepared
    top_logprobs: int | None  # None: no logprobs in the response
    tools: ToolPlan = field(default_factory=ToolPlan)


class ChatService(ServiceBase):
    def __init__(self, engine: Engine, config: OpenAIConfig) -> None:
        super().__init__(engine, config)
        if engine.tokenizer.chat_template is not None:
            engine.tokenizer.templates().warm()  # the first chat request does not wait for a worker to start

    # -- prompt building ----------------------------------------------------------------------

    def _template_messages(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        if not messages:
            raise invalid("`messages` must contain at least one message.", "messages")
        keep_developer = self.engine.tokenizer.template_knows_developer_role
        out: list[dict[str, Any]] = []
        for i, msg in enumerate(messages):
            if msg.role not in CHAT_ROLES:
                raise invalid(
                    f"Invalid role '{msg.role}' in messages[{i}]; expected one of {', '.join(CHAT_ROLES)}.",
                    f"messages[{i}].role",
                )
            role = msg.role if msg.role != "developer" or keep_developer else "system"
            entry: dict[str, Any] = {"role": role, "content": self._content_text(i, msg)}
            if msg.name is not None:
                entry["name"] = msg.name
            if msg.tool_calls:
                if msg.role != "assistant":
                    raise invalid("Only assistant messages carry `tool_calls`.", f"messages[{i}].tool_calls")
                entry["tool_calls"] = [self._history_call(i, j, call) for j, call in enumerate(msg.tool_calls)]
            if msg.role == "tool":
                if not msg.tool_call_id:
                    raise invalid("Tool messages need a `tool_call_id`.", f"messages[{i}].tool_call_id")
                entry["tool_call_id"] = msg.tool_call_id
            out.append(entry)
        return out

    @staticmethod
    def _history_call(i: int, j: int, call: dict[str, Any]) -> dict[str, Any]:
        """Templates expect `arguments` as an object (the HF convention); OpenAI sends a string."""
        fn = call.get("function")
        if not isinstance(fn, dict):
            raise invalid("Each tool call needs a `function` object.", f"messages[{i}].tool_calls[{j}].function")
        if not isinstance(fn.get("name"), str):
            raise invalid("Each tool call needs `function.name`.", f"messages[{i}].tool_calls[{j}].function.name")
        arguments = fn.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise invalid(
                    "`function.arguments` must be a JSON string.", f"messages[{i}].tool_calls[{j}].function.arguments"
                ) from None
        return {"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": arguments}}

    @staticmethod
    def _content_text(i: int, msg: ChatMessage) -> str:
        content = msg.content
        if content is None:
            if msg.role == "assistant":
                return ""
            raise invalid(f"messages[{i}].content is required for role '{msg.role}'.", f"messages[{i}].content")
        if isinstance(content, str):
            return content
        texts: list[str] = []
        for j, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise invalid(
                    f"Content part type '{part.type}' is not supported by this text-only model; "
                    "send parts of type 'text' with a 'text' field.",
                    f"messages[{i}].content[{j}]",
                    code="unsupported_value",
                )
            texts.append(part.text)
        return "\n".join(texts)

    def template_options(self, req: ChatCompletionRequest) -> TemplateOptions:
        """add_generation_prompt, continue_final_message, chat_template(_kwargs), reasoning_effort,
        each checked once: a template argument cannot override what the request says at the top
        level, nor bring a template past the operator's gate."""
        add_generation_prompt = True if req.add_generation_prompt is None else req.add_generation_prompt
        continue_final = bool(req.continue_final_message)
        if continue_final and add_generation_prompt:
            raise invalid(
                "`continue_final_message` and `add_generation_prompt` cannot both be true "
                "(set add_generation_prompt to false to continue the last message).",
                "continue_final_message",
            )
        if continue_final and (not req.messages or req.messages[-1].role != "assistant"):
            raise invalid("`continue_final_message` needs the last message to be an assistant message.", "continue_final_message")
        if req.chat_template is not None and not self.config.trust_request_chat_template:
            raise invalid(
                "Per-request chat templates are disabled on this server "
                "(the operator can enable them with --trust_request_chat_template).",
                "chat_template",
                code="unsupported_parameter",
            )
        kwargs = dict(req.chat_template_kwargs or {})
        for key in kwargs:
            if key in TOP_LEVEL_TEMPLATE_ARGS:
                raise invalid(
                    f"`chat_template_kwargs.{key}` is not allowed: send `{key}` as a top-level parameter of the request.",
                    f"chat_template_kwargs.{key}",
                )
            if key in RESERVED_TEMPLATE_ARGS:
                raise invalid(
                    f"`chat_template_kwargs.{key}` is not allowed: the server sets it.", f"chat_template_kwargs.{key}"
                )
        if req.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", req.reasoning_effort)
        return TemplateOptions(add_generation_prompt, continue_final, req.chat_template, kwargs)

    async def prompt_ids(self, req: ChatCompletionRequest, tools: Any = None) -> tuple[str, list[int]]:
        messages = self._template_messages(req.messages)
        options = self.template_options(req)
        tok = self.engine.tokenizer
        # The template renders in a bounded worker process; tokenizing is CPU work for a thread.
        # Template errors arrive as EngineError(reason="template_error") and map to a 400.
        text = await tok.render_chat(
            messages,
            add_generation_prompt=options.add_generation_prompt,
            continue_final_message=options.continue_final_message,
            chat_template=options.chat_template,
            tools=tools or None,
            template_kwargs=options.kwargs,
        )
        # The template normally holds BOS and friends already: no special tokens unless asked.
        ids = await asyncio.to_thread(tok.encode, text, add_special_tokens=req.add_special_tokens)
        return text, self.truncate(ids, req.truncate_prompt_tokens)

    async def plan(self, req: ChatCompletionRequest) -> ChatPlan:
        model = self.resolve_model(req.model)
        self.require_task(Task.text_generation)
        check_unsupported(req)
        n = self.check_n(req.n)
        top = self.check_logprobs(req.top_logprobs, "top_logprobs")
        if top and not req.logprobs:
            raise invalid("`top_logprobs` needs `logprobs` set to true.", "top_logprobs")
        top_logprobs = (top or 0) if req.logprobs else None
        tools = plan_tools(req)
        structured = tools.constraint or structured_output(req)
        if tools.constraint is not None and req.response_format not in (None, {"type": "text"}):
            raise invalid("`response_format` cannot be combined with a forced `tool_choice`.", "response_format")

        text, prompt_ids = await self.prompt_ids(req, tools.template_tools)
        caps = self.engine.capabilities
        default_max = caps.max_model_len - len(prompt_ids)
        if self.config.defaults.max_output_tokens is not None:
            default_max = min(default_max, self.config.defaults.max_output_tokens)
        params = to_generation_params(
            req,
            defaults=self.config.defaults,
            default_max_tokens=max(default_max, 1),
            logprobs=top_logprobs,
            structured=structured,
        )
        params = self.with_adapter(params, model)
        rename = {"prompt": "messages", "max_tokens": max_tokens_param(req)}
        admission = await self.admit([prompt_ids], params, n, prompt_param="messages", rename=rename)
        response_id = new_id("chatcmpl")
        self.log_request(response_id, text, params)
        generations = [
            Generation(self.engine, prompt_ids, seeded(params, i), f"{response_id}-{i}", index=i, rename=rename, admission=admission)
            for i in range(n)
        ]
        include_usage, continuous = stream_usage_options(req.stream_options)
        prepared = Prepared(
            id=response_id,
            chunk_object="chat.completion.chunk",
            created=now(),
            model=model,
            fingerprint=self.fingerprint,
            generations=generations,
            include_usage=include_usage,
            continuous_usage=continuous,
            usage=UsageTracker(chat=True),
        )
        return ChatPlan(prepared, top_logprobs, tools)

    # -- responses ----------------------------------------------------------------------------

    def _choice(self, plan: ChatPlan, r: Collected) -> dict[str, Any]:
        message, finish = plan.tools.message(r.text, r.finish_reason, r.generation.index)
        return {
            "index": r.generation.index,
            "message": message,
            "logprobs": None if plan.top_logprobs is None else chat_logprobs(r.logprobs, plan.top_logprobs),
            "finish_reason": finish,
            "stop_reason": r.stop_reason,
        }

    async def complete(self, req: ChatCompletionRequest) -> dict[str, Any]:
        plan = await self.plan(req)
        results = await collect_all(plan.prepared.generations)
        choices = [self._choice(plan, r) for r in results]
        return plan.prepared.response("chat.completion", choices, usage_of(results, chat=True))

    async def stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Chunks as the spec orders them: role with the first token, no empty deltas,
        finish_reason on the last content chunk, usage chunk only when asked."""
        plan = await self.plan(req)
        p = plan.prepared
        streams = {g.index: plan.tools.streamer(g.index) for g in p.generations}

        def choice(index: int, delta: dict[str, Any], finish: str | None, items: Any = ()) -> dict[str, Any]:
            logprobs = None if plan.top_logprobs is None or not items else chat_logprobs(items, plan.top_logprobs)
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

        pending: dict[int, list[Any]] = {g.index: [] for g in p.generations}  # logprob items waiting for text
        async for gen, d in merged(p.generations):
            p.usage.observe(d, choice=gen.index)
            i = gen.index
            out = streams[i].feed(d.text, d.finish_reason)
            pending[i] += d.logprobs
            if out.first:
                yield p.chunk(choice(i, {"role": "assistant", "content": ""}, None), index=i)
            for delta in out.deltas[:-1]:
                yield p.chunk(choice(i, delta, None), index=i)
            last = out.deltas[-1] if out.deltas else None
            if last is not None or out.finish_reason is not None:
                items, pending[i] = pending[i], []
                yield p.chunk(choice(i, last or {}, out.finish_reason, items), index=i)
        if p.include_usage:
            yield p.usage_chunk()
