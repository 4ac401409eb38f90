# Every target creates .venv and installs what it needs first (scripts/setup.sh), so each works on a fresh clone.
.PHONY: setup system-deps demo test lint format bench

setup:
	scripts/setup.sh

system-deps:
	scripts/system-deps.sh

demo: setup
	scripts/demo.sh

test: setup system-deps lint
	.venv/bin/python -m pytest

# ruff, and the import contract of the layers (pyproject.toml [tool.importlinter]; README "Architecture").
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-cache

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: setup
	.venv/bin/python bench/pyramid_bench.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/engine_bench.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/c2f_bench.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/pruning_bench.py --write-results
	HF_HUB_OFFLINE=1 .venv/bin/python bench/world_bench.py --write-results
