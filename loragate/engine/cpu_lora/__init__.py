"""vLLM's CPU LoRA ops, patched: persona isolation and speed (vLLM general plugins).

This package goes when vLLM ships the upstream fix (vllm-project/vllm pull request 48421) and
fast CPU LoRA ops: `isolation.register` already leaves a vLLM whose ops do not leak alone.
`LORAGATE_CPU_LORA_PATCH=0` (`loragate serve --no-cpu-lora-patch`) turns it off.
"""

PATCH_ENV = "LORAGATE_CPU_LORA_PATCH"
