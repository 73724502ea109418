"""The built-in playground: a chat page (and a sentence-similarity page for embedding models) at
/playground, static HTML, CSS and JavaScript shipped in this package.

It is a client of the public OpenAI face like any other (models, chat/completions with SSE,
embeddings), so it needs no routes of its own beyond the files. The files are read once at
start-up; every response carries a strict Content-Security-Policy (same-origin scripts, styles
and connections only), so even a bug in the page's Markdown rendering could not run injected
script or reach another host.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

PREFIX = "/playground"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new server version must not run a stale page
}


def _load_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files(__package__) / "static"
    files = {}
    for entry in root.iterdir():
        suffix = PurePath(entry.name).suffix
        if entry.is_file() and suffix in _MEDIA_TYPES:
            files[entry.name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    return files


def wants_html(request: Request) -> bool:
    """A browser navigating to the page (probes and API clients do not ask for HTML)."""
    return "text/html" in request.headers.get("accept", "")


def build_playground_router() -> APIRouter:
    files = _load_files()
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        if name not in files:
            return Response(status_code=404, content=b"Not found", media_type="text/plain")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers=_SECURITY_HEADERS)

    @router.get(PREFIX)
    async def page() -> Response:
        return serve("index.html")

    @router.get(PREFIX + "/")
    async def page_with_slash() -> Response:
        return RedirectResponse(PREFIX, status_code=308)

    @router.get(PREFIX + "/{name}")
    async def asset(name: str) -> Response:
        return serve(name)

    return router


def playground_redirect() -> Response:
    return RedirectResponse(PREFIX, status_code=307)
