"""Which face a request belongs to, and how that face writes an error.

Each face declares itself when it is mounted (its paths and its error envelope), so the parts that
answer before any route runs (the middleware's 401/413/503/500, unknown paths) write in the right
envelope without knowing the faces. Inside a face's routes, its own route class maps errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (HTTP status, message, machine-readable code) -> the JSON body of that face's error
ErrorRenderer = Callable[[int, str, str], Any]


def plain_error(status: int, message: str, code: str) -> Any:
    """KServe's (and Triton's) envelope: `{"error": "<message>"}`."""
    return {"error": message}


@dataclass(frozen=True)
class Face:
    name: str  # the `face` label of the request counter
    render: ErrorRenderer = plain_error
    prefixes: tuple[str, ...] = ()  # a path is this face's when it is one of these or below one
    paths: tuple[str, ...] = ()  # or exactly one of these

    def owns(self, path: str) -> bool:
        return path in self.paths or any(path == p or path.startswith(p + "/") for p in self.prefixes)


class Faces:
    """The faces of one app, in the order they were mounted; `fallback` owns every other path."""

    def __init__(self, fallback: Face = Face("other")) -> None:
        self.fallback = fallback
        self._faces: list[Face] = []

    def add(self, face: Face) -> Face:
        self._faces.append(face)
        return face

    def of(self, path: str) -> Face:
        return next((f for f in self._faces if f.owns(path)), self.fallback)
