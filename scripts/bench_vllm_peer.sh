#!/usr/bin/env bash
# The gateway over vLLM against plain vLLM (its own OpenAI server) as a peer: one server at a time,
# the same client (scripts/bench.py: vLLM-bench metric definitions), the packaged SmolLM2 in
# float32, 64 prompt / 128 output tokens, 1 and 16 streams. Needs `make vllm-env`.
#   bash scripts/bench_vllm_peer.sh            (prints: label streams tok/s median-TTFT-ms median-TPOT-ms)
set -u
cd "$(dirname "$0")/.."
MODEL=$(.venv/bin/python -c "from engines.loader import resolve_source, ModelSpec; print(resolve_source(ModelSpec()).location)")
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores)"

measure() {  # label base-url
  for _ in $(seq 1 600); do curl -sf "$2/models" >/dev/null && break; sleep 1; done
  .venv/bin/python scripts/bench.py --base-url "$2" --concurrency 1 16 --input-len 64 --output-len 128 --prompts-per-client 2 2>/dev/null \
    | grep '^{' | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print('$1', r['concurrency'], round(r['output_throughput'], 1), round(r['median_ttft_ms'], 1), round(r['median_tpot_ms'], 1))"
}
stop() { kill -- -"$1" 2>/dev/null; sleep 5; kill -9 -- -"$1" 2>/dev/null; sleep 2; }

setsid .venv-vllm/bin/python -m gateway --http_port 18301 --grpc_port 18302 --disable_log_requests --kv_cache_memory_gb 1 >/dev/null 2>&1 &
pid=$!; measure "gateway over vLLM" http://127.0.0.1:18301/openai/v1; stop $pid

VLLM_CPU_KVCACHE_SPACE=1 setsid .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model "$MODEL" --port 18321 \
  --dtype float32 --max-model-len 8192 --max-num-seqs 32 --disable-log-stats --served-model-name model >/dev/null 2>&1 &
pid=$!; measure "plain vLLM" http://127.0.0.1:18321/v1; stop $pid
