"""The README, executed: its fenced blocks, what each one needs, and how a shown output is compared
with what the server really answers. `tests/test_readme.py` walks the README with it.

Every fenced block is accounted for, so a new example cannot go unchecked by accident:

- `bash` and `python` blocks are run, in README order, as a newcomer would after the Quick start
  (from the checkout's root, with `.venv`'s Python), unless an HTML comment right above the block
  says `<!-- check: skip: why -->`. In a bash block, `make serve ARGS="..."` and `hf-gateway ...`
  lines (re)start the server with those flags, as the README tells the reader to (stop the
  previous one first); every other line is run by bash. `<!-- check: server default -->` above a
  block goes back to the server with no flags.
- A block with no language is an output the README shows; its comment says where it comes from:
  `<!-- check: log SERVER [only N] -->` (each line, or line N, is a line that server printed;
  SERVER is `default` or the `ARGS` it was started with), `<!-- check: stderr `CMD` | `CMD` -->`
  (line i is what command i prints before it exits non-zero; `{busy_port}` is a port something
  listens on), `<!-- check: paths -->` (every path named exists), or `skip: why`.

Shown outputs. In bash, the `#` lines right after a command that start with `# {`, `# [` or
`# e.g.` (continued by `#  ` lines) are its output; in Python, the comment at the end of an
expression line is its value (or what that `print` prints). `...` stands for anything: a value,
the rest of an object's members or of a list, or part of a string. An output that starts with
`e.g.` depends on the model's weights (a tiny model's argmax, SmolLM2's wording, which differ from
CPU to CPU): its structure is compared, its leaf values only by type. Words after the output in
parentheses are a remark. A `curl` with no shown output must answer 2xx.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

ANY = "\x00any"  # `...` as a value
REST = "\x00rest"  # `...` as the rest of an object's members or of a list

_DIRECTIVE = re.compile(r"^<!--\s*check:\s*(.*?)\s*-->$")
_OUTPUT_START = re.compile(r"^#\s(\{|\[|e\.g\.\s)")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    lines: list[str]
    directive: str = ""  # the `<!-- check: ... -->` right above it, if any

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


@dataclass
class Command:
    line: int
    text: str
    expected: str | None = None  # the shown output, as written (without the `# `)


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = _DIRECTIVE.match(above)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(i + 1, lines[i][3:].strip(), lines[i + 1:end], match.group(1) if match else ""))
            i = end
        i += 1
    return found


def _code(text: str) -> str:
    """Bash text without its comments (a `#` that starts a word outside quotes)."""
    out, quote = [], ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            out.append(_code(text[i:]))
            return "".join(out)
        out.append(ch)
    return "".join(out)


def _complete(text: str) -> bool:
    code = _code(text).rstrip()
    return not code.endswith("\\") and code.count("'") % 2 == 0


def commands(block: Block) -> list[Command]:
    """A bash block's commands (a command may span lines: `\\` continuations, quoted JSON), each
    with the output shown right under it."""
    found: list[Command] = []
    pending: list[str] = []
    start = 0
    output: list[str] | None = None  # the shown output being read
    after_command = False
    for offset, raw in enumerate(block.lines):
        line = raw.rstrip()
        if not pending and line.lstrip().startswith("#"):
            if output is not None and line.startswith("#  "):
                output.append(line[2:])
            elif after_command and _OUTPUT_START.match(line):
                output = [line[2:]]
            else:
                output = None  # a remark
            if output is not None:
                found[-1].expected = "\n".join(output)
            after_command = False
            continue
        output, after_command = None, False
        if not pending and not line.strip():
            continue
        if not pending:
            start = block.line + 1 + offset
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            found.append(Command(start, text))
            pending, after_command = [], True
    assert not pending, f"{block.where}: an unfinished command: {pending}"
    return found


# -- comparing an output --------------------------------------------------------------------------


def _wildcards(text: str) -> str:
    """JSON with `...` outside strings made into markers: ANY as a value, REST as the rest of an
    object's members or of a list."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif text.startswith("...", i):
            before = "".join(out).rstrip()[-1:]
            after = text[i + 3:].lstrip()[:1]
            if stack and stack[-1] == "{" and before in ("{", ","):
                out.append(json.dumps(REST) + ": null")
            elif stack and stack[-1] == "[" and after == "]":
                out.append(json.dumps(REST))
            else:
                out.append(json.dumps(ANY))
            i += 3
            continue
        else:
            if ch == '"':
                in_string = True
            elif ch in "{[":
                stack.append(ch)
            elif ch in "}]" and stack:
                stack.pop()
            out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class Expected:
    value: object  # parsed JSON with markers, or the text
    is_json: bool
    loose: bool  # `e.g.`: leaf values compared by type only


def parse_expected(text: str) -> Expected:
    text = text.strip()
    loose = text.startswith("e.g. ")
    if loose:
        text = text[5:].lstrip()
    if text[:1] in ("{", "[", '"') or re.match(r"^-?\d", text):
        try:
            value, end = json.JSONDecoder().raw_decode(_wildcards(text))
        except json.JSONDecodeError:
            pass
        else:
            rest = _wildcards(text)[end:].strip()
            if not rest or rest.startswith("("):
                return Expected(value, True, loose)
    return Expected(text, False, loose)


def _glob(pattern: str, text: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, text, re.S) is not None


def _kind(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def differences(expected: object, actual: object, loose: bool = False, path: str = "$") -> list[str]:
    """What differs between a shown output (with markers) and the real one; empty when they match."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {json.dumps(actual)[:200]}"]
        keys = [k for k in expected if k != REST]
        missing = [k for k in keys if k not in actual]
        extra = [] if REST in expected else [k for k in actual if k not in expected]
        found = [f"{path}: missing {missing}" for _ in missing[:1]] + [f"{path}: not shown {extra}" for _ in extra[:1]]
        for k in keys:
            if k in actual:
                found += differences(expected[k], actual[k], loose, f"{path}.{k}")
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {json.dumps(actual)[:200]}"]
        items = expected[:-1] if expected and expected[-1] == REST else expected
        if len(actual) < len(items) or (len(items) == len(expected) and len(actual) != len(items)):
            return [f"{path}: {len(actual)} items, the README shows {len(items)}"]
        found = []
        for i, item in enumerate(items):
            found += differences(item, actual[i], loose, f"{path}[{i}]")
        return found
    if loose:
        return [] if _kind(expected) == _kind(actual) else [f"{path}: a {_kind(actual)}, the README shows a {_kind(expected)}"]
    if isinstance(expected, str) and isinstance(actual, str) and "..." in expected:
        return [] if _glob(expected, actual) else [f"{path}: {actual!r} does not match {expected!r}"]
    if _kind(expected) != _kind(actual) or expected != actual:
        return [f"{path}: {json.dumps(actual)[:200]}, the README shows {json.dumps(expected)}"]
    return []


def compare(shown: str, actual_text: str | None = None, actual_value: object = None) -> list[str]:
    """Compare a shown output with a real one, given as printed text or as a value."""
    expected = parse_expected(shown)
    if expected.is_json:
        if actual_text is not None:
            try:
                actual_value = json.loads(actual_text)
            except json.JSONDecodeError:
                return [f"not JSON: {actual_text[:300]!r}"]
        return differences(expected.value, actual_value, expected.loose)
    text = actual_text if actual_text is not None else str(actual_value)
    if expected.loose:
        return [] if text.strip() else ["no output"]
    return [] if _glob(str(expected.value), text.strip()) else [f"{text.strip()[:300]!r}, the README shows {expected.value!r}"]


def line_pattern(shown: str) -> re.Pattern[str]:
    """A log line as shown: numbers stand for any number (times, versions, counts, statuses), hex
    runs of 16 or more for any id, `...` for anything; found anywhere in a printed line."""
    parts = []
    for piece in re.split(r"(\.\.\.|\b[0-9a-f]{16,}\b|\d+(?:\.\d+)*)", shown.strip()):
        if piece == "...":
            parts.append(".*?")
        elif len(piece) >= 16 and re.fullmatch("[0-9a-f]+", piece):
            parts.append("[0-9a-f]+")  # an id
        elif piece and piece[0].isdigit():
            parts.append(r"\d+(?:\.\d+)*")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


# -- the Python side: blocks run in one interpreter, so later blocks use earlier names ---------------


def _plain(value: object) -> object:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))


def run_block(code: str, checked: list[int], namespace: dict) -> dict:
    """Run one block statement by statement; the value (or the printed text) of each expression
    statement on a `checked` line is returned."""
    values: dict[str, object] = {}
    out = io.StringIO()
    try:
        tree = ast.parse(code)
        for statement in tree.body:
            module = ast.Module(body=[statement], type_ignores=[])
            if isinstance(statement, ast.Expr) and statement.end_lineno in checked:
                call = statement.value
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
                    printed = io.StringIO()
                    with contextlib.redirect_stdout(printed):
                        exec(compile(module, "<README>", "exec"), namespace)
                    out.write(printed.getvalue())
                    values[str(statement.end_lineno)] = {"text": printed.getvalue().rstrip("\n")}
                else:
                    with contextlib.redirect_stdout(out):
                        value = eval(compile(ast.Expression(statement.value), "<README>", "eval"), namespace)
                    values[str(statement.end_lineno)] = {"value": _plain(value)}
            else:
                with contextlib.redirect_stdout(out):
                    exec(compile(module, "<README>", "exec"), namespace)
        return {"values": values, "stdout": out.getvalue(), "error": None}
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        return {"values": values, "stdout": out.getvalue(), "error": traceback.format_exc(limit=4)}


def _serve_blocks() -> None:
    """`python -m tests.doccheck`: run blocks sent as JSON lines on stdin, answer on stdout."""
    namespace: dict = {"__name__": "__readme__"}
    for line in sys.stdin:
        request = json.loads(line)
        sys.__stdout__.write(json.dumps(run_block(request["code"], request["checked"], namespace)) + "\n")
        sys.__stdout__.flush()


@dataclass
class PythonSession:
    """One interpreter for every Python block, as a reader's REPL would be."""

    python: str
    proc: object = field(default=None)

    def run(self, code: str, checked: list[int]) -> dict:
        import subprocess

        if self.proc is None:
            self.proc = subprocess.Popen([self.python, "-m", "tests.doccheck"], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.proc.stdin.write(json.dumps({"code": code, "checked": checked}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the Python session ended")
        return json.loads(answer)


if __name__ == "__main__":
    _serve_blocks()
