# k25mini: two commands on a fresh machine
#   make speedrun   # the main job: trains one nano K2.5 from scratch (K25_SCALE=cpu by default)
#   make test       # ruff + pytest + nbval on every notebook at K25_SCALE=smoke
# Also: make reproduce (every chapter's multi-seed experiment), make speedrun SPEEDRUN_ARGS=--reuse|--fresh
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.k25mini-installed
# torch is installed first, pinned to a CPU-capable build. On Linux PyPI's default wheel is a
# CUDA build; for a slim CPU wheel pass e.g.
#   make test TORCH_PIP_FLAGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC      ?= torch==2.13.0
TORCH_PIP_FLAGS ?=
K25_SCALE ?= cpu
BROWSER_NOTEBOOKS ?=
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb)) $(sort $(wildcard notebooks/solutions/*.ipynb))

.PHONY: setup test lint pytest test-thorough nbval speedrun reproduce report lab notebooks clean test-gpu test-browser
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch, k25mini; print('k25mini ready: torch', torch.__version__)"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard k25mini kernels tests benchmarks tools)

pytest: $(STAMP)
	K25_SCALE=smoke $(BIN)/python -m pytest -q -n 2 --dist loadfile tests/

# property tests with many fresh random examples (CI runs the fast, derandomized "ci" profile; tests/conftest.py)
test-thorough: $(STAMP)
	K25_SCALE=smoke HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q tests/properties/

nbval: $(STAMP)
	# tests/conftest.py is loaded as a plugin so its notebook hooks (stderr not compared) apply here too
	K25_SCALE=smoke MPLBACKEND=Agg PYTHONPATH=tests $(BIN)/python -m pytest -q -p conftest --nbval-lax \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg $(NOTEBOOKS)

test: lint pytest nbval

SPEEDRUN_ARGS ?=
WORKERS ?= 2
speedrun: $(STAMP)
	K25_SCALE=$(K25_SCALE) $(BIN)/python -m k25mini.speedrun $(SPEEDRUN_ARGS)

# every chapter's full multi-seed experiment (times in README), then docs/reproduction.md
reproduce: $(STAMP)
	K25_SCALE=$(K25_SCALE) $(BIN)/python -m k25mini.experiments reproduce --workers $(WORKERS)

report: $(STAMP)
	$(BIN)/python -m k25mini.report

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

notebooks: $(STAMP)
	K25_SCALE=cpu $(BIN)/python tools/run_notebooks.py $(NOTEBOOKS)

# one CUDA GPU, <= 10 min: Triton MoE fwd/bwd, flash/varlen attention, bf16 autocast, NCCL, benchmarks;
# skips (exit 0) without CUDA; writes results/gpu_check.json (docs/interop.md, README "What has run on a GPU")
test-gpu: $(STAMP)
	$(BIN)/python tools/gpu_check.py

# every notebook as a student runs it: JupyterLab in headless Chromium, Restart Kernel and Run All at
# K25_SCALE=smoke; screenshots in build/browser/. Needs `pip install -e ".[browser]"` (playwright) and a
# system Chromium (`apt-get install chromium`); skips (exit 0) without them. Not part of `make test`.
test-browser: $(STAMP)
	$(BIN)/python tools/test_browser.py $(BROWSER_NOTEBOOKS)

clean:
	rm -rf $(VENV) data/cache .pytest_cache .ruff_cache
