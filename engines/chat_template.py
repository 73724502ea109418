"""Rendering one chat template, bounded: the Jinja sandbox chat templates expect, nothing more.

This module is what a template worker process runs (`engines.template_worker`); it imports only
the standard library and jinja2. The environment is the one chat templates are written for
(Hugging Face's convention): an immutable sandbox with `trim_blocks` and `lstrip_blocks`, loop
controls, a pass-through `{% generation %}` tag, `raise_exception`, `strftime_now`, a `tojson`
filter that does not escape HTML, `dict` and an underscore-proof `namespace`. The variables are
`messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens and the
request's own template arguments.

On top of the sandbox, each render is bounded in what it may build: string and list repetition
and powers are checked before they allocate, `range` is capped, and the output stops growing at
`max_output` characters. Time and memory are bounded by the worker process (an alarm and an
address-space limit), because a Jinja loop or a single huge allocation cannot be stopped from
inside the sandbox.
"""

from __future__ import annotations

import json
import operator
from collections import OrderedDict
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_RANGE = 100_000  # Jinja's own sandbox limit for range()
MAX_POWER_BITS = 4096  # an integer power may produce at most this many bits
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class TemplateFailure(Exception):
    """The template cannot render these inputs (the client's problem: a 400)."""


class TooLarge(TemplateFailure):
    pass


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it
    renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return caller()


class _Namespace(Namespace):
    """`namespace()` without underscore attributes (no route to interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: `namespace(self=...)` works
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attributes may not start with an underscore: {name!r}")


def _raise_exception(message: Any) -> None:
    raise jinja2.exceptions.TemplateError(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus size checks on the operations that can allocate without bound."""

    intercepted_binops = frozenset(("*", "**"))

    def __init__(self, max_output: int = 1 << 20) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        self.max_output = max_output
        self.filters["tojson"] = _tojson
        self.globals.update(
            raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_make_dict, namespace=_Namespace, range=self._range
        )

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise TooLarge(f"range() of {len(rng)} items is over the limit of {MAX_RANGE}")
        return rng

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > self.max_output:
                    raise TooLarge(f"a repetition of {len(seq)} x {count} items is over the output limit of {self.max_output}")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > MAX_POWER_BITS:
                    raise TooLarge(f"{left} ** {right} is too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


class Renderer:
    """Compiled templates (the model's and a few per-request ones), rendered with bounds."""

    def __init__(self, default_template: str | None, special_tokens: dict[str, Any], *, cache_size: int = 16) -> None:
        self.default_template = default_template
        self.special_tokens = dict(special_tokens)
        self._cache: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._cache_size = cache_size

    def _compile(self, source: str) -> jinja2.Template:
        template = self._cache.get(source)
        if template is None:
            template = BoundedEnvironment().from_string(source)
            self._cache[source] = template
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(source)
        return template

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        template: str | None = None,
        tools: list[Any] | None = None,
        documents: list[Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        kwargs: dict[str, Any] | None = None,
        max_output: int = 1 << 20,
    ) -> str:
        source = template if template is not None else self.default_template
        if source is None:
            raise TemplateFailure("this model has no chat template")
        try:
            compiled = self._compile(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateFailure(f"the chat template is not valid Jinja: {exc}") from None
        # None-valued keys are left out: templates test for a key's presence (OpenAI clients send
        # `"tool_calls": null`), as Hugging Face's apply_chat_template does.
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        final = ""
        if continue_final_message:
            if not chat or not isinstance(chat[-1].get("content"), str):
                raise TemplateFailure("continue_final_message needs a final message with text content")
            final = chat[-1]["content"]
            chat[-1] = {**chat[-1], "content": final + CONTINUE_TAG}
        variables = {
            **self.special_tokens,
            **(kwargs or {}),
            "messages": chat,
            "tools": tools,
            "documents": documents,
            "add_generation_prompt": add_generation_prompt,
        }
        compiled.environment.max_output = max_output  # type: ignore[attr-defined]  # one render at a time per worker
        rendered = self._bounded(compiled, variables, max_output)
        if continue_final_message:
            rendered = self._cut_after_final(rendered, final)
        return rendered

    @staticmethod
    def _bounded(compiled: jinja2.Template, variables: dict[str, Any], max_output: int) -> str:
        parts: list[str] = []
        size = 0
        for piece in compiled.generate(**variables):
            size += len(piece)
            if size > max_output:
                raise TooLarge(f"the rendered prompt is over the limit of {max_output} characters")
            parts.append(piece)
        return "".join(parts)

    @staticmethod
    def _cut_after_final(rendered: str, final: str) -> str:
        """Drop what the template wrote after the final message, so the model continues it."""
        tag = CONTINUE_TAG.strip()
        if final.strip() not in rendered or tag not in rendered:
            raise TemplateFailure("continue_final_message is set but the template does not write the final message as it was sent")
        at = rendered.rindex(tag)
        if rendered[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG:
            return rendered[:at]
        return rendered[:at].rstrip()  # the template trimmed the message's trailing space


def describe(exc: BaseException) -> str:
    """A client-facing sentence for a failed render."""
    if isinstance(exc, TemplateFailure):
        return str(exc)
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"the chat template did something the sandbox does not allow: {exc}"
    if isinstance(exc, jinja2.TemplateError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "the chat template used more memory than a template may"
    if isinstance(exc, RecursionError):
        return "the chat template recursed too deeply"
    return f"{type(exc).__name__}: {exc}"
