"""Triton's own Python client (`tritonclient.http`) against a live server: the KServe v2 calls and
the Triton extensions it makes (model configuration, repository index, statistics), and errors it
can read (`{"error": ...}` on every non-OpenAI path)."""

import numpy as np
import pytest
import tritonclient.http as tritonhttp
from tritonclient.utils import InferenceServerException


@pytest.fixture
def triton(live_tiny):
    client = tritonhttp.InferenceServerClient(live_tiny.base_url.removeprefix("http://"))
    yield client
    client.close()


def infer(client, text: str):
    tensor = tritonhttp.InferInput("input-0", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return client.infer("tiny", [tensor], parameters={"max_tokens": 2})


def test_server_and_model_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("tiny")
    meta = triton.get_server_metadata()
    assert meta["name"] == "hf-gateway" and {"model_configuration", "statistics", "model_repository_extension"} <= set(meta["extensions"])
    assert triton.get_model_metadata("tiny")["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]


def test_model_config_and_repository_index(triton):
    config = triton.get_model_config("tiny")
    assert config["name"] == "tiny" and config["max_batch_size"] == 0
    assert config["input"] == [{"name": "input-0", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert config["output"] and all(o["data_type"].startswith("TYPE_") for o in config["output"])
    assert triton.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]


def test_statistics_count_what_was_inferred(triton):
    before = triton.get_inference_statistics("tiny")["model_stats"][0]
    result = infer(triton, "Hello there")
    assert result.as_numpy("output-0") is not None
    after = triton.get_inference_statistics("tiny")["model_stats"][0]
    assert after["name"] == "tiny"
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["execution_count"] == before["execution_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert triton.get_inference_statistics()["model_stats"][0]["name"] == "tiny"  # all models


def test_errors_reach_the_client_as_messages(triton):
    with pytest.raises(InferenceServerException, match="Model with name nope does not exist"):
        triton.get_model_config("nope")
    with pytest.raises(InferenceServerException, match="Model with name nope does not exist"):
        triton.get_inference_statistics("nope")
    with pytest.raises(InferenceServerException, match="versioning not supported"):
        triton.get_model_metadata("tiny", model_version="2")


# -- the same over gRPC ---------------------------------------------------------------------
# tritonclient's gRPC stubs and ours define the same `inference.*` protobuf symbols, which one
# process's descriptor pool refuses twice: its client runs in a child process of its own, against
# the server in this test's event loop.

GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

c = tg.InferenceServerClient(sys.argv[1])
out = {"config": c.get_model_config("tiny", as_json=True)["config"],
       "index": c.get_model_repository_index(as_json=True)["models"],
       "before": c.get_inference_statistics("tiny", as_json=True)["model_stats"][0],
       "extensions": c.get_server_metadata(as_json=True)["extensions"]}
t = tg.InferInput("input-0", [1], "BYTES")
t.set_data_from_numpy(np.array([b"Hello there"], dtype=np.object_))
c.infer("tiny", [t], parameters={"max_tokens": 2})
out["after"] = c.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
errors = []
for call in (lambda: c.get_model_config("nope"), lambda: c.get_inference_statistics("nope")):
    try:
        call()
    except InferenceServerException as exc:
        errors.append(exc.message())
out["errors"] = errors
print(json.dumps(out))
"""


async def test_grpc_model_config_index_statistics_and_errors(tiny_engine):
    import asyncio
    import json
    import sys

    from compat.kserve.dataplane import DataPlane
    from compat.kserve.grpc.servicer import build_server, mark_serving
    from tests.conftest import free_port

    server = build_server(DataPlane(tiny_engine, "tiny"))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await mark_serving(server, True)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(child.communicate(), 120)
    finally:
        await server.stop(None)
    assert child.returncode == 0, stderr.decode()[-3000:]
    out = json.loads(stdout)
    assert out["config"]["name"] == "tiny" and out["config"]["backend"] == "hf-gateway"
    assert out["config"]["input"] == [{"name": "input-0", "data_type": "TYPE_STRING", "dims": ["-1"]}]  # int64 as JSON strings
    assert out["index"] == [{"name": "tiny", "version": "1", "state": "READY"}]  # empty reason: proto3 leaves it out
    assert {"model_configuration", "statistics"} <= set(out["extensions"])
    before, after = out["before"], out["after"]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 1
    assert int(after["inference_stats"]["success"]["count"]) == int(before["inference_stats"].get("success", {}).get("count", 0)) + 1
    assert len(out["errors"]) == 2 and all("Model with name nope does not exist" in e for e in out["errors"])
