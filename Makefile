PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean browser aarch64

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/latpred demo

test: $(STAMP) browser aarch64
	$(BIN)/python -m pytest -q -ra

# Headless Chromium for the dashboard's browser tests (Debian packages; the tests skip, saying why, without it).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		  echo "chromium could not be installed: the browser tests will skip" )

# An aarch64 Python with onnxruntime under qemu-user for the device-agent test (tests/aarch64; it skips, saying why,
# where this cannot be built).
aarch64: $(STAMP)
	@PYTHON=$(BIN)/python tests/aarch64/build_env.sh >/dev/null || echo "the aarch64 environment could not be built: the aarch64 test will skip"

lint: $(STAMP)
	$(BIN)/ruff check predictor profiler service tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
