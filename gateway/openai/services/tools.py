"""Tool calling: validation of tools/tool_choice, the constraint a forced choice needs, and one
streamer per choice that turns generated text into content or tool-call deltas.

- `none` (or no tools): text is content.
- named function: the output is constrained to that function's parameter schema; it streams as
  argument fragments of one call; finish_reason `stop` (OpenAI parity).
- `required`: the output is constrained to a JSON array of {"name", "arguments"} calls; the calls
  are sent when complete; finish_reason `tool_calls`.
- `auto`: the model decides. Calls are recognised in two formats: Hermes-style
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks (Qwen 2.5/3, Hermes, SmolLM3 and
  other templates that use them), and an output that is nothing but a JSON call object or array
  of them (Llama 3.x style). Text outside the blocks is content. A call is sent as one delta when
  its block closes; finish_reason `tool_calls`.
`length` wins whenever the token limit cut the output. The non-streaming message is built by the
same streamer, so both shapes always agree.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from engines.types import StructuredOutput
from gateway.openai.errors import invalid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_ALNUM = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


@dataclass
class Out:
    first: bool = False  # the first output of this choice (the role chunk goes before it)
    deltas: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class ToolPlan:
    mode: str = "none"  # none | auto | required | named
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    named: str | None = None
    template_tools: list[dict[str, Any]] | None = None
    constraint: StructuredOutput | None = None

    def streamer(self, index: int) -> ChoiceStreamer:
        return ChoiceStreamer(self)

    def message(self, text: str, finish_reason: str | None, index: int) -> tuple[dict[str, Any], str | None]:
        """The non-streaming message: the same streamer, fed everything at once."""
        out = self.streamer(index).feed(text, finish_reason)
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        for delta in out.deltas:
            if "content" in delta:
                content.append(delta["content"])
            for tc in delta.get("tool_calls", ()):
                call = calls.setdefault(tc["index"], {"id": tc.get("id"), "type": "function", "function": {"name": "", "arguments": ""}})
                call["function"]["name"] += tc.get("function", {}).get("name", "")
                call["function"]["arguments"] += tc.get("function", {}).get("arguments", "")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not calls else None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return message, out.finish_reason


class ChoiceStreamer:
    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.started = False
        self.buffer = ""  # text not yet turned into deltas
        self.in_call = False
        self.calls = 0
        self.mode_decided = plan.mode != "auto"
        self.json_mode = False  # auto: the whole output looks like a bare JSON call

    def feed(self, text: str, finish_reason: str | None) -> Out:
        out = Out(first=not self.started)
        self.started = True
        mode = self.plan.mode
        if mode == "none":
            if text:
                out.deltas.append({"content": text})
        elif mode == "named":
            if self.calls == 0:
                self.calls = 1
                out.deltas.append(self._call_head(0, self.plan.named or ""))
            if text:
                out.deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
        elif mode == "required":
            self.buffer += text
            if finish_reason is not None:
                calls = _parse_calls(self.buffer)
                if calls is None:
                    out.deltas.append({"content": self.buffer})
                else:
                    out.deltas += [self._full_call(name, args) for name, args in calls]
        else:
            self._auto(text, finish_reason is not None, out)
        out.finish_reason = self._finish(finish_reason)
        return out

    def _finish(self, reason: str | None) -> str | None:
        if reason is None or reason == "length":
            return reason
        if self.plan.mode in ("auto", "required") and self.calls:
            return "tool_calls"
        return reason

    # -- auto ---------------------------------------------------------------------------------

    def _auto(self, text: str, done: bool, out: Out) -> None:
        self.buffer += text
        if not self.mode_decided:
            stripped = self.buffer.lstrip()
            if not stripped and not done:
                return
            self.mode_decided = True
            self.json_mode = stripped[:1] in ("{", "[")
        if self.json_mode:
            if done:
                calls = _parse_calls(self.buffer)
                if calls is None:
                    out.deltas.append({"content": self.buffer})
                else:
                    out.deltas += [self._full_call(name, args) for name, args in calls]
                self.buffer = ""
            return
        while True:
            if self.in_call:
                end = self.buffer.find(CLOSE)
                if end == -1 and not done:
                    return
                body = self.buffer if end == -1 else self.buffer[:end]
                self.buffer = "" if end == -1 else self.buffer[end + len(CLOSE) :]
                self.in_call = False
                calls = _parse_calls(body)
                if calls is None:  # not a call after all: keep the model's text
                    out.deltas.append({"content": OPEN + body + ("" if end == -1 else CLOSE)})
                else:
                    out.deltas += [self._full_call(name, args) for name, args in calls]
                continue
            start = self.buffer.find(OPEN)
            if start != -1:
                if start:
                    out.deltas.append({"content": self.buffer[:start]})
                self.buffer = self.buffer[start + len(OPEN) :]
                self.in_call = True
                continue
            hold = 0 if done else _prefix_overlap(self.buffer, OPEN)
            release = self.buffer[: len(self.buffer) - hold]
            if release:
                out.deltas.append({"content": release})
            self.buffer = self.buffer[len(self.buffer) - hold :]
            return

    # -- deltas -------------------------------------------------------------------------------

    def _call_head(self, index: int, name: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, "id": call_id(), "type": "function", "function": {"name": name, "arguments": ""}}]}

    def _full_call(self, name: str, arguments: str) -> dict[str, Any]:
        delta = self._call_head(self.calls, name)
        delta["tool_calls"][0]["function"]["arguments"] = arguments
        self.calls += 1
        return delta


def _prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def _parse_calls(text: str) -> list[tuple[str, str]] | None:
    """A call object or an array of them -> [(name, arguments JSON string)], else None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get("arguments", item.get("parameters", {}))
        calls.append((item["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
    return calls or None


def plan_tools(req: Any) -> ToolPlan:
    """Validate `tools` and `tool_choice`; decide the mode and any constraint it needs."""
    tools = req.tools
    choice = req.tool_choice
    if tools is None:
        if choice not in (None, "none"):
            raise invalid("`tool_choice` needs `tools`.", "tool_choice")
        return ToolPlan()
    if not tools:
        raise invalid("`tools` must not be empty; leave it out instead.", "tools")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid("Each tool must be {'type': 'function', 'function': {'name': ...}}.", f"tools[{i}]")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise invalid("`function.parameters` must be a JSON schema object.", f"tools[{i}].function.parameters")
        functions[fn["name"]] = params
    choice = "auto" if choice is None else choice
    if choice == "none":
        return ToolPlan()
    plan = ToolPlan(functions=functions, template_tools=tools)
    if choice == "auto":
        plan.mode = "auto"
    elif choice == "required":
        plan.mode = "required"
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"name": {"const": name}, "arguments": params},
                        "required": ["name", "arguments"],
                        "additionalProperties": False,
                    }
                    for name, params in functions.items()
                ]
            },
        }
        if req.parallel_tool_calls is False:
            schema["maxItems"] = 1
        plan.constraint = StructuredOutput("json_schema", json.dumps(schema))
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in functions:
            raise invalid(f"`tool_choice` names the function {name!r}, which is not in `tools`.", "tool_choice")
        plan.mode, plan.named = "named", name
        plan.constraint = StructuredOutput("json_schema", json.dumps(functions[name]))
    else:
        raise invalid("`tool_choice` must be none, auto, required or {'type': 'function', 'function': {'name': ...}}.", "tool_choice")
    return plan
