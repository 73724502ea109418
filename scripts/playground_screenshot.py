"""Take the README's screenshot of the playground: a real two-turn chat with the packaged default
model (SmolLM2-135M-Instruct), in headless Debian Chromium driven by Playwright.

    .venv/bin/python scripts/playground_screenshot.py                 # starts its own server
    .venv/bin/python scripts/playground_screenshot.py --url http://127.0.0.1:8080

Writes docs/playground.png (and docs/playground-embeddings.png with --embeddings-model-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path

from servers import ROOT, gateway_process

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
TURNS = ["What are three things to see in Paris? Answer as a short bullet list.", "Which one is the oldest?"]


def chat(page, url: str, out: Path) -> None:
    page.goto(f"{url}/playground")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#system-prompt", "You are a helpful travel guide. Use Markdown.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "160")
    page.fill("#seed", "42")
    for i, text in enumerate(TURNS):
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")
        page.locator(".message.assistant").nth(i).locator(".stats, .error").first.wait_for(timeout=180_000)
    page.screenshot(path=str(out))


def embeddings(page, url: str, out: Path) -> None:
    page.goto(f"{url}/playground")
    page.wait_for_selector("#embed-view:not([hidden])")
    page.click("#compare")
    page.wait_for_selector("#compare-result .similarity")
    page.screenshot(path=str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (default: start one on the packaged model)")
    ap.add_argument("--embeddings-model-dir", help="also shoot the compare view, serving this embedding model")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--out-dir", default=str(ROOT / "docs"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out_dir = Path(args.out_dir)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 760}, device_scale_factor=1)
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(gateway_process([]))[0]
            chat(page, url, out_dir / "playground.png")
        if args.embeddings_model_dir:
            with gateway_process(["--model_dir", args.embeddings_model_dir]) as (url, _):
                embeddings(page, url, out_dir / "playground-embeddings.png")
        browser.close()
    print(f"wrote {out_dir}/playground*.png")


if __name__ == "__main__":
    main()
