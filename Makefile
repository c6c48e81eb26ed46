# The two commands of the README: `make serve` and `make test`.
.PHONY: serve test setup setup-test lint typecheck unit integration persona-demo bench bench-quick

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

typecheck:
	.venv/bin/mypy

unit:
	.venv/bin/pytest tests/unit $(ARGS)

integration:
	.venv/bin/pytest tests/integration $(ARGS)
