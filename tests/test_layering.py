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


def full_imports(package: str) -> dict[str, set[str]]:
    """Each file's imported modules by their full dotted names (functions' lazy imports too)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


BACKENDS = {"engines/hf": "engines.hf", "engines/vllm": "engines.vllm", "engines/openvino": "engines.openvino"}


def test_no_backend_imports_another_backend():
    """Backends only schedule; what they share lives in the engines layer's seam (frontend,
    backend base, choice, detokenizer, ...), never in another backend."""
    bad = {}
    for folder, own in BACKENDS.items():
        for f, names in full_imports(folder).items():
            foreign = sorted(n for n in names for other in BACKENDS.values() if other != own and (n == other or n.startswith(other + ".")))
            if foreign:
                bad[f] = foreign
    assert not bad, bad
    assert "engines.backend" in full_imports("engines/vllm")["engines/vllm/engine.py"]  # the scan sees them


def test_compat_uses_only_the_engines_public_seam():
    """compat/ never reaches into a backend (engines/hf, engines/vllm): the transformer mode is a
    backend of its own over engines.backend, like the others."""
    bad = {f: sorted(n for n in names if n.startswith(("engines.hf", "engines.vllm")))
           for f, names in full_imports("compat").items()}
    bad = {f: n for f, n in bad.items() if n}
    assert not bad, bad
    assert "engines.backend" in full_imports("compat")["compat/kserve/transformer.py"]
