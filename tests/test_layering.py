"""ARCHITECTURE.md's one rule about imports, checked on the source tree."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB_OR_GRPC = {"fastapi", "starlette", "sse_starlette", "uvicorn", "grpc", "httpx", "gateway", "compat"}


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
                if node.module.startswith("gateway.openai") or node.module == "gateway":
                    names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_engines_import_no_web_grpc_or_upper_layers():
    bad = {f: sorted(n & WEB_OR_GRPC) for f, n in imported_modules("engines").items() if n & WEB_OR_GRPC}
    assert not bad, bad


def test_compat_imports_only_engines_below_it():
    bad = {f: "gateway" for f, n in imported_modules("compat").items() if "gateway" in n}
    assert not bad, bad


def test_openai_face_never_imports_compat():
    found = imported_modules("gateway/openai")
    assert found, "the scan found no files"
    bad = {f: "compat" for f, n in found.items() if "compat" in n}
    assert not bad, bad


def test_the_scan_sees_imports():
    # Guard against a scan that silently finds nothing.
    assert "torch" in imported_modules("engines")["engines/sampling.py"]
    assert "fastapi" in imported_modules("gateway")["gateway/server.py"]
