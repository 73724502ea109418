"""The playground's Markdown renderer is linear in its input (adversary.md D21: 80 KB of `[a](`
took 19 s). Run under Node with a minimal DOM; the renderer counts the characters it visits, so
the check is on work done, not on time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MARKDOWN = Path(__file__).resolve().parents[1] / "gateway" / "playground" / "static" / "markdown.js"
HARNESS = """
const { renderMarkdown } = await import(process.argv[2]);
class Element { constructor(tag) { this.tag = tag; this.children = []; this.dataset = {}; }
  append(...nodes) { this.children.push(...nodes); }
  get textContent() { return this.children.map((c) => c.textContent).join(""); } }
class Text { constructor(text) { this.text = text; } get textContent() { return this.text; } }
const doc = { createElement: (t) => new Element(t), createTextNode: (t) => new Text(t), createDocumentFragment: () => new Element("#") };
const tags = (node) => node.children ? [node.tag, ...node.children.flatMap(tags)] : [];
const out = [];
const { readFileSync } = await import("node:fs");
for (const text of JSON.parse(readFileSync(process.argv[3], "utf8"))) {
  const work = { steps: 0 };
  const fragment = renderMarkdown(text, doc, work);
  out.push({ steps: work.steps, text: fragment.textContent, tags: [...new Set(tags(fragment))].sort() });
}
console.log(JSON.stringify(out));
"""

HOSTILE = ["[a](", "*a ", "**a ", "~~a ", "`a``", "[[[a](b", "> ", ">", "- ", "  - a\n", "# a   #", "a **b *c ~~d [e](", "_*`~[]()!#"]


def render(tmp_path: Path, texts: list[str]) -> list[dict]:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is needed for the renderer's linearity test")
        pytest.skip("node is not installed")
    harness, inputs = tmp_path / "harness.mjs", tmp_path / "inputs.json"
    harness.write_text(HARNESS)
    inputs.write_text(json.dumps(texts))
    out = subprocess.run([node, str(harness), MARKDOWN.as_uri(), str(inputs)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_hostile_markdown_costs_work_in_proportion_to_its_length(tmp_path):
    small = [unit * 2000 for unit in HOSTILE]
    large = [unit * 8000 for unit in HOSTILE]
    results = render(tmp_path, small + large)
    for unit, a, b, text in zip(HOSTILE, results[: len(HOSTILE)], results[len(HOSTILE):], large):
        assert b["steps"] <= 4.2 * a["steps"], (unit, a["steps"], b["steps"])  # 4x the input, 4x the work
        assert len(text) <= b["steps"] <= 40 * len(text), (unit, b["steps"], len(text))  # every character visited, a bounded number of times
        assert b["text"].replace("\n", "")  # rendered as text, not lost


def test_ordinary_markdown_still_renders(tmp_path):
    (result,) = render(tmp_path, ["# Title #\n\nSome **bold**, *it*, ~~no~~, `code` and [a link](https://x.example/a).\n\n- one\n- two\n\n> q"])
    assert {"h3", "strong", "em", "del", "code", "a", "ul", "li", "blockquote", "p"} <= set(result["tags"])
    assert "Title" in result["text"] and "#" not in result["text"]
