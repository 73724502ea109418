"""The README cannot drift: every command and request in it is run against real servers, in the
order a newcomer meets them, and every output it shows is compared with what came back (the rules
are in `tests/doccheck.py`)."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import httpx

from tests.conftest import free_port, spawn, stop_group
from tests.doccheck import README, ROOT, Block, PythonSession, blocks, commands, compare, differences, line_pattern, parse_expected

SERVER_COMMAND = re.compile(r"^(make serve( ARGS=.*)?|hf-gateway\b.*)$", re.S)
TOP_DIRS = ("engines", "gateway", "compat", "tests", "scripts", "deploy", "docs", ".ci")


def readme_blocks() -> list[Block]:
    return blocks(README.read_text())


def kind(block: Block) -> str:
    directive = block.directive
    if directive.startswith("skip:"):
        return "skip"
    if block.lang in ("bash", "python"):
        return block.lang
    return directive.split(" ", 1)[0] if directive else "unchecked"


# -- the rules themselves -----------------------------------------------------------------------


def test_every_block_is_run_checked_or_says_why_not():
    for block in readme_blocks():
        assert kind(block) in ("bash", "python", "skip", "log", "stderr", "paths"), \
            f"{block.where}: an output block needs <!-- check: log|stderr|paths|skip: why -->"
        if kind(block) == "skip":
            assert len(block.directive[5:].strip()) > 10, f"{block.where}: say why it is not run"
        if block.directive.startswith("server") or kind(block) == "log":
            assert block.directive.split()[1] == "default", f"{block.where}: unknown server in {block.directive!r}"


def test_the_comparison_finds_drift():
    """The matcher fails on what a stale README would show, so a green walk means something."""
    shown = '{"model_name": "sst", "id": "...", "outputs": [{"shape": [1], "data": [2]}]}   (a remark)'
    real = {"model_name": "sst", "id": "3f2a", "outputs": [{"shape": [1], "data": [2]}]}
    assert compare(shown, json.dumps(real)) == []
    assert compare(shown, json.dumps({**real, "model_name": "bert"}))  # a changed value
    assert compare(shown, json.dumps({**real, "extra": 1}))  # a member the README does not show
    assert compare(shown, json.dumps({k: v for k, v in real.items() if k != "id"}))  # a missing one
    assert compare(shown, json.dumps({**real, "outputs": [{"shape": [1], "data": [2, 2]}]}))  # a longer list
    assert compare(shown, "Internal Server Error")
    assert compare('{"a": 1, ...}', '{"a": 1, "b": 2}') == [] and compare('{"a": 1, ...}', '{"b": 2}')
    assert compare('[1, ...]', '[1, 2, 3]') == [] and compare('[1, ...]', '[]')
    assert compare('{"request_id": "req-..."}', '{"request_id": "req-9"}') == [] and compare('{"request_id": "req-..."}', '{"request_id": "9"}')
    # `e.g.`: a tiny model's argmax may differ from CPU to CPU; the shape and the types may not.
    assert compare("e.g. {\"predictions\": [2, 2]}", '{"predictions": [0, 1]}') == []
    assert compare("e.g. {\"predictions\": [2, 2]}", '{"predictions": [0]}')
    assert compare("e.g. {\"predictions\": [2, 2]}", '{"predictions": ["2", "2"]}')
    assert compare("get_weather", "get_weather") == [] and compare("get_weather", "get_time")
    assert compare("384", "384") == [] and compare("384", "768")
    assert differences(parse_expected('{"a": ...}').value, {"a": None}) == []
    log = line_pattern('2026-11-25 05:00:00.123 4242 gateway.access INFO request_id=3f2a9c01d6e84b7f9a55c2e0b1d4f6a8 route="POST /v1" status=200')
    assert log.search('2027-01-02 10:11:12.999 17 gateway.access INFO request_id=c7730e14067d4d879b3cb96f03695b06 route="POST /v1" status=499')
    assert not log.search('2027-01-02 10:11:12.999 17 gateway.access INFO request_id=c7730e14067d4d879b3cb96f03695b06 route="GET /v1" status=200')
    assert not log.search('2027-01-02 10:11:12.999 17 gateway.access INFO request_id=- route="POST /v1" status=200')


def test_bash_blocks_split_into_commands_with_their_outputs():
    block = Block(10, "bash", [
        "curl -s x -d '{", '  "a": 1', "}'", "# {\"b\": 2,", "#  \"c\": 3}", "curl y   # a remark, not an output",
        "# a remark about the next line", "make serve ARGS=\"--x 1\"",
    ])
    found = commands(block)
    assert [(c.line, c.expected) for c in found] == [(11, '{"b": 2,\n "c": 3}'), (16, None), (18, None)]
    assert found[0].text == "curl -s x -d '{\n  \"a\": 1\n}'"


# -- the walk ------------------------------------------------------------------------------------


class Walk:
    """A newcomer's terminal: one server at a time on one pair of ports (restarted when the README
    says `make serve ARGS=...`), bash from the checkout's root, one Python session for every block."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.http, self.grpc = free_port(), free_port()
        self.bin = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
        self.server: tuple[str, subprocess.Popen] | None = None
        self.logs: dict[str, list[Path]] = {}
        self.python = PythonSession(sys.executable)
        self.problems: list[str] = []
        self.compared: list[str] = []  # where a shown output was compared

    def ports(self, text: str) -> str:
        return text.replace("localhost:8080", f"localhost:{self.http}").replace("localhost:8081", f"localhost:{self.grpc}")

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    # servers

    def server_args(self, command: str) -> list[str]:
        """The flags a `make serve ARGS="..."` or `hf-gateway ...` line gives the server, expanded
        by bash as the reader's shell would ($(...), quotes); make splits ARGS into words."""
        script = 'make() { printf "%s\\0" "$@"; }\nhf-gateway() { printf "%s\\0" "$@"; }\n' + command
        words = subprocess.run(["bash", "-c", script], env=self.env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
        if words[:1] == ["serve"]:
            args = next((w[5:] for w in words[1:] if w.startswith("ARGS=")), "")
            return shlex.split(args)
        return words

    def serve(self, args: list[str]) -> None:
        key = shlex.join(args) or "default"
        if self.server and self.server[0] == key:
            return
        self.stop()
        log = self.tmp / f"server-{sum(len(v) for v in self.logs.values())}.log"
        self.logs.setdefault(key, []).append(log)
        with log.open("w") as out:
            proc = spawn([str(self.bin / "hf-gateway"), *args, "--http_port", str(self.http), "--grpc_port", str(self.grpc)],
                         cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.server = (key, proc)
        deadline = time.monotonic() + 600  # a hang guard only
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server `hf-gateway {key}` exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/ready", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"`hf-gateway {key}` did not become ready"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.server:
            stop_group(self.server[1], grace=30)
            self.server = None

    def log_lines(self, key: str) -> list[str]:
        return [line for path in self.logs.get(key, []) for line in path.read_text().splitlines()]

    # blocks

    def bash(self, block: Block) -> None:
        for command in commands(block):
            where = f"README.md:{command.line}"
            text = command.text
            if SERVER_COMMAND.match(text.split("#")[0].strip()):
                self.serve(self.server_args(text))
                continue
            if text.startswith("export "):
                done = subprocess.run(["bash", "-c", f"{text}\nenv -0"], env=self.env, cwd=ROOT, capture_output=True, text=True, check=True)
                self.env = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
                continue
            is_curl = text.startswith("curl ")
            script = self.ports(text)
            if is_curl:  # the status too, after the body (a remark at the end of the line is cut first)
                script = re.sub(r"\s+#[^'\n]*$", "", script) + " -w '\\n@status=%{http_code}'"
            done = subprocess.run(["bash", "-c", script], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=900)
            out = done.stdout
            if done.returncode != 0:
                self.fail(where, f"exit {done.returncode}: {done.stderr[-2000:] or out[-2000:]}")
                continue
            status = None
            if is_curl:
                out, _, status = out.rpartition("\n@status=")
            if command.expected is not None:
                self.compared.append(where)
                for problem in compare(command.expected, out):
                    self.fail(where, problem)
            elif status is not None and not status.startswith("2"):
                self.fail(where, f"HTTP {status}: {out[:500]}")
            elif not out.strip() and is_curl:
                self.fail(where, "no answer")

    def python_block(self, block: Block) -> None:
        code = self.ports("\n".join(block.lines))
        comments = {tok.start[0]: tok.string[1:].strip() for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                    if tok.type == tokenize.COMMENT}
        shown = {node.end_lineno: comments[node.end_lineno] for node in ast.parse(code).body
                 if isinstance(node, ast.Expr) and node.end_lineno in comments}
        answer = self.python.run(code, sorted(shown))
        if answer["error"]:
            self.fail(block.where, f"raised:\n{answer['error']}")
        for line, expected in shown.items():
            where = f"README.md:{block.line + line}"
            got = answer["values"].get(str(line))
            if got is None:
                continue  # not reached: the error above says why
            self.compared.append(where)
            problems = compare(expected, got["text"]) if "text" in got else compare(expected, actual_value=got["value"])
            for problem in problems:
                self.fail(where, problem)

    def log(self, block: Block) -> None:
        words = block.directive.split()
        lines = block.lines
        if "only" in words:
            lines = [lines[int(words[words.index("only") + 1]) - 1]]
        printed = self.log_lines(words[1])
        for offset, line in enumerate(block.lines):
            if line in lines:
                self.compared.append(f"README.md:{block.line + 1 + offset}")
            if line in lines and not any(line_pattern(line).search(p) for p in printed):
                self.fail(f"README.md:{block.line + 1 + offset}", f"no line the `{words[1]}` server printed is like it")

    def stderr(self, block: Block) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        try:
            for offset, command in enumerate(re.findall(r"`([^`]+)`", block.directive)):
                command = command.replace("{busy_port}", str(listener.getsockname()[1])).replace("{free_port}", str(free_port()))
                done = subprocess.run(["bash", "-c", command], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
                where = f"README.md:{block.line + 1 + offset}"
                self.compared.append(where)
                if done.returncode == 0:
                    self.fail(where, f"`{command}` succeeded")
                if not line_pattern(block.lines[offset]).search(done.stderr):
                    self.fail(where, f"`{command}` printed {done.stderr[-500:]!r}")
        finally:
            listener.close()

    def paths(self, block: Block) -> None:
        text = "\n".join(block.lines)
        named = re.findall(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, TOP_DIRS))})/[\w./-]*)", text) + re.findall(r"\bDockerfile(?:\.\w+)?\b", text)
        for path in named:
            if not (ROOT / path.rstrip("/.")).exists() and not (ROOT / f"{path}.py").exists():
                self.fail(block.where, f"{path} does not exist")
        for dotted in re.findall(r"\b((?:engines|gateway|compat)(?:\.\w+)+)\.([A-Z]\w+)\b", text):
            module = ROOT / (dotted[0].replace(".", "/") + ".py")
            if not module.exists() or f"class {dotted[1]}" not in module.read_text():
                self.fail(block.where, f"{'.'.join(dotted)} does not exist")

    def close(self) -> None:
        self.stop()
        if self.python.proc is not None:
            stop_group(self.python.proc, grace=5)


def test_the_readme_runs_as_shown(tmp_path, smollm_dir, minilm_dir):
    """Every bash and Python block, in order, against the servers the README starts; every output
    it shows compared with the real one. All problems are listed at once."""
    walk = Walk(tmp_path)
    checked: list[str] = []
    try:
        walk.serve([])  # the Quick start's `make serve`
        for block in readme_blocks():
            if block.directive.startswith("server "):
                walk.serve([])
            handler = {"bash": walk.bash, "python": walk.python_block, "log": walk.log, "stderr": walk.stderr,
                       "paths": walk.paths}.get(kind(block))
            if handler is not None:
                handler(block)
                checked.append(block.where)
    finally:
        walk.close()
    print(f"blocks run or checked: {', '.join(checked)}\noutputs compared: {', '.join(walk.compared)}")
    assert not walk.problems, "the README and the server disagree:\n" + "\n".join(walk.problems)
    assert len(checked) >= 20 and len(walk.compared) >= 25, (checked, walk.compared)
