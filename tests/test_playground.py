"""The playground at /playground, end to end in a real browser: Debian's Chromium, headless, driven
by Playwright, against real uvicorn servers on loopback over real engines (the tiny llama for
chat, the packaged all-MiniLM-L6-v2 for embeddings, and the packaged SmolLM2 started with the
serve command exactly as a newcomer does).

Chromium comes from the system (`make test` installs Debian's `chromium`); Playwright's own
browser download is not used. Without the browser these tests skip locally and fail under CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engines.loader import ModelSpec
from tests.conftest import TEST_ENGINE, ThreadedServer, free_port, make_app, run_async, spawn, stop_group
from tests.helpers import metric_sample

pytestmark = pytest.mark.skipif(TEST_ENGINE != "transformers", reason="the page is the same on every engine; run once")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HF_GATEWAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No first-run UI, and nothing that reaches out to Google's hosts (this machine's network is
# closed, and a test browser has no business calling home). Playwright adds a fresh, empty
# --user-data-dir for every launch.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]
KEY = "playground-test-key"


# -- servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_engine(tiny_dir):
    """The tiny llama with one batch slot and no queue, so a second request is a 429."""
    from engines.hf import load_engine

    engine = load_engine(ModelSpec(model_dir=str(tiny_dir)), served_name="tiny", max_num_seqs=1, max_waiting=0)
    run_async(engine.start())
    yield engine
    run_async(engine.stop())


@pytest.fixture(scope="module")
def chat_server(chat_engine) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(chat_engine, api_key=(KEY,), disable_log_requests=True)) as server:
        yield server


class DeadlineMidStream:
    """The real engine; each generation fails with the deadline error after its third delta, so the
    failure comes after the stream started however fast or slow the machine is."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompt, params, ctx):
        from engines import EngineError, ErrorCode

        stream = self._engine.generate(prompt, params, ctx)
        try:
            count = 0
            async for delta in stream:
                yield delta
                count += 1
                if count == 3:
                    raise EngineError(ErrorCode.DEADLINE_EXCEEDED, "The request deadline was exceeded.")
        finally:
            await stream.aclose()


@pytest.fixture(scope="module")
def deadline_server(chat_engine) -> Iterator[ThreadedServer]:
    """A long answer fails after its stream started, with the deadline's error."""
    with ThreadedServer(make_app(DeadlineMidStream(chat_engine), disable_log_requests=True)) as server:
        yield server


@pytest.fixture(scope="module")
def embed_server(minilm_engine) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(minilm_engine, disable_log_requests=True)) as server:
        yield server


def running(base_url: str) -> float:
    return metric_sample(httpx.get(f"{base_url}/metrics").text, "gateway_requests_running")


def aborted(base_url: str) -> float:
    return metric_sample(httpx.get(f"{base_url}/metrics").text, "gateway_requests_aborted_total")


def wait_for(condition, timeout: float = 300.0, what: str = "condition") -> None:
    """Wait for a condition; the timeout only guards against a hang (a busy machine is slow)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


class Page:
    """One fresh browser context (empty localStorage) and page, with what it did recorded: the
    requests it made, the chat request bodies it sent, and any uncaught script error."""

    def __init__(self, browser, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1200, "height": 760})
        # Playwright's 30 s default is a speed assumption (a loaded machine missed it waiting for a
        # first token); every wait here is a hang guard only.
        self.context.set_default_timeout(600_000)
        if key is not None:
            self.context.add_init_script(f"localStorage.setItem('hf-gateway.playground.apiKey', {json.dumps(key)})")
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.chat_bodies: list[dict] = []
        self.script_errors: list[str] = []
        self.page.on("request", self._on_request)
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def _on_request(self, request) -> None:
        self.requests.append(request.url)
        if request.url.endswith("/chat/completions"):
            self.chat_bodies.append(json.loads(request.post_data))

    def open(self, path: str = "/playground") -> Page:
        self.page.goto(self.base_url + path)
        return self

    def wait_for_models(self) -> Page:
        self.page.wait_for_selector("#model option", state="attached")
        return self

    def set(self, **fields: str) -> None:
        for element_id, value in fields.items():
            self.page.fill(f"#{element_id.replace('_', '-')}", value)

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def answers(self):
        return self.page.locator(".message.assistant")

    def wait_for_text(self, index: int):
        """Until answer `index` shows some text; an error shown instead fails at once (it would
        never get text)."""
        answer = self.answers().nth(index)
        answer.locator(".content, .error").filter(has_text=re.compile(r"\S")).first.wait_for()
        assert answer.locator(".error").count() == 0, answer.locator(".error").inner_text()
        return answer

    def wait_for_answer(self, index: int, timeout: float = 600_000):  # ms; a hang guard
        answer = self.answers().nth(index)
        answer.locator(".stats, .error").first.wait_for(timeout=timeout)
        self.page.wait_for_selector("#send:not([hidden])")
        return answer

    def close(self) -> None:
        self.context.close()
        assert not self.script_errors, self.script_errors
        origin = self.base_url + "/"
        outside = [url for url in self.requests if not url.startswith(origin)]
        assert not outside, f"the page reached outside its server: {outside}"


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def opener(base_url: str, key: str | None = None, path: str = "/playground") -> Page:
        page = Page(browser, base_url, key)
        pages.append(page)
        return page.open(path)

    yield opener
    for page in pages:
        page.close()


# -- serving the page -------------------------------------------------------------------------------


def test_page_files_root_redirect_and_switch(tiny_engine):
    """Served from the package with a strict CSP; a browser at / lands on it while KServe's JSON
    liveness answer stays for everything else; the page needs no key, the API does."""
    app = make_app(tiny_engine, api_key=(KEY,), disable_log_requests=True)

    async def check():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            page = await http.get("/playground")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
            assert '<script type="module" src="/playground/app.js">' in page.text
            for name, media in [("app.js", "text/javascript"), ("markdown.js", "text/javascript"), ("sse.js", "text/javascript"),
                                ("playground.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
                asset = await http.get(f"/playground/{name}")
                assert asset.status_code == 200 and asset.headers["content-type"].startswith(media), name
            assert (await http.get("/playground/nope.js")).status_code == 404
            assert (await http.get("/playground/")).headers["location"] == "/playground"

            browser_root = await http.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
            assert browser_root.status_code == 307 and browser_root.headers["location"] == "/playground"
            for accept in (None, "*/*", "application/json"):
                probe = await http.get("/", headers={"accept": accept} if accept else {})
                assert probe.status_code == 200 and probe.json() == {"status": "alive"}, accept
            assert (await http.get("/openai/v1/models")).status_code == 401  # the API still wants the key

        strict = make_app(tiny_engine, api_key=(KEY,), auth_health_and_metrics=True, disable_log_requests=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=strict), base_url="http://t") as http:
            assert (await http.get("/playground")).status_code == 200  # a page load cannot carry a key
            assert (await http.get("/playground/app.js")).status_code == 200
            assert (await http.get("/metrics")).status_code == 401

        off = make_app(tiny_engine, disable_playground=True, disable_log_requests=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://t") as http:
            assert (await http.get("/playground")).status_code == 404
            root = await http.get("/", headers={"accept": "text/html"})
            assert root.status_code == 200 and root.json() == {"status": "alive"}

    run_async(check())


# -- chat -------------------------------------------------------------------------------------------


def test_api_key_is_asked_for_and_kept(open_page, chat_server):
    page = open_page(chat_server.base_url)
    status = page.page.locator("#server-status")
    status.filter(has_text="needs an API key").wait_for()
    page.page.fill("#api-key", KEY)
    page.page.press("#api-key", "Enter")
    page.wait_for_models()
    assert page.page.locator("#model option").all_inner_texts() == ["tiny"]
    page.page.reload()
    page.wait_for_models()  # the key came back from localStorage
    assert page.page.input_value("#api-key") == KEY
    assert page.page.evaluate("localStorage.getItem('hf-gateway.playground.apiKey')") == KEY


OBSERVE_STREAM = """() => {
  // Record the answer's text length at every DOM change: a streamed answer grows in many steps.
  window.__lengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.message.assistant .content');
    const last = answers[answers.length - 1];
    if (last) window.__lengths.push(last.textContent.length);
  }).observe(document.getElementById('messages'), { childList: true, subtree: true, characterData: true });
}"""


def replay(base_url: str, body: dict) -> dict:
    """The page's own request, sent again without streaming: what the server says it answered."""
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    response = httpx.post(f"{base_url}/openai/v1/chat/completions", json=plain, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_streams_and_keeps_the_conversation(open_page, chat_server):
    page = open_page(chat_server.base_url, key=KEY).wait_for_models()
    page.set(system_prompt="You are terse.", temperature="0.8", top_p="0.9", max_tokens="48", seed="7")
    page.page.evaluate(OBSERVE_STREAM)
    page.send("Hello there")
    first = page.wait_for_answer(0)

    # Streamed: the answer grew in more than one visible step before it was complete.
    lengths = [n for n in page.page.evaluate("window.__lengths") if n > 0]
    assert len(set(lengths)) > 1, lengths

    body = page.chat_bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"], body["model"]) == (0.8, 0.9, 48, 7, "tiny")
    assert body["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]

    # The line under the answer carries the server's own usage and finish reason for this request.
    served = replay(chat_server.base_url, body)
    usage, finish = served["usage"], served["choices"][0]["finish_reason"]
    stats = first.locator(".stats")
    assert stats.locator(".usage").inner_text() == f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
    assert stats.locator(".finish").inner_text() == f"finish: {finish}"
    assert re.fullmatch(r"TTFT \d+ ms", stats.locator(".ttft").inner_text())
    assert re.fullmatch(r"\d+\.\d tok/s", stats.locator(".tps").inner_text())

    # Second turn: the whole conversation goes back, with the first answer exactly as streamed.
    page.send("And again")
    page.wait_for_answer(1)
    turn2 = page.chat_bodies[1]["messages"]
    assert [m["role"] for m in turn2] == ["system", "user", "assistant", "user"]
    assert turn2[2]["content"] == served["choices"][0]["message"]["content"]
    assert turn2[3] == {"role": "user", "content": "And again"}

    # New chat forgets it.
    page.page.click("#new-chat")
    assert page.answers().count() == 0
    page.send("Fresh start")
    page.wait_for_answer(0)
    assert [m["role"] for m in page.chat_bodies[2]["messages"]] == ["system", "user"]


def test_stop_aborts_the_generation_on_the_server(open_page, chat_server, chat_engine):
    base = chat_server.base_url
    page = open_page(base, key=KEY).wait_for_models()
    page.set(max_tokens="4000", temperature="1")
    aborted_before = aborted(base)
    page.send("Write a very long story")
    page.wait_for_text(0)
    wait_for(lambda: running(base) == 1, what="the generation to be running")
    page.page.click("#stop")
    wait_for(lambda: running(base) == 0, what="the server to stop generating")
    assert aborted(base) == aborted_before + 1
    answer = page.wait_for_answer(0)
    assert answer.locator(".finish").inner_text() == "finish: stopped"
    assert page.page.is_visible("#send") and not page.page.is_visible("#stop")
    wait_for(lambda: chat_engine.stats().in_flight == 0, what="the engine's slot to be free")

    # "New chat" in the middle of an answer stops it too, and the old turn does not leak into the new chat.
    # (From a new chat: with the stopped answer in the history, however long it grew before the stop,
    # 4000 more tokens could exceed the tiny model's 4096-token context, a 400.)
    page.page.click("#new-chat")
    page.send("Another long one")
    page.wait_for_text(0)
    page.page.click("#new-chat")
    wait_for(lambda: running(base) == 0, what="the server to stop generating")
    wait_for(lambda: chat_engine.stats().in_flight == 0, what="the engine's slot to be free")
    assert page.answers().count() == 0
    page.set(max_tokens="4")
    page.send("Short")
    page.wait_for_answer(0)
    assert page.chat_bodies[-1]["messages"] == [{"role": "user", "content": "Short"}]


def test_errors_are_shown(open_page, chat_server, deadline_server):
    base = chat_server.base_url
    page = open_page(base, key=KEY).wait_for_models()

    # 400: the server judges the controls' values.
    page.set(temperature="5")
    page.send("Too hot")
    error = page.wait_for_answer(0).locator(".error")
    assert error.get_attribute("data-status") == "400"
    assert "temperature" in error.inner_text()
    assert re.fullmatch(r"request id [0-9a-f]{32}", error.locator(".request-id").inner_text())  # to find it in the access log
    assert page.page.input_value("#prompt") == "Too hot"  # given back to edit

    # 429: the only batch slot is taken by another client.
    page.set(temperature="1", max_tokens="4000")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as other:
        hold = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000, "stream": True}
        with other.stream("POST", "/openai/v1/chat/completions", json=hold) as held:
            assert held.status_code == 200, held.read()
            lines = held.iter_lines()  # kept: a dropped iterator closes the stream, which aborts it
            next(lines)
            wait_for(lambda: running(base) == 1, what="the other client's generation")
            page.send("Me too")
            error = page.wait_for_answer(1).locator(".error")
            assert error.get_attribute("data-status") == "429"
            assert "rate_limit_exceeded" in error.inner_text() and "Retry after 1 s" in error.inner_text()
    wait_for(lambda: running(base) == 0, what="the other client's generation to be aborted")

    # In-band: the answer fails after it started streaming; the partial answer stays.
    late = open_page(deadline_server.base_url).wait_for_models()
    late.set(max_tokens="4000", temperature="1")
    late.send("A long one")
    answer = late.wait_for_answer(0)
    error = answer.locator(".error")
    assert error.get_attribute("data-status") == "stream"
    assert "deadline" in error.inner_text()
    assert answer.locator(".content").inner_text().strip()  # what had arrived is kept
    wait_for(lambda: running(deadline_server.base_url) == 0, what="the engine to be idle")


def test_markdown_is_rendered_without_html_injection(open_page, chat_server):
    page = open_page(chat_server.base_url)
    result = page.page.evaluate("""async () => {
      const { renderMarkdown } = await import('/playground/markdown.js');
      const text = [
        '# Title', '',
        'Some **bold**, *italic*, `code <b>x</b>` and [a link](https://example.com/a).',
        '<img src=x onerror="window.__pwned = 1"> <script>window.__pwned = 2</script>',
        '[click](javascript:window.__pwned=3) [mail](mailto:a@b.c)', '',
        '- one', '- two **2**', '', '1. first', '2. second', '',
        '> quoted', '', '```html', '<iframe src="https://example.com"></iframe>', '```',
      ].join('\\n');
      const box = document.createElement('div');
      box.append(renderMarkdown(text));
      document.body.append(box);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const all = [...box.querySelectorAll('*')];
      return {
        tags: [...new Set(all.map((e) => e.tagName.toLowerCase()))].sort(),
        handlers: all.flatMap((e) => [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith('on')),
        hrefs: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
        pwned: window.__pwned ?? null,
        text: box.textContent,
        code: box.querySelector('pre code').textContent,
      };
    }""")
    assert result["pwned"] is None and result["handlers"] == []
    assert not {"img", "script", "iframe", "b"} & set(result["tags"])
    assert {"h3", "strong", "em", "code", "a", "ul", "ol", "li", "blockquote", "pre"} <= set(result["tags"])
    assert result["hrefs"] == ["https://example.com/a", "mailto:a@b.c"]  # the javascript: link stays text
    assert '<img src=x onerror="window.__pwned = 1">' in result["text"] and "[click](javascript:" in result["text"]
    assert result["code"] == '<iframe src="https://example.com"></iframe>'


# -- embeddings -------------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_embedding_model_gets_the_compare_view(open_page, embed_server):
    base = embed_server.base_url
    page = open_page(base).wait_for_models()
    assert page.page.is_visible("#embed-view") and not page.page.is_visible("#chat-view")

    def compare(a: str, b: str) -> float:
        page.page.fill("#text-a", a)
        page.page.fill("#text-b", b)
        page.page.click("#compare")
        page.page.locator("#compare-result .similarity").filter(has_text=re.compile(r"\d")).wait_for()
        shown = float(page.page.get_attribute("#compare-result", "data-similarity"))
        page.page.evaluate("document.getElementById('compare-result').replaceChildren()")
        data = httpx.post(f"{base}/openai/v1/embeddings", json={"model": "minilm", "input": [a, b]}).json()["data"]
        assert shown == pytest.approx(cosine(data[0]["embedding"], data[1]["embedding"]), abs=1e-6)
        return shown

    related = compare("A man is playing a guitar.", "Someone plays an instrument.")
    unrelated = compare("A man is playing a guitar.", "The stock market fell sharply today.")
    assert related > unrelated + 0.2  # a real sentence model: meaning, not noise


# -- the serve command, on the packaged default model ----------------------------------------------


def test_serve_command_prints_the_url_and_the_page_chats(open_page, smollm_dir):
    """`hf-gateway` with no model flags, as the README starts it: follow the printed URL and ask."""
    port = free_port()
    proc = spawn(
        [sys.executable, "-m", "gateway", "--http_port", str(port), "--grpc_port", str(free_port()), "--disable_log_requests"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    found: list[str] = []
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            match = re.search(r"Playground \(chat in a browser\): (http://\S+)", line)
            if match:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: bool(found) or proc.poll() is not None, timeout=900, what="the playground URL")
        assert found, "".join(output)
        url = found[0]
        assert url == f"http://127.0.0.1:{port}/playground"
        wait_for(lambda: _ready(url), what="the server to answer")
        page = open_page(url.removesuffix("/playground"), path="/").wait_for_models()  # / redirects a browser
        assert page.page.url == url
        page.set(temperature="0", max_tokens="24")
        page.send("What is the capital of France?")
        answer = page.wait_for_answer(0)
        assert "Paris" in answer.locator(".content").inner_text()
        assert answer.locator(".finish").inner_text() in ("finish: stop", "finish: length")
    finally:
        stop_group(proc)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False
