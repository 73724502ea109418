"""API keys: optional, compared in constant time, never logged.

A key arrives as `Authorization: Bearer <key>` (the OpenAI SDK's way, on every face) or as
`x-api-key: <key>` (KServe REST clients and gRPC metadata)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"ApiKeys({len(self._keys)} key(s))"

    @classmethod
    def from_settings(cls, keys: Iterable[str], key_file: str | None) -> ApiKeys:
        all_keys = [k.strip() for k in keys if k.strip()]
        if key_file:
            all_keys += [line.strip() for line in Path(key_file).read_text().splitlines() if line.strip() and not line.startswith("#")]
        return cls(all_keys)

    def check(self, presented: bytes | None) -> bool:
        """Constant time in the key's content: every configured key is compared, always."""
        if not presented:
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(key, presented)
        return ok

    def allows(self, headers: Mapping[bytes, bytes]) -> bool:
        """HTTP headers (lower-case byte names) or gRPC metadata converted to the same form."""
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return self.check(auth[7:].strip())
        return self.check(headers.get(b"x-api-key"))
