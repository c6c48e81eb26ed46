"""benchmarks/external.py, which scripts/gpu_check.sh uses: its levels against loragate's app
over a fake engine, its side-by-side table, and the `vllm serve` flags it derives from
`loragate engine-args`, read back by vLLM's own argument parser."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.external import compare, main, measure, requests_at, vllm_serve_argv
from benchmarks.workload import Encoder
from loragate.engine.fake import CharTokenizer
from tests.unit.conftest import BASE, LiveFake

# What `loragate engine-args` printed for Llama-3.1-8B-Instruct on an 80 GB GPU (engine_args).
GPU_ENGINE_ARGS: dict[str, Any] = {
    "model": "/models/meta-llama/Llama-3.1-8B-Instruct",
    "served_model_name": ["Llama-3.1-8B-Instruct"],
    "max_model_len": -1,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "data_parallel_size": 1,
    "enable_lora": True,
    "max_loras": 8,
    "max_lora_rank": 16,
    "max_cpu_loras": 16,
    "seed": 0,
    "enforce_eager": False,
    "dtype": "auto",
}


def test_levels_of_the_base_model_and_a_persona(live_fake: LiveFake) -> None:
    tokenizer: Encoder = CharTokenizer()
    workloads = {"base": BASE, "persona": "no-such-persona"}
    results = asyncio.run(measure("loragate", live_fake.origin, {"base": BASE}, tokenizer, (1, 4)))
    assert [(r.workload, r.concurrency, r.requests) for r in results] == [
        ("base", 1, requests_at(1)),
        ("base", 4, requests_at(4)),
    ]
    assert all(r.errors == 0 and r.output_tokens_per_s > 0 for r in results)
    with pytest.raises(RuntimeError, match="warm-up failed"):  # an unknown model fails loudly
        asyncio.run(measure("loragate", live_fake.origin, workloads, tokenizer, (1,)))


def test_the_table_puts_servers_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def level(concurrency: int, tokens_per_s: float) -> dict[str, Any]:
        return {
            "workload": "base",
            "concurrency": concurrency,
            "output_tokens_per_s": tokens_per_s,
            "ttft_p50_ms": 20.0,
            "itl_p50_ms": None,
        }

    files = []
    for name, figures in (("loragate", [90.0, 900.0]), ("vllm", [100.0, 1000.0])):
        levels = [level(1, figures[0]), level(16, figures[1])]
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"name": name, "levels": levels}))
    assert main(["compare", *map(str, files)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| workload | concurrency | loragate tok/s")
    assert table[-1] == "| base | 16 | 900 | 20.0 | - | 1000 | 20.0 | - | 0.90 |"
    assert compare({"a": [level(1, 5.0)], "b": []}).splitlines()[-1].endswith("| - | - | - | - |")


def test_vllm_serve_flags_from_loragates_engine_args() -> None:
    argv = vllm_serve_argv(
        {**GPU_ENGINE_ARGS, "enable_prefix_caching": False, "quantization": None}
    )
    assert argv[0] == GPU_ENGINE_ARGS["model"]
    assert argv[argv.index("--max-model-len") + 1] == "auto"
    assert "--enable-lora" in argv and "--no-enable-prefix-caching" in argv
    assert "--quantization" not in argv  # None: left to vLLM, as loragate leaves it


@pytest.mark.slow  # imports vLLM's argument parser (seconds)
# torch's own deprecation, raised while vLLM's server modules import it.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_vllms_own_parser_reads_the_flags_back_as_the_same_engine_arguments() -> None:
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    engine_args = {**GPU_ENGINE_ARGS, "enable_prefix_caching": False, "kv_cache_dtype": "fp8"}
    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]  # vLLM's, unannotated
    ServeSubcommand().subparser_init(parser.add_subparsers())  # `vllm serve`, as its CLI builds it
    namespace = parser.parse_args(["serve", *vllm_serve_argv(engine_args)])
    namespace.model = namespace.model_tag  # what `vllm serve` does with its positional model
    parsed = AsyncEngineArgs.from_cli_args(namespace)
    assert set(engine_args) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert {key: getattr(parsed, key) for key in engine_args} == engine_args
