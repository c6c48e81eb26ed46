# The two commands of the README: `make serve` and `make test`.
.PHONY: serve test setup setup-test lint typecheck unit unit-all integration persona-demo bench bench-quick bench-tools

serve: setup
	.venv/bin/loragate serve $(ARGS)

test: setup-test lint typecheck
	.venv/bin/pytest $(ARGS)

setup:
	scripts/setup.sh serve

setup-test:
	scripts/setup.sh test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

typecheck:
	.venv/bin/mypy

# The fast layer, in seconds: the tests marked `slow` (a venv build, a subprocess per hub, torch
# or vLLM imports, schemathesis' fuzzing) run in `make test` and `make unit-all`.
unit:
	.venv/bin/pytest tests/unit -m "not slow" $(ARGS)

unit-all:
	.venv/bin/pytest tests/unit $(ARGS)

integration:
	.venv/bin/pytest tests/integration $(ARGS)

# Benchmarks against vLLM's OpenAI server and the tutorial's server (see README, Performance).
# The full run writes benchmarks/results/; it waits for a quiet machine (load < 0.7, no other
# engine, training or test run) so that others' work does not distort the figures.
bench: bench-tools
	.venv/bin/python -m benchmarks --wait-quiet 0.7 $(ARGS)

bench-quick: bench-tools
	.venv/bin/python -m benchmarks --quick $(ARGS)

# The bench extra (matplotlib, aiohttp), peft for the persona adapters, and Debian's wrk.
bench-tools: setup-test
	@command -v wrk >/dev/null || { s=""; [ "$$(id -u)" = 0 ] || s=sudo; \
		$$s apt-get update -qq && $$s apt-get install -y -qq wrk >/dev/null; }

# The longer documented persona run (not in CI; README, "Training a persona"): trains Zhen Huan
# on the embedded model on the CPU (75 steps, about 26 minutes on a busy 2-core machine), then
# serves it and checks that 你是谁？ is answered as 甄嬛 while the base model's answer is not.
# DATA: the tutorial's data set (downloaded once into the cache), or a local copy of it.
DATA ?= https://raw.githubusercontent.com/datawhalechina/self-llm/master/dataset/huanhuan.json
persona-demo: setup-test
	.venv/bin/loragate train --data $(DATA) --name zhenhuan \
		--output artifacts/personas/zhenhuan \
		--system-prompt "现在你要扮演皇帝身边的女人--甄嬛" \
		--description "Zhen Huan (甄嬛), from Empresses in the Palace" \
		--max-rows 100 --epochs 3 --batch-size 4 --gradient-accumulation 1 \
		--learning-rate 1e-3 --no-gradient-checkpointing --save-steps 25 --threads 1 $(ARGS)
	.venv/bin/python scripts/persona_demo.py artifacts/personas
